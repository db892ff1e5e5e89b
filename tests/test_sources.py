"""The source registry: a new source is one registration (adapter + fixture), the data stage from plain Python, tiny_scale."""
import json
from pathlib import Path

import pandas as pd
import pytest

from polyalign.core import SPLITS, load_config, read_jsonl, read_manifest
from polyalign.data import read_split
from polyalign import sources
from polyalign.sources import (SOURCES, AdaptContext, SourceSpec, build_corpus, data_stage, fixture_dir, get_text,
                               read_dataset_split, register_source)


def adapt_toy_faq(row, ctx: AdaptContext) -> list[dict]:
    "A made-up FAQ source: one example per row, split by question."
    q, a = get_text(row, "question"), get_text(row, "answer")
    return [ctx.make(id=f"toy-faq-{ctx.source_split}-{ctx.index:04d}", question=q, answer=a, group=row["question"])]


def _toy_fixture(root: Path) -> Path:
    "Raw rows in the toy source's own format: one JSON-lines file per split, one malformed row."
    root.mkdir(parents=True)
    for split, n in (("train", 30), ("test", 24)):
        rows = [{"question": f"How do I fix toy widget number {i} in the {split} manual?",
                 "answer": f"Turn widget {i} off and on again, then tighten screw {i % 7} of the {split} kit."}
                for i in range(n)]
        if split == "train": rows.append({"question": "Where is the answer?"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture
def toy_source(tmp_path):
    "A 15th source registered through the registry only; removed again afterwards."
    spec = register_source(SourceSpec(
        name="toy_faq", display="Toy FAQ", language="en", track="single", family="qa", style="qa_search",
        hub_id="nobody/toy-faq", reader=read_dataset_split, adapter=adapt_toy_faq,
        splits=[("train", "hash2"), ("test", "test")], fixture=_toy_fixture(tmp_path / "toy_fixture")))
    yield spec
    SOURCES.pop("toy_faq")


def test_a_fifteenth_source_is_one_registration(toy_source, tmp_path):
    base = load_config("tiny").data.sources
    assert len(SOURCES) == len(base) + 1 and "toy_faq" not in base
    cfg = load_config("tiny", {"run_dir": str(tmp_path / "run"), "data.sources": [*base, "toy_faq"]})
    res = build_corpus(cfg)
    run = tmp_path / "run"
    assert (run / "raw" / "toy_faq" / "train.jsonl").read_bytes() == (fixture_dir(toy_source) / "train.jsonl").read_bytes()
    corpus = pd.concat([read_split(run / "data" / f"{s}.parquet") for s in SPLITS])
    toy = corpus[corpus["dataset"] == "toy_faq"]
    assert len(toy) == 54 and set(toy["split"]) == {"train", "val", "test"} and (toy["bucket_id"] == "en|single|qa|short").all()
    assert set(toy.loc[toy["id"].str.startswith("toy-faq-test-"), "split"]) == {"test"}
    rej = [r for r in read_jsonl(run / "data" / "rejected.jsonl") if r["dataset"] == "toy_faq"]
    assert [(r["row_index"], r["field"], r["reason"]) for r in rej] == [(30, "answer", "missing field")]
    t1 = pd.read_csv(run / "tables" / "table1_corpus.csv").set_index("dataset")
    assert t1.loc["Toy FAQ", "count"] == 54 and t1.loc["Total (en)", "count"] == t1.loc[t1["language"] == "en"].iloc[:-1]["count"].sum()
    rep = json.loads((run / "data" / "report.json").read_text())
    assert rep["raw_rows"]["toy_faq"] == 55 and res.rows_out == len(corpus)
    # the other sources' records are those of a build without the toy source
    plain = tmp_path / "plain"
    build_corpus(load_config("tiny", [f"run_dir={plain}"]))
    before = pd.concat([read_split(plain / "data" / f"{s}.parquet", decode_meta=False) for s in SPLITS])
    after = corpus[corpus["dataset"] != "toy_faq"]
    assert sorted(before["id"]) == sorted(after["id"])


def test_unregistered_source_fails_early(tmp_path):
    cfg = load_config("tiny", {"run_dir": str(tmp_path), "data.sources": ["dolly", "toy_faq"]})
    with pytest.raises(Exception, match="unknown data source 'toy_faq'"):
        build_corpus(cfg)


def test_registration_is_checked():
    with pytest.raises(Exception, match="already registered"):
        register_source(SOURCES["dolly"])
    with pytest.raises(TypeError):
        SourceSpec("x", "X", "en", "single", "qa", "qa_search", "h", read_dataset_split, [("train", "train")], None)
    with pytest.raises(Exception, match="style='chit_chat' not in"):
        SourceSpec(name="x", display="X", language="en", track="single", family="qa", style="chit_chat", hub_id="h",
                   reader=read_dataset_split, splits=[("train", "train")], adapter=None)


def test_every_source_ships_its_fixture():
    for name, spec in SOURCES.items():
        files = sources.tiny_raw_files(name)
        assert files and all(data for data in files.values()), name
        assert fixture_dir(spec).parent.name == "fixtures" and fixture_dir(spec).name == name


def test_data_stage_from_plain_python(tmp_path):
    cfg = load_config("tiny", [f"run_dir={tmp_path}"])
    res = data_stage(cfg)
    rec = read_manifest(tmp_path)["stages"]["data"]
    assert res.records == {"data": rec} and rec["status"] == "done" and rec["sections"] == ["profile", "data"]
    assert rec["rows"] == {"in": res.rows_in, "out": res.rows_out, "rejected": res.rows_rejected}
    assert {Path(p) for p in res.outputs} == {tmp_path / p for p in rec["outputs"]}
    assert (tmp_path / "data" / "train.parquet") in res.outputs and rec["data"]["tokenizers"]["zh"] == "pa-mixed-v1"
    assert data_stage(cfg).records["data"]["last_action"] == "skipped"


def test_tiny_scale_keeps_a_share_of_each_fixture_split(tmp_path):
    res = build_corpus(load_config("tiny", [f"run_dir={tmp_path}", "data.tiny_scale=0.5"]))
    rep = json.loads((tmp_path / "data" / "report.json").read_text())
    assert rep["raw_rows"]["dolly"] == 124 and rep["raw_rows"]["drcd"] == 2 + 1 + 2   # split rows 5, 1, 3 -> 2, 1, 2
    assert set(rep["records"]) == set(SOURCES) and res.rows_rejected > 0
    with pytest.raises(Exception, match="tiny_scale must be in"):
        build_corpus(load_config("tiny", [f"run_dir={tmp_path}", "data.tiny_scale=2"]))
