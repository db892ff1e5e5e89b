"""The human evaluation (polyalign.human_eval) beyond the notebook's examples: the sampler's allocation as a property,
the stage on a small synthetic run (simulated annotators: packs, key outside the packs, blind pages, Table 8 beside
the paper, agreement that separates the careless annotator, resume), the organiser's path (packs first, exports
later, a bad export reported, not fatal), and a method without predictions."""
import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from polyalign import human_eval as H
from polyalign.core import METHODS, load_config, read_manifest, write_json, write_jsonl

STUDY = ("base_lm", "full_sft", "dpo", "bucket_sft", "hdpo")
PLANTED = "</script><script>alert('x')</script><img src=x onerror=alert(1)>"


def _record(i: int, lang: str) -> dict:
    bins = ("short", "medium", "long", "xlong")
    return {"id": f"{lang}-{i:03d}", "dataset": "synthetic", "split": "test", "language": lang,
            "track": ("single", "multi")[i % 2], "family": "qa", "style_bucket": "qa_search",
            "length_bin": bins[i % 4], "bucket_id": f"{lang}|{('single', 'multi')[i % 2]}|qa|{bins[i % 4]}",
            "question": f"question {i}" if lang == "en" else f"问题 {i}", "context": "" if i % 3 else "some context",
            "dialogue_history": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}] if i % 2
            else [], "human_answer": f"human answer {i}" if lang == "en" else f"人工回答 {i}",
            "answer_tokens": 3, "group_id": f"g{i}", "meta": json.dumps({"i": i})}


def make_run(root: Path, n_per_language: int = 24, methods=STUDY) -> Path:
    "A run with a test split and one manifest-linked prediction file per method; one answer plants HTML."
    import pyarrow.parquet as pq
    from polyalign.data import records_to_table
    recs = [_record(i, lang) for lang in ("en", "zh") for i in range(n_per_language)]
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(records_to_table(recs), root / "data" / "test.parquet")
    parts = {}
    for k, method in enumerate(methods):
        rows = [{"id": r["id"], "method": method, "model": "tiny",
                 "prediction": PLANTED if k == 0 else f"candidate {k}: {r['human_answer']}"} for r in recs]
        random.Random(k).shuffle(rows)
        rel = f"predictions/tiny/{method}.jsonl"
        write_jsonl(root / rel, rows)
        parts[f"generate/test/tiny/{method}"] = {"status": "done", "outputs": {rel: "x"}}
    write_json(root / "manifest.json", {"stages": parts})
    return root


def cfg_for(run, *overrides):
    return load_config("tiny", [f"run_dir={run}", "human_eval.items_per_language=8", "human_eval.bootstrap_samples=100",
                                "human_eval.screenshot=false", *overrides])


# --- the sampler ----------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 30), min_size=1, max_size=8),
       st.integers(0, 120))
def test_allocation_is_even_and_capped(available, n):
    out = H.allocate(available, n)
    assert sum(out.values()) == min(n, sum(available.values()))
    assert all(0 <= out[s] <= available[s] for s in available)
    # water-filling: a stratum below another's count is full
    for s in available:
        for t in available:
            if out[s] < out[t] - 1: assert out[s] == available[s]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 30), st.integers(0, 2**16))
def test_sample_is_stratified_and_deterministic(n_items, seed):
    test = pd.DataFrame([_record(i, lang) for lang in ("en", "zh") for i in range(37)])
    hc = H.HumanEvalConfig(items_per_language=n_items)
    s = H.sample_prompts(test, hc, seed, "zh")
    assert list(s["id"]) == list(H.sample_prompts(test, hc, seed, "zh")["id"])
    assert len(s) == min(n_items, 37) and set(s["language"]) == {"zh"} and s["id"].is_unique
    sizes = s.groupby(["length_bin", "track"]).size()
    assert sizes.max() - sizes.min() <= 1 or len(s) == 37          # 8 strata of 4-5 prompts: an even spread


# --- the stage with simulated annotators ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("he-run"))
    cfg = cfg_for(run)
    return cfg, H.human_eval_stage(cfg)


def test_packs_are_blind_and_the_key_stays_outside(simulated):
    cfg, _ = simulated
    run = Path(cfg.run_dir)
    pages = sorted((run / "human_eval" / "packs").rglob("*"))
    files = [p for p in pages if p.is_file()]
    assert len(files) == 2 * cfg.human_eval.annotators_per_language and all(p.suffix == ".html" for p in files)
    names = [*STUDY, *(METHODS[m].label for m in STUDY), "Human (reference)"]
    key = pd.read_csv(run / "human_eval" / "key.csv")
    for page in files:
        html = page.read_text()
        assert PLANTED not in html and "<img src=x" not in html      # the planted answer is data, escaped
        for item in key.loc[key["pack_id"] == page.stem, "item"]: assert item in html
        for pid in set(key["example_id"]): assert f'"{pid}"' not in html   # no example ids either
        text = re.sub(r"(?s)<script type=\"application/json\".*?</script>", "", html)
        assert not [n for n in names if re.search(rf"\b{re.escape(n)}\b", text)], page   # nor in the page itself
    assert set(key["kind"]) == {"rate", "repeat", "attention"}
    rate = key[key["kind"] == "rate"]
    # every prompt: every method and the human control, by annotators_per_item annotators
    per = rate.groupby(["language", "example_id"])["method"].value_counts()
    assert set(per) == {cfg.human_eval.annotators_per_item}
    assert set(rate["method"]) == {*STUDY, H.HUMAN}


