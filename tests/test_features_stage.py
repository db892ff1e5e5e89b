"""The `features` stage: through `polyalign reproduce` on a synthetic corpus in the data stage's schema, and as
`features.features_stage(cfg)` from plain Python (no papermill) on a tiny run."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyalign.core import SPLITS, core_stage, file_hash, load_config, read_manifest, write_parquet
from polyalign.features import LM_FEATURE_NAMES, TEXT_FEATURE_NAMES, References, features_stage

FEATURE_OUTPUTS = {"features/train.parquet", "features/val.parquet", "features/test.parquet",
                   "features/references.parquet", "features/catalogue.json"}

EN = ["The capital of France is Paris.", "I think you should try restarting it first, then check the logs!",
      "Water boils at 100 degrees Celsius at sea level. At altitude it boils at a lower temperature.",
      "Yes.", "Honestly? I don't know. Maybe ask the library; they keep the 1998 records."]
ZH = ["巴黎是法国的首都。", "我觉得你应该先重启一下，然后再看看日志！", "水在海平面一百摄氏度沸腾。在高海拔地区，沸点更低。",
      "好的。", "说实话？我不知道。也许可以问问图书馆，他们保存着1998年的记录。"]


def _split(split, n):
    rows = []
    for i in range(n):
        lang = "en" if i % 2 else "zh"
        fam, track = ("qa", "single") if i % 3 else ("chat", "multi")
        ans = (EN if lang == "en" else ZH)[i % 5]
        hist = [{"role": "user", "text": "Hello" if lang == "en" else "你好"}, {"role": "assistant", "text": "Hi"}] if track == "multi" else []
        rows.append({"id": f"{split}-{i:04d}", "dataset": "synthetic", "split": split, "language": lang, "track": track,
                     "family": fam, "style_bucket": "qa_search", "length_bin": "short",
                     "bucket_id": f"{lang}|{track}|{fam}|short", "question": f"question {i}?", "context": "some context" if i % 4 else "",
                     "dialogue_history": hist, "human_answer": ans, "meta": "{}"})
    return pd.DataFrame(rows)


def _reproduce(cli, run_dir):
    return subprocess.run([*cli, "reproduce", "--profile", "tiny", "--out", str(run_dir), "--only", "core", "features"],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def run(polyalign_cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("featrun") / "tiny"
    for s, n in (("train", 130), ("val", 30), ("test", 40)):
        write_parquet(run_dir / "data" / f"{s}.parquet", _split(s, n))
    r = _reproduce(polyalign_cli, run_dir)
    assert r.returncode == 0, r.stderr[-4000:]
    return run_dir


def test_stage_writes_matrices_and_references(run):
    m = json.loads((run / "manifest.json").read_text())["stages"]["features"]
    assert m["status"] == "done" and m["rows"] == {"in": 200, "out": 200, "rejected": 0}
    assert set(m["outputs"]) == FEATURE_OUTPUTS
    assert set(m["inputs"]) >= {"data/train.parquet", "data/val.parquet", "data/test.parquet", "models/tiny"}
    for s, n in (("train", 130), ("val", 30), ("test", 40)):
        df = pd.read_parquet(run / "features" / f"{s}.parquet")
        assert list(df.columns) == ["id", *TEXT_FEATURE_NAMES, *LM_FEATURE_NAMES] and len(df) == n
        assert df[TEXT_FEATURE_NAMES + LM_FEATURE_NAMES].dtypes.eq(np.float32).all()
        data = pd.read_parquet(run / "data" / f"{s}.parquet")
        assert df["id"].tolist() == data["id"].tolist()
        zh = data.language.eq("zh").to_numpy()
        assert df.loc[zh, "flesch_reading_ease"].isna().all() and df.loc[~zh, "flesch_reading_ease"].notna().all()
        assert df["lm_uncond_nll_mean"].notna().all() and df["lm_cond_nll_mean"].notna().all()
    refs = References.load(run / "features" / "references.parquet")
    assert refs.meta["splits"] == ["train"] and refs.meta["rows"] == 130
    assert sorted(refs.buckets) == ["en|multi|chat|short", "en|single|qa|short", "zh|multi|chat|short", "zh|single|qa|short"]
    assert dict(zip(refs.buckets, refs.eligible.tolist())) == {"en|multi|chat|short": True, "en|single|qa|short": True,
                                                               "zh|multi|chat|short": True, "zh|single|qa|short": True}
    assert (run / "notebooks" / "02_features.ipynb").is_file()


def test_plain_python_call_gives_the_papermill_artifacts(run, tmp_path):
    "features_stage(cfg) from Python on the same inputs writes the same files, byte for byte, as the papermill run."
    here = tmp_path / "tiny"
    for d in ("data", "models"): shutil.copytree(run / d, here / d)
    res = features_stage(load_config("tiny", {"run_dir": str(here)}))
    theirs = json.loads((run / "manifest.json").read_text())["stages"]["features"]
    ours = res.records["features"]
    assert ours["outputs"] == theirs["outputs"] and ours["inputs"] == theirs["inputs"]
    assert ours["config_hash"] == theirs["config_hash"] and ours["rows"] == theirs["rows"]
    for rel in FEATURE_OUTPUTS:
        assert (here / rel).read_bytes() == (run / rel).read_bytes(), rel


def test_changing_test_answers_leaves_references_unchanged(polyalign_cli, run):
    ref_path = run / "features" / "references.parquet"
    before = References.load(ref_path)
    test = pd.read_parquet(run / "data" / "test.parquet")
    test["human_answer"] = "A completely different answer, much longer than before, with 2024 in it!!! 完全不同的答案。"
    write_parquet(run / "data" / "test.parquet", test)
    r = _reproduce(polyalign_cli, run)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((run / "manifest.json").read_text())["stages"]["features"]
    assert m["last_action"] == "ran"                                        # the input changed, so the stage reran
    after = References.load(ref_path)
    for k, v in before.stats.items():
        np.testing.assert_array_equal(after.stats[k], v, err_msg=k)
    assert pd.read_parquet(run / "features" / "test.parquet")["exclamation_mark_count"].eq(3).all()


def test_missing_data_fails_with_a_message(polyalign_cli, tmp_path):
    r = _reproduce(polyalign_cli, tmp_path / "nodata")
    assert r.returncode != 0
    assert "stage 'features' failed" in r.stderr and "02_features" in r.stderr


def _data_stage(cfg):
    "The data stage from Python (`sources.data_stage`; `data.build_corpus` where sources is not split out yet)."
    try:
        from polyalign.sources import data_stage
    except ImportError:
        from polyalign.data import build_corpus
        return build_corpus(cfg)
    return data_stage(cfg)


@pytest.fixture(scope="module")
def py_run(tmp_path_factory):
    "A tiny run (a tenth of each fixture, LM features on) with its core and data stages run from Python."
    cfg = load_config("tiny", {"run_dir": str(tmp_path_factory.mktemp("pyrun") / "tiny"), "data.tiny_scale": 0.1})
    core_stage(cfg)
    _data_stage(cfg)
    return cfg


def test_features_stage_from_plain_python(py_run):
    cfg, run = py_run, Path(py_run.run_dir)
    n = {s: len(pd.read_parquet(run / "data" / f"{s}.parquet")) for s in SPLITS}
    res = features_stage(cfg)
    rec = read_manifest(run)["stages"]["features"]
    assert rec["status"] == "done" and rec["last_action"] == "ran"
    assert rec["sections"] == ["seed", "features", "models"]
    assert rec["rows"] == {"in": sum(n.values()), "out": sum(n.values()), "rejected": 0}
    assert rec["features"]["rows_per_split"] == n and rec["features"]["scorer"] == "tiny"
    assert set(rec["inputs"]) == {"data/train.parquet", "data/val.parquet", "data/test.parquet", "models/tiny"}
    assert set(rec["outputs"]) == FEATURE_OUTPUTS
    for rel, h in {**rec["inputs"], **rec["outputs"]}.items():           # every input and output is hashed
        assert h == file_hash(run / rel), rel
    assert res.records["features"]["outputs"] == rec["outputs"]            # what the function returns is what it recorded
    assert sorted(map(str, res.outputs)) == sorted(str(run / rel) for rel in rec["outputs"])
    assert (res.rows_in, res.rows_out, res.rows_rejected) == (sum(n.values()), sum(n.values()), 0)
    for s in SPLITS:
        df = pd.read_parquet(run / "features" / f"{s}.parquet")
        assert df["id"].tolist() == pd.read_parquet(run / "data" / f"{s}.parquet")["id"].tolist()
        assert list(df.columns) == ["id", *TEXT_FEATURE_NAMES, *LM_FEATURE_NAMES]
    refs = References.load(run / "features" / "references.parquet")
    assert refs.meta["splits"] == ["train"] and refs.meta["rows"] == n["train"] and refs.meta["scorer"] == "tiny"
    again = features_stage(cfg).records["features"]                          # current: skipped, outputs untouched
    assert again["last_action"] == "skipped" and again["outputs"] == rec["outputs"]
