"""The tiny corpus end to end: determinism, no leakage across splits, errors that name the source, the hub path."""
import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from polyalign.core import SPLITS, load_config, read_jsonl
from polyalign.data import (answer_length, bucket_key, canonical_key, hash_split, hash_unit, length_bin, length_tokens,
                            read_split, render_messages)
from polyalign.sources import SOURCES, DataSourceError, build_corpus, tiny_raw_files


def _cfg(run_dir, *sets):
    return load_config("tiny", [f"run_dir={run_dir}", *sets])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    res = build_corpus(_cfg(d))
    return d, res


def _splits(d):
    return {s: read_split(Path(d) / "data" / f"{s}.parquet") for s in SPLITS}


def test_split_hash_vectors():
    assert round(hash_unit("abc", 42), 6) == 0.454618
    assert round(hash_unit("Once upon a time", 42), 6) == 0.663819
    assert hash_split("abc", 42, SPLITS, [0.9, 0.05, 0.05]) == "train"


@pytest.mark.parametrize("text, lang, n, bin_", [
    ("Hello, world! It's 2024.", "en", 7, "short"),
    ("word " * 41, "en", 41, "medium"),
    ("我很好，谢谢。你呢？", "zh", 10, "short"),
    ("中" * 121, "zh", 121, "long"),
    ("我用Python 3.12写了一个app，" * 24, "zh", 240, "long"),   # 我 用 Python 3.12 写 了 一 个 app ， = 10 a repeat
    ("mixed 中文 text " * 61, "en", 244, "xlong"),
])
def test_length_bins(text, lang, n, bin_):
    assert answer_length(text, lang) == (n, bin_)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(0, 500))
def test_tokenizer_loses_no_character(text, n):
    import re
    assert "".join(length_tokens(text)) == re.sub(r"\s", "", text)
    assert length_bin(n) in ("short", "medium", "long", "xlong")


def test_bucket_key_fields():
    r = {"language": "en", "track": "single", "family": "qa", "length_bin": "long", "style_bucket": "longform_qa"}
    assert bucket_key(r) == "en|single|qa|long"
    assert bucket_key(r, ["language", "style_bucket", "length_bin"]) == "en|longform_qa|long"


def test_schema_and_buckets(tiny):
    d, res = tiny
    sp = _splits(d)
    for name, df in sp.items():
        assert (df["split"] == name).all() and df["id"].is_unique
        assert (df["bucket_id"] == df.apply(bucket_key, axis=1)).all()
        assert (df["human_answer"].str.len() > 0).all()
    assert res.rows_out == sum(len(df) for df in sp.values())
    test = sp["test"].groupby("bucket_id").size()
    assert test[test < 20].index.tolist() == ["en|single|qa|xlong"]        # the one bucket kept small on purpose
    assert set(sp["train"]["dataset"]) == set(SOURCES)


