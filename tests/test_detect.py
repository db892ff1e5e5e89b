"""The detectors (polyalign.detect) beyond their notebook examples: both LM criteria against numpy on random logits,
the paper's Joint from every reported input, and the stage on a tiny run: every source counted (too-short answers
never counted as human), Table 4 and Figure 3 written, files linked through the manifest, scores resumed."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

from polyalign import detect as D
from polyalign.core import asset_path, load_config, read_manifest, write_json, write_jsonl

N_ROWS = 6  # test rows per language


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 4), width=st.integers(3, 9), va=st.integers(2, 12),
       extra=st.integers(0, 3), scale=st.floats(0.1, 8.0))
def test_criteria_match_numpy(seed, batch, width, va, extra, scale):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, width, va)) * scale
    b = rng.normal(size=(batch, width, va + extra)) * scale          # the second model's larger vocabulary is cut
    ids = rng.integers(0, va, size=(batch, width))
    lengths = rng.integers(3, width + 1, size=batch)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(float)
    t = torch.tensor
    bino = D.binoculars_criterion(t(a), t(b), t(ids), t(mask)).numpy()
    fdg = D.fast_detectgpt_criterion(t(a), t(b), t(ids), t(mask)).numpy()
    for i, n in enumerate(lengths):
        lq = _np_log_softmax(b[i, :n - 1, :va]); p = np.exp(_np_log_softmax(a[i, :n - 1]))
        ll = lq[np.arange(n - 1), ids[i, 1:n]]
        # float32 log-softmax is off by about eps32 x the logits' size per token; a near-zero perplexity or
        # cross-perplexity magnifies that in the ratio, so the tolerance follows the conditioning of each case
        nll, xent, eps = (-ll).mean(), (-(p * lq).sum(-1)).mean(), 1e-6 * max(np.abs(a[i]).max(), np.abs(b[i]).max())
        np.testing.assert_allclose(bino[i], nll / xent, rtol=1e-5, atol=nll / xent * eps * (1 / nll + 1 / xent))
        mu = (p * lq).sum(-1); var = np.clip((p * lq ** 2).sum(-1) - mu ** 2, 0, None)
        # float32 error of a difference of sums scales with the summed magnitudes, not with the (maybe tiny) result
        scale_f = (np.abs(ll).sum() + np.abs(mu).sum() + n * eps) / np.sqrt(var.sum())
        np.testing.assert_allclose(fdg[i], (ll.sum() - mu.sum()) / np.sqrt(var.sum()), rtol=1e-4, atol=eps * scale_f)


def test_joint_reproduces_every_reported_cell_from_its_inputs():
    rep = pd.read_csv(asset_path("reported", "table4_detect.csv"))
    typo = rep["agg"] > 1                       # Qwen2.5-3B en HDPO prints Agg 56.7 for 0.567 (its Joint fits 0.567)
    assert typo.sum() == 1
    got = [D.joint(r.Agg, [r.binoculars_ai_pct / 100, r.fast_detectgpt_ai_pct / 100, r.radar_ai_pct / 100])
           for r in rep[~typo].rename(columns={"agg": "Agg"}).itertuples()]
    np.testing.assert_allclose(got, rep.loc[~typo, "joint"], atol=0.06)   # inputs are rounded to 0.1 / 0.001
    r = rep[typo].iloc[0]
    with pytest.raises(ValueError, match="fraction"):
        D.joint(r["agg"], [r.binoculars_ai_pct / 100, r.fast_detectgpt_ai_pct / 100, r.radar_ai_pct / 100])
    assert D.joint(r["agg"] / 100, [r.binoculars_ai_pct / 100, r.fast_detectgpt_ai_pct / 100,
                                 r.radar_ai_pct / 100]) == pytest.approx(r.joint, abs=0.06)


def _predictions(test: pd.DataFrame, scored: pd.DataFrame) -> dict[str, list[str]]:
    """Synthetic answers: one method answers empty on half the scored rows of each language, one in one word, one with
    the human answer."""
    ans = test["human_answer"].tolist()
    empty = {i for _, g in scored.groupby("language") for i in g["id"].iloc[::2]}
    return {"full_sft": ["" if i in empty else a for i, a in zip(test["id"], ans)],
            "dpo": [(a.split() or ["x"])[0] for a in ans],
            "bucket_sft": ans}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A tiny run's data stage, three recorded prediction files and Table 2 summaries for them."
    from polyalign.data import read_split
    from polyalign.metrics import method_label
    from polyalign.sources import data_stage
    out = tmp_path_factory.mktemp("detect-run")
    cfg = load_config("tiny", [f"run_dir={out}", f"detect.rows_per_language={N_ROWS}", "detect.calibration_rows=12",
                               "detect.tiny_steps=4", "detect.bootstrap_samples=20", "detect.batch_size=4"])
    data_stage(cfg)
    test = read_split(out / "data" / "test.parquet")       # prediction files answer the whole test split
    m = read_manifest(out)
    summary = [{"model": "sanity", "method": "Human", "language": lang, "aggregate": {"overall": 0.9}}
               for lang in ("en", "zh")]
    scored = D.sample_rows(test, N_ROWS, cfg.seed)
    for k, (method, answers) in enumerate(_predictions(test, scored).items()):
        rel = f"predictions/tiny/{method}.jsonl"
        write_jsonl(out / rel, [{"id": i, "method": method, "model": "tiny", "prediction": a}
                                for i, a in zip(test["id"], answers)])
        m["stages"][f"generate/test/tiny/{method}"] = {"status": "done", "outputs": {rel: "x"}}
        summary += [{"model": "tiny", "method": method_label(method), "language": lang,
                     "aggregate": {"overall": 0.2 * (k + 1)}} for lang in ("en", "zh")]
    (out / "manifest.json").write_text(json.dumps(m))
    write_json(out / "metrics" / "summary.json", summary)
    return cfg, scored


@pytest.fixture(scope="module")
def staged(run):
    cfg, _ = run
    return D.detect_stage(cfg)


def test_stage_counts_every_text_and_writes_table4_and_figure3(run, staged):
    cfg, test = run
    out = Path(cfg.run_dir)
    for f in ("tables/table4_detect.csv", "tables/table4_detect.md", "tables/table4_detect.tex",
              "tables/detect_summary.csv", "figures/fig3_quality_humanlike.png", "figures/fig3_quality_humanlike.pdf"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    s = pd.read_csv(out / "tables" / "detect_summary.csv", keep_default_na=False, na_values=[""])
    assert set(s["detector"]) == {"binoculars", "fast_detectgpt", "radar"}
    assert set(s["method"]) == {"human", "full_sft", "dpo", "bucket_sft"}
    assert (s["n"] == N_ROWS).all()                                  # every test row of every source, per language
    assert (s["n_ok"] + s["n_too_short"] + s["n_nonfinite"] == s["n"]).all()
    empty = s[s["method"] == "full_sft"]
    assert (empty["n_too_short"] >= N_ROWS // 2).all()               # the empty answers: too short, never "human"
    assert (empty["ai_rate_sensitivity"] >= empty["ai_rate"]).all()
    assert (s.loc[s["method"] != "human", "roc_pairs"] <= N_ROWS).all()
    assert s["calibration_n"].between(10, 12).all()                  # ok answers of the calibration split (12 rows)
    cells = pd.read_csv(out / "tables" / "table4_detect.csv")
    assert len(cells) == 2 * 4                                       # (3 methods + the human answers) x 2 languages
    h = 1 - cells[["binoculars_ai_pct", "fast_detectgpt_ai_pct", "radar_ai_pct"]].mean(axis=1) / 100
    np.testing.assert_allclose(cells["h"], h, atol=1e-9)
    np.testing.assert_allclose(cells["joint"], 100 * 2 * cells["agg"] * h / (cells["agg"] + h), atol=1e-9)
    assert cells.loc[cells["method"] == "Human", "agg"].eq(0.9).all()
    md = (out / "tables" / "table4_detect.md").read_text()
    assert "Bucket-SFT" in md and "en Joint (cal.)" in md


def test_stage_skips_when_current_and_rescores_only_what_changed(run, staged):
    cfg, _ = run
    assert D.detect_stage(cfg).records["detect"]["last_action"] == "skipped"
    (Path(cfg.run_dir) / "detect" / "scores" / "radar" / "tiny--dpo.parquet").unlink()
    built = []
    make = lambda c, name: built.append(name) or D.make_detector(c, name)
    before = pd.read_csv(Path(cfg.run_dir) / "tables" / "table4_detect.csv")
    D.detect_and_write(cfg, make)
    assert built == ["radar"]                                        # only the detector with a missing score file
    pd.testing.assert_frame_equal(pd.read_csv(Path(cfg.run_dir) / "tables" / "table4_detect.csv"), before)


def test_a_mislabelled_prediction_file_is_an_error(run, staged, tmp_path):
    import shutil
    cfg, _ = run
    bad = tmp_path / "run"
    shutil.copytree(cfg.run_dir, bad)
    rows = [json.loads(l) for l in (bad / "predictions" / "tiny" / "dpo.jsonl").read_text().splitlines()]
    write_jsonl(bad / "predictions" / "tiny" / "bucket_sft.jsonl", rows)   # DPO's answers under Bucket-SFT's name
    with pytest.raises(ValueError, match=r"bucket_sft\.jsonl, row 1: model/method \('tiny', 'dpo'\)"):
        D.detect_sources(load_config("tiny", [f"run_dir={bad}"]))


def test_missing_table2_summaries_name_the_stage(run, tmp_path):
    cfg, _ = run
    with pytest.raises(FileNotFoundError, match="run the metrics stage"):
        D.agg_cells(load_config("tiny", [f"run_dir={tmp_path}"]))


def test_the_stage_hashes_every_split_and_table2_it_reads(run):
    cfg, _ = run
    got = {p.relative_to(cfg.run_dir).as_posix() for p in D.detect_inputs(cfg)}
    assert {"data/test.parquet", "data/train.parquet", "data/val.parquet", "metrics/summary.json",
            "predictions/tiny/dpo.jsonl"} <= got
