"""End-to-end smoke over the whole tiny profile (every stage, reduced sizes): artifacts, one row per test id, resume."""
import json
import subprocess

import pandas as pd
import pytest

from polyalign.reproduce import STAGES

SMALL = ["data.tiny_scale=0.5", "sft.max_train_examples=48", "generate.max_new_tokens=6",
         "metrics.bootstrap_samples=20", "features.lm_features=false", "preference.max_train_pairs=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, polyalign_cli):
    out = tmp_path_factory.mktemp("e2e") / "tiny"
    r = subprocess.run([*polyalign_cli, "reproduce", "--profile", "tiny", "--out", str(out), "--set", *SMALL],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, r


def test_every_stage_ran_and_wrote_its_artifacts(run):
    out, r = run
    m = json.loads((out / "manifest.json").read_text())
    for st in STAGES:
        parts = [k for k in m["stages"] if k == st.name or k.startswith(st.name + "/")]
        assert parts and all(m["stages"][k]["status"] == "done" for k in parts), st.name
        assert (out / "notebooks" / st.notebook).is_file()
    for f in ("data/train.parquet", "data/test.parquet", "data/rejected.jsonl", "features/references.parquet",
              "tables/table1_corpus.csv", "tables/table2_main.csv", "tables/table2_main.md", "figures/sft_loss.png"):
        assert (out / f).is_file(), f
    assert m["stages"]["data"]["rows"]["rejected"] > 0           # the fixtures carry malformed rows on purpose


def test_predictions_cover_the_test_split_once(run):
    out, _ = run
    test_ids = set(pd.read_parquet(out / "data" / "test.parquet")["id"])
    for method in ("base_lm", "cot", "full_sft", "bucket_sft", "dpo", "hdpo"):   # six methods, identical test ids
        rows = [json.loads(l) for l in (out / "predictions" / "tiny" / f"{method}.jsonl").read_text().splitlines()]
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) and set(ids) == test_ids, method
    t2 = pd.read_csv(out / "tables" / "table2_main.csv")
    assert {"Human", "Empty", "BaseLM", "CoT", "Full-SFT", "Bucket-SFT", "DPO", "HDPO"} <= set(t2["method"])


def test_table2_cells_lie_in_their_bootstrap_intervals(run):
    out, _ = run
    t2 = pd.read_csv(out / "tables" / "table2_main.csv")
    outside, checked = [], 0
    for _, r in t2.iterrows():
        for lang in ("en", "zh"):
            for m in ("qa_f1", "bng_macro", "g_mauve", "nuf", "agg"):
                v, lo, hi = r[f"{lang}_{m}"], r[f"{lang}_{m}_low"], r[f"{lang}_{m}_high"]
                if pd.isna(lo): continue
                checked += 1
                if not lo - 1e-9 <= v <= hi + 1e-9: outside.append((r["method"], lang, m, v, lo, hi))
    assert checked >= 8 * 2 * 5 and not outside, outside


def test_second_run_skips_every_stage(run, polyalign_cli):
    out, _ = run
    r = subprocess.run([*polyalign_cli, "reproduce", "--profile", "tiny", "--out", str(out), "--set", *SMALL],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    for st in STAGES:
        assert f"stage {st.name}: current, skipped" in r.stderr, st.name


def test_one_method_runs_only_its_own_parts(run, polyalign_cli):
    out, _ = run
    r = subprocess.run([*polyalign_cli, "reproduce", "--profile", "tiny", "--out", str(out), "--only", "dpo", "--set", *SMALL],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    # DPO's parts: Full-SFT train answers, pairs and training per language, test predictions; HDPO's are not touched
    assert "stage preference: current, skipped (6 parts finished earlier)" in r.stderr, r.stderr[-3000:]
    assert "stage sft" not in r.stderr and "stage metrics" not in r.stderr