def test_no_leakage(tiny):
    d, _ = tiny
    sp = _splits(d)
    ids = {s: set(df["id"]) for s, df in sp.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    keys = {s: {canonical_key(r) for r in df.to_dict("records")} for s, df in sp.items()}
    assert not (keys["train"] & (keys["val"] | keys["test"])) and not (keys["val"] & keys["test"])
    groups = {s: set(df["group_id"]) for s, df in sp.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    removed = read_jsonl(Path(d) / "data" / "removed.jsonl")
    assert any(r["reason"] == "leakage_exact" for r in removed)          # the fixtures plant copies of test rows in train


def test_rejected_rows_are_reported(tiny):
    d, res = tiny
    rej = read_jsonl(Path(d) / "data" / "rejected.jsonl")
    assert len(rej) == res.rows_rejected and {r["dataset"] for r in rej} == set(SOURCES)
    assert all(r["reason"] and r["field"] and r["file"] and isinstance(r["row_index"], int) for r in rej)
    reasons = {r["reason"].split(":")[0] for r in rej}
    assert {"missing field", "empty text", "bad encoding", "invalid JSON"} <= reasons
    rep = json.loads((Path(d) / "data" / "report.json").read_text())
    assert sum(sum(v.values()) for v in rep["rejected"].values()) == len(rej)
    assert rep["near_duplicate_pairs"]                                      # NQ near copies are found across splits
    assert res.extra["data"]["tokenizers"] == {"en": "pa-mixed-v1", "zh": "pa-mixed-v1"}


def test_tables(tiny):
    d, _ = tiny
    t = pd.read_csv(Path(d) / "tables" / "table1_corpus.csv")
    assert len(t) == 16 and list(t.columns[:5]) == ["dataset", "language", "situation", "track", "family"]
    for ext in ("md", "tex"): assert (Path(d) / "tables" / f"table1_corpus.{ext}").stat().st_size > 0
    assert "\\_" in (Path(d) / "tables" / "table1_buckets.tex").read_text()


def test_build_is_byte_identical(tiny, tmp_path):
    d, _ = tiny
    build_corpus(_cfg(tmp_path))
    for rel in [f"data/{s}.parquet" for s in SPLITS] + ["data/rejected.jsonl", "data/removed.jsonl", "data/report.json",
                                                        "tables/table1_corpus.csv", "tables/table1_buckets.tex"]:
        assert (Path(d) / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_near_dup_drop(tmp_path):
    build_corpus(_cfg(tmp_path, "data.near_dup_drop=true"))
    removed = read_jsonl(tmp_path / "data" / "removed.jsonl")
    assert any(r["reason"] == "leakage_near_duplicate" for r in removed)


def test_renderer_on_corpus(tiny):
    d, _ = tiny
    df = _splits(d)["test"]
    multi = df[df["dialogue_history"].map(len) > 0].iloc[0].to_dict()
    msgs = render_messages(multi, load_config("tiny"))
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": msgs[-1]["content"]}
    assert len(msgs) == len(multi["dialogue_history"]) + 2 and "length=" not in msgs[0]["content"]


def test_missing_source_file_names_it(tmp_path):
    cfg = _cfg(tmp_path, "data.source_mode=local", f"data.raw_dir={tmp_path / 'raw'}", "data.sources=dolly")
    with pytest.raises(DataSourceError, match=r"source 'dolly': raw file not found: .*dolly/train.jsonl"):
        build_corpus(cfg)


def _fake_hub(monkeypatch, calls):
    "Serve the tiny fixtures through the hub entry points (datasets.load_dataset, hf_hub_download, DownloadManager)."
    import datasets, huggingface_hub
    by_id = {s.hub_id.rstrip("/"): s for s in SOURCES.values()}
    files = {n: tiny_raw_files(n) for n in SOURCES}

    def load_dataset(hub_id, config=None, revision=None, split=None):
        calls.append(("load_dataset", hub_id, config, revision, split))
        if hub_id not in by_id: raise FileNotFoundError(f"Dataset '{hub_id}' doesn't exist on the Hub")
        name = by_id[hub_id].name
        rel = f"{config}.jsonl" if name == "coig_cqia" else f"{split}.jsonl"
        out = []
        for line in files[name][rel].split(b"\n"):
            try:
                out.append(json.loads(line.decode()))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
        return out

    def hf_hub_download(repo_id, filename, repo_type=None, revision=None):
        calls.append(("hf_hub_download", repo_id, filename, revision))
        name = by_id[repo_id].name
        rel = filename.replace("dummy/", "").replace("/1.0.0/", "/")
        p = Path(calls[0]) / name / rel
        p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(files[name][rel])
        return str(p)

    class DM:
        def download(self, url):
            calls.append(("download", url))
            if "MultiWOZ_2.2" in url:
                name, rel = "multiwoz", url.split("MultiWOZ_2.2/")[1]
            else:
                name, rel = "eli5_category", url.rsplit("/", 1)[1]
            p = Path(calls[0]) / name / rel
            p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(files[name].get(rel, b"[]"))
            return str(p)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "DownloadManager", DM)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)


def test_hub_path_with_pinned_revisions(tiny, tmp_path, monkeypatch):
    d, _ = tiny
    calls = [str(tmp_path / "cache")]
    _fake_hub(monkeypatch, calls)
    cfg = _cfg(tmp_path / "run", "data.source_mode=hub", "data.revisions.dolly=abc123", "data.revisions.multiwoz=deadbeef",
               "data.revisions.dureader=r1")
    build_corpus(cfg)
    assert ("load_dataset", "databricks/databricks-dolly-15k", None, "abc123", "train") in calls
    assert ("load_dataset", "microsoft/ms_marco", "v1.1", None, "validation") in calls
    assert any(c[0] == "load_dataset" and c[1] == "m-a-p/COIG-CQIA" and c[2] == "zhihu" for c in calls)
    assert ("hf_hub_download", "luozhouyang/dureader", "dummy/robust/1.0.0/dummy_data.zip", "r1") in calls
    assert any(c[0] == "download" and "/deadbeef/data/MultiWOZ_2.2/test/dialogues_002.json" in c[1] for c in calls)
    hub, local = _splits(tmp_path / "run"), _splits(d)
    for s in SPLITS:   # the same records as the local tiny build (hub rows lack the lines that are not JSON)
        assert set(hub[s]["id"]) == set(local[s]["id"])


def test_unknown_dataset_id_names_it(tmp_path, monkeypatch):
    calls = [str(tmp_path / "cache")]
    _fake_hub(monkeypatch, calls)
    cfg = _cfg(tmp_path, "data.source_mode=hub", "data.sources=dolly", "data.hub_ids.dolly=nobody/missing")
    with pytest.raises(DataSourceError, match=r"source 'dolly': cannot fetch .*'nobody/missing'"):
        build_corpus(cfg)


def test_table1_reported_side_by_side(tiny):
    from polyalign.sources import reported_table1, table1
    rep = reported_table1()
    if rep is None: pytest.skip("papers/polyalign/reported/table1_corpus.csv not present")
    d, _ = tiny
    recs = pd.concat(_splits(d).values()).to_dict("records")
    corpus, _ = table1(recs, list(SOURCES), reported=rep)
    row = corpus.set_index("dataset").loc["DuReader"]
    assert (row["paper_train"], row["paper_val"], row["paper_count"]) == (15923, 1956, 17879) and pd.isna(row["paper_test"])
    tot = corpus.set_index("dataset").loc["Total (en)"]
    assert (tot["paper_train"], tot["paper_val"], tot["paper_test"]) == (584422, 55575, 53855)
