"""The `features` stage through `polyalign reproduce`, on a synthetic corpus in the data stage's schema."""
import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from polyalign.core import write_parquet
from polyalign.features import LM_FEATURE_NAMES, TEXT_FEATURE_NAMES, References

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
    assert set(m["outputs"]) == {"features/train.parquet", "features/val.parquet", "features/test.parquet",
                                 "features/references.parquet", "features/catalogue.json"}
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