def test_table8_agreement_and_report(simulated):
    cfg, res = simulated
    run = Path(cfg.run_dir)
    t8 = pd.read_csv(run / "tables" / "table8_human_eval.csv")
    assert list(t8["method"]) == [*([METHODS[m].label for m in STUDY] + ["Human (reference)"])] * 2
    assert (t8["n"] == 8).all()
    for c in ("usefulness", "answerability", "naturalness", "avg"):
        assert ((t8[f"{c}_low"] <= t8[c]) & (t8[c] <= t8[f"{c}_high"])).all()
    np.testing.assert_allclose(t8["avg"], t8[["usefulness", "answerability", "naturalness"]].mean(axis=1))
    zh = t8.set_index(["language", "method"])
    assert zh.loc[("zh", "Full-SFT"), "usefulness_reported"] == 4.45 and zh.loc[("zh", "DPO"), "n_reported"] == 20
    assert np.isnan(zh.loc[("en", "Full-SFT"), "usefulness_reported"])
    for suffix in ("md", "tex"): assert "Bucket-SFT" in (run / "tables" / f"table8_human_eval.{suffix}").read_text()
    agree = pd.read_csv(run / "tables" / "human_eval_agreement.csv")
    assert (agree["alpha_ordinal"] > agree["alpha_all_exports"]).all() and (agree["alpha_ordinal"] > 0.3).all()
    report = pd.read_csv(run / "human_eval" / "exports_report.csv")
    careless = report[report["annotator"].str.endswith(f"-a{cfg.human_eval.annotators_per_language}")]
    assert set(careless["status"]) == {"rejected"} and careless["reasons"].str.contains("attention").all()
    assert len(report) == 2 * cfg.human_eval.annotators_per_language
    for stem in ("human_eval_kappa", "human_eval_paired_tests"): assert (run / "tables" / f"{stem}.csv").exists()
    rec = read_manifest(run)["stages"]["human_eval"]
    assert rec["sections"] == list(H.HUMAN_EVAL_SECTIONS) and rec["simulated"] is True
    assert rec["rows"]["rejected"] == 2
    assert H.human_eval_stage(cfg).records["human_eval"]["last_action"] == "skipped"


# --- the organiser's path: packs first, exports later ---------------------------------------------------------------

def test_packs_first_then_exports(tmp_path):
    run = make_run(tmp_path / "r", n_per_language=12)
    cfg = cfg_for(run, "human_eval.simulate=false", "human_eval.languages=[zh]")
    rec = H.human_eval_stage(cfg).records["human_eval"]
    assert rec["exports"] == {} and not (run / "tables" / "table8_human_eval.csv").exists()
    assert "key.csv" in (run / "human_eval" / "README.md").read_text()
    key = pd.read_csv(run / "human_eval" / "key.csv", keep_default_na=False)
    packs = [json.loads(re.search(r'(?s)<script type="application/json" id="pack">(.*?)</script>', p.read_text())
                        .group(1)) for p in sorted((run / "human_eval" / "packs" / "zh").glob("*.html"))]
    exports = H.simulate_exports(packs, key, cfg.human_eval, 1)
    folder = run / "human_eval" / "annotations"
    folder.mkdir()
    write_json(folder / "a.json", exports[0])
    (folder / "b.json").write_text("{broken")
    write_json(folder / "c.json", {**exports[1], "answers": exports[1]["answers"] + exports[1]["answers"][:1]})
    rec = H.human_eval_stage(cfg).records["human_eval"]          # the new exports are inputs: the stage reruns
    assert rec["last_action"] == "ran" and rec["exports"]["rejected"] == 2
    report = pd.read_csv(run / "human_eval" / "exports_report.csv").set_index("file")
    assert "not a readable JSON" in report.loc["b.json", "reasons"]
    assert "more than once" in report.loc["c.json", "reasons"]
    assert report.loc["a.json", "status"] in ("complete", "partial")
    t8 = pd.read_csv(run / "tables" / "table8_human_eval.csv")
    assert set(t8["language"]) == {"zh"} and len(t8) == len(STUDY) + 1


def test_a_method_without_predictions_is_an_error(tmp_path):
    run = make_run(tmp_path / "r", n_per_language=8, methods=STUDY[:-1])
    with pytest.raises(FileNotFoundError, match=r"\['hdpo'\].*records no test predictions"):
        H.human_eval_stage(cfg_for(run))
