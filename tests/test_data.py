"""The tiny corpus end to end: determinism, no leakage across splits, errors that name the source.

The hub path is tested against the local hub mirror in test_hub_mirror.py."""
import hashlib
import json
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from polyalign.core import SPLITS, load_config, read_jsonl
from polyalign.data import (answer_length, bucket_key, dedup_records, hash_split, hash_unit, length_bin, length_tokens,
                            near_duplicates, read_split, render_messages)
from polyalign.sources import SOURCES, DataSourceError, build_corpus


def _cfg(run_dir, *sets):
    return load_config("tiny", [f"run_dir={run_dir}", *sets])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    res = build_corpus(_cfg(d))
    return d, res


def _splits(d):
    return {s: read_split(Path(d) / "data" / f"{s}.parquet") for s in SPLITS}


SPLIT_KEYS = ["abc", "Once upon a time", "", "squad::Normans::The Normans were...", "北京大学::第一段", "🙂 tree 17",
              *(f"story-{i}" for i in range(300))]


def _md5_unit(key, seed):
    return int(hashlib.md5(f"{seed}:{key}".encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def test_split_hash_recomputed_from_the_documented_rule():
    "u = int(md5('seed:key')[:8], 16) / 0xFFFFFFFF, then the first label whose cumulative weight reaches u."
    for key in SPLIT_KEYS:
        for seed in (42, 7):
            u = _md5_unit(key, seed)
            assert hash_unit(key, seed) == u, (key, seed)
            want3 = "train" if u <= 0.9 else "val" if u <= 0.95 else "test"
            assert hash_split(key, seed, SPLITS, [0.9, 0.05, 0.05]) == want3, (key, seed, u)
            assert hash_split(key, seed, ("train", "val"), [0.9, 0.1]) == ("train" if u <= 0.9 else "val"), (key, u)
            assert hash_split(key, seed, ("test", "val", "train"), [0.05, 0.05, 0.9]) == (
                "test" if u <= 0.05 else "val" if u <= 0.1 else "train"), (key, u)


def test_split_hash_proportions_stability_and_seed():
    "Over 20,000 keys the 90/5/5 split lands within 1 point of its weights, repeats exactly, and depends on the seed."
    keys = [f"group-{i}" for i in range(20_000)]
    labels = [hash_split(k, 42, SPLITS, [0.9, 0.05, 0.05]) for k in keys]
    share = {s: labels.count(s) / len(keys) for s in SPLITS}
    assert share["train"] == pytest.approx(0.9, abs=0.01)
    assert share["val"] == pytest.approx(0.05, abs=0.006) and share["test"] == pytest.approx(0.05, abs=0.006)
    assert [hash_split(k, 42, SPLITS, [0.9, 0.05, 0.05]) for k in keys[:500]] == labels[:500]
    other = [hash_split(k, 43, SPLITS, [0.9, 0.05, 0.05]) for k in keys[:2000]]
    assert 0.1 < sum(a != b for a, b in zip(labels, other)) / 2000 < 0.3   # independent draws differ ~18.5% of the time


def _key(r):
    "An independent canonical form: NFKC, casefold, every whitespace run one space; history turns as (role, text)."
    norm = lambda t: " ".join(unicodedata.normalize("NFKC", t).casefold().split())
    turns = tuple((t["role"], norm(t["text"])) for t in r["dialogue_history"])
    return r["language"], norm(r["question"]), norm(r["context"]), turns, norm(r["human_answer"])


def _rec(rid, split, q, a, group=None, context="", history=(), language="en", dataset="squad_v2"):
    return {"id": rid, "dataset": dataset, "split": split, "language": language, "question": q, "context": context,
            "dialogue_history": [{"role": r, "text": t} for r, t in history], "human_answer": a,
            "group_id": group or f"{dataset}:{rid}"}


LEAK_RECORDS = [
    _rec("t1", "test", "What is the capital of France?", "Paris is the capital.", context="France is in Europe."),
    _rec("c1", "train", "WHAT IS THE CAPITAL OF FRANCE?", "PARIS is the Capital.", context="FRANCE is in Europe."),
    _rec("w1", "val", "  What  is the\tcapital of\u00a0France? ", "Paris is the capital.\u3000",
         context="France   is in Europe."),
    _rec("p1", "train", "What is the capital of France\uff1f", "Paris is the capital\uff0e",
         dataset="natural_questions", context="\uff26rance is in Europe."),
    _rec("x1", "train", "What is the capital of France?", "Paris is the capital.", context="A different passage."),
    _rec("t2", "test", "中国的首都是哪里？", "北京，中国的首都。", language="zh", dataset="drcd"),
    _rec("p2", "train", "中国的首都是哪里?", "北京,中国的首都。", language="zh", dataset="dureader"),
    _rec("t3", "test", "And after that?", "We went home.", group="coqa:story-1", dataset="coqa",
         history=[("user", "Where did you go?"), ("assistant", "To the Park.")]),
    _rec("c3", "train", "and after that?", "We went HOME.", group="coqa:story-9", dataset="coqa",
         history=[("user", "where did you go?"), ("assistant", "to the park.")]),
    _rec("h3", "train", "And after that?", "We went home.", group="coqa:story-8", dataset="coqa",
         history=[("user", "Where did you go?"), ("assistant", "To the zoo.")]),
    _rec("g1", "test", "Who wrote it?", "Hugo.", group="coqa:story-2", dataset="coqa"),
    _rec("g2", "train", "When?", "In 1862.", group="coqa:story-2", dataset="coqa"),
    _rec("g3", "val", "Where?", "In Paris.", group="coqa:story-3", dataset="coqa"),
    _rec("g4", "train", "Why?", "Exile.", group="coqa:story-3", dataset="coqa"),
    _rec("u1", "train", "Name a river.", "The Seine.", dataset="dolly"),
    _rec("t4", "test", "Which street?", "The Hauptstraße.", dataset="dolly"),
    _rec("c4", "val", "WHICH STREET?", "THE HAUPTSTRASSE.", dataset="dolly"),    # casefold: ß == ss
]


def test_dedup_removes_case_space_and_width_variants_across_splits():
    "Planted case / whitespace / full-width copies and split groups are removed; an independent key finds no leak."
    kept, removed = dedup_records(LEAK_RECORDS, ["squad_v2", "natural_questions", "drcd", "dureader", "coqa", "dolly"])
    assert [r["id"] for r in kept] == ["t1", "x1", "t2", "t3", "h3", "g1", "g3", "u1", "t4"]
    why = {r["id"]: (r["reason"], r["duplicate_of"]) for r in removed}
    assert why == {"c1": ("leakage_exact", "t1"), "w1": ("leakage_exact", "t1"), "p1": ("leakage_exact", "t1"),
                   "p2": ("leakage_exact", "t2"), "c3": ("leakage_exact", "t3"), "c4": ("leakage_exact", "t4"),
                   "g2": ("group_split_conflict", None), "g4": ("group_split_conflict", None)}
    for a in LEAK_RECORDS:                          # every removed record has an independent-key twin or group mate
        if a["id"] in why:                          # kept in another split
            assert any(b["split"] != a["split"] and (_key(a) == _key(b) or a["group_id"] == b["group_id"])
                       for b in kept), a["id"]
    split_of_key, split_of_group = {}, {}
    for r in kept:
        assert split_of_key.setdefault(_key(r), r["split"]) == r["split"], r["id"]
        assert split_of_group.setdefault(r["group_id"], r["split"]) == r["split"], r["id"]


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
    "No id, independent canonical key or group is shared by two splits of the built tiny corpus."
    d, _ = tiny
    sp = _splits(d)
    ids = {s: set(df["id"]) for s, df in sp.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    keys = {s: {_key(r) for r in df.to_dict("records")} for s, df in sp.items()}
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


def test_near_duplicates_of_a_huge_identical_group_are_linear():
    "4,000 identical formulaic turns plus a few near copies: one line per record and higher split, all correct."
    splits = ("test", "val", "train")
    rec = lambda i, s, a: {"id": f"r{i}", "split": s, "dataset": "dailydialog",
                           "question": "How are you doing today?", "human_answer": a}
    rows = [rec(i, splits[i % 3], "Fine, thank you. And you?") for i in range(4000)]
    rows += [rec(4000, "train", "Fine, thank you. And you? Great."),
             rec(4001, "val", "Something else entirely, about cooking.")]
    pairs = near_duplicates(rows, threshold=0.5)
    by_other = {}
    for p in pairs: by_other.setdefault(p["other_id"], []).append((p["split"], p["id"], p["jaccard"]))
    test_ids = {f"r{i}" for i in range(0, 4000, 3)}
    assert test_ids.isdisjoint(by_other)                                  # test rows have no higher split
    for i in range(1, 4000, 3): assert by_other[f"r{i}"] == [("test", "r0", 1.0)]
    for i in range(2, 4000, 3): assert sorted(by_other[f"r{i}"]) == [("test", "r0", 1.0), ("val", "r1", 1.0)]
    near = sorted(by_other["r4000"])                                      # a near copy is matched in both higher splits
    assert [(s, i) for s, i, _ in near] == [("test", "r0"), ("val", "r1")] and all(0.5 <= j < 1 for *_, j in near)
    assert "r4001" not in by_other
    assert len(pairs) == 1333 + 2 * 1333 + 2                              # linear, not 1,333 x 2,667 pairs
