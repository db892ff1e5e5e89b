"""The rehearsal profile end to end: the paper profile's code paths on a CPU. Models and sources load by hub id at
their pinned revisions from the local hub mirror, training runs as two launched processes with bf16 autocast over
fp32 weights, intermediate checkpoints are pruned, Tables 1-4 and 8 and Figures 3 and 4 are written, and the report
compares them with the paper."""
import json
import subprocess
import time

import pandas as pd
import pytest

from polyalign.core import load_config, model_slug
from polyalign.reproduce import STAGES
from polyalign.tiny import stand_in_family

CFG = load_config("rehearsal")


@pytest.fixture(scope="module")
def run(tmp_path_factory, polyalign_cli):
    out = tmp_path_factory.mktemp("rehearsal") / "run"
    t0 = time.perf_counter()
    r = subprocess.run([*polyalign_cli, "reproduce", "--profile", "rehearsal", "--out", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    (out / "wall_time_s.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
    return out, r


def test_every_stage_ran_and_wrote_tables_1_and_2(run):
    out, _ = run
    m = json.loads((out / "manifest.json").read_text())
    for st in STAGES:
        parts = [k for k in m["stages"] if k == st.name or k.startswith(st.name + "/")]
        assert parts and all(m["stages"][k]["status"] == "done" for k in parts), st.name
    for f in ("tables/table1_corpus.csv", "tables/table1_corpus.md", "tables/table2_main.csv", "tables/table2_main.md",
              "data/train.parquet", "data/test.parquet", "data/rejected.jsonl", "features/references.parquet",
              "figures/sft_loss.png"):
        assert (out / f).is_file(), f
    for st in STAGES: assert (out / "notebooks" / st.notebook).is_file(), st.notebook
    assert m["stages"]["data"]["rows"]["rejected"] > 0           # the fixtures carry malformed rows on purpose
    t1 = pd.read_csv(out / "tables" / "table1_corpus.csv")
    assert len(t1) >= 14                                       # the 14 sources, read through the hub mirror


def test_models_and_sources_came_from_the_mirror_at_their_pins(run):
    out, _ = run
    hub = out / "hub"
    assert CFG.models.policies and all("/" in p for p in CFG.models.policies)
    for model in CFG.models.policies:
        rev = CFG.models.revisions[model]
        assert (hub / f"models--{model.replace('/', '--')}" / "snapshots" / rev / "config.json").is_file(), model
        assert (out / "predictions" / model_slug(model) / "base_lm.jsonl").is_file(), model
    for name, rev in CFG.data.revisions.items():
        assert len(rev) == 40, name
    assert any((hub / d).is_dir() for d in (f"datasets--{CFG.data.hub_ids['dolly'].replace('/', '--')}",))


def test_training_ran_as_two_processes_and_pruned_its_checkpoints(run):
    out, _ = run
    m = json.loads((out / "manifest.json").read_text())
    trained = [k for k in m["stages"] if k.startswith(("sft/", "preference/train/"))]
    assert trained
    for k in trained:
        assert m["stages"][k].get("world_size") == 2, (k, m["stages"][k])
    assert not list((out / "checkpoints").rglob("checkpoint-*"))   # pruned once final/ was written
    finals = list((out / "checkpoints").rglob("final"))
    assert len(finals) == len(CFG.models.policies) * len(CFG.sft.languages) * 4
    eot = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma2": "<end_of_turn>"}
    for model in CFG.models.policies:        # every checkpoint's eos is its template's end of turn
        for final in (out / "checkpoints" / model_slug(model)).rglob("final"):
            tok = json.loads((final / "tokenizer_config.json").read_text())
            assert tok["eos_token"] == eot[stand_in_family(model)], (final, tok["eos_token"])


def test_predictions_of_every_method_and_model_cover_the_test_split_once(run):
    out, _ = run
    test_ids = set(pd.read_parquet(out / "data" / "test.parquet")["id"])
    for model in CFG.models.policies:   # the Gemma stand-in included: its system text folded at train and test time
        for method in ("base_lm", "cot", "full_sft", "bucket_sft", "dpo", "hdpo"):
            path = out / "predictions" / model_slug(model) / f"{method}.jsonl"
            ids = [json.loads(l)["id"] for l in path.read_text().splitlines()]
            assert len(ids) == len(set(ids)) and set(ids) == test_ids, (model, method)
    t2 = pd.read_csv(out / "tables" / "table2_main.csv")
    assert {"Human", "Empty", "BaseLM", "CoT", "Full-SFT", "Bucket-SFT", "DPO", "HDPO"} <= set(t2["method"])


def test_judge_scored_every_model_method_and_language_blind(run):
    from polyalign.judge import identity_names, judge_messages, load_rubric, blind_leaks
    out, _ = run
    t3 = pd.read_csv(out / "tables" / "table3_judge.csv")
    methods = {"BaseLM", "CoT", "Full-SFT", "Bucket-SFT", "DPO", "HDPO"}
    for model in CFG.models.policies:
        for lang in ("en", "zh"):
            assert methods <= set(t3[(t3.model == model) & (t3.language == lang)]["method"]), (model, lang)
    assert {f"avg_{c}" for c in ("overall", "utility", "cond", "d_faith")} <= set(t3.columns)
    assert {f"{j}_error_rate" for j in CFG.judge.judges} <= set(t3.columns) and "alpha_overall" in t3
    test = pd.read_parquet(out / "data" / "test.parquet").set_index("id")
    rows = [json.loads(l) for j in CFG.judge.judges for l in (out / "judge" / f"{j}.jsonl").read_text().splitlines()]
    assert len(rows) == len({(r["judge"], r["uid"]) for r in rows}) > 0
    rubric, names = load_rubric(), identity_names(CFG.models.policies)
    for r in rows[:50]:                                   # the prompts the judge saw name no method and no model
        ex = {**test.loc[r["id"]].to_dict(), "id": r["id"]}
        msgs = judge_messages(ex, "", r["candidate_id"], rubric)
        assert blind_leaks(msgs[1]["content"], names, [ex["question"], ex["context"], ex["human_answer"]]) == []


def test_detectors_scored_every_model_method_and_language_with_counts(run):
    out, _ = run
    methods = {*CFG.generate.methods, *CFG.preference.methods}
    for f in ("table4_detect.csv", "table4_detect.md", "table4_detect.tex", "detect_summary.csv"):
        assert (out / "tables" / f).is_file(), f
    for ext in ("png", "pdf"): assert (out / "figures" / f"fig3_quality_humanlike.{ext}").stat().st_size > 0
    s = pd.read_csv(out / "tables" / "detect_summary.csv", keep_default_na=False, na_values=[""])
    n = CFG.detect.rows_per_language
    for model in CFG.models.policies:
        got = s[s["model"] == model_slug(model)]
        for det in CFG.detect.detectors:
            for lang in ("en", "zh"):
                g = got[(got["detector"] == det) & (got["language"] == lang)]
                assert set(g["method"]) == methods, (model, det, lang)        # every prediction file in the manifest
                assert (g["n"] == n).all() and (g["n_ok"] + g["n_too_short"] + g["n_nonfinite"] == n).all()
    human = s[s["method"] == "human"]
    assert len(human) == 2 * len(CFG.detect.detectors) and human["ai_rate"].notna().all()   # the false-positive rates
    t4 = pd.read_csv(out / "tables" / "table4_detect.csv")
    assert len(t4) == 2 * (len(CFG.models.policies) * len(methods) + 1)
    assert t4["agg"].between(0, 1).all() and t4["joint"].notna().all()


def test_embedding_distances_and_figure4_cover_every_method_and_language(run):
    out, _ = run
    for stem in ("fig4_embeddings", "fig4_embeddings_pca"):
        for ext in ("png", "pdf"): assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)
    d = pd.read_csv(out / "tables" / "embedding_distances.csv")
    methods = {*CFG.generate.methods, *CFG.preference.methods}
    models = CFG.embed.models or CFG.models.policies
    assert len(d) == len(models) * 2 * len(methods)
    assert (d["n"] == CFG.embed.rows_per_language).all()
    assert d["centroid_cos_dist"].between(0, 2).all() and (d["mmd2_p"] > 0).all() and (d["mmd2_p"] <= 1).all()


def test_human_evaluation_wrote_blind_packs_table8_and_the_page_screenshot(run):
    out, _ = run
    hc = CFG.human_eval
    pages = sorted((out / "human_eval" / "packs").rglob("*.html"))
    assert len(pages) == len(hc.languages) * hc.annotators_per_language
    key = pd.read_csv(out / "human_eval" / "key.csv", keep_default_na=False)
    assert set(key["pack_id"]) == {p.stem for p in pages}
    model = hc.model or CFG.models.policies[0]
    for p in pages:
        html = p.read_text()
        assert model not in html and model_slug(model) not in html and "key.csv" not in html
    t8 = pd.read_csv(out / "tables" / "table8_human_eval.csv")
    assert len(t8) == len(hc.languages) * (len(hc.methods) + hc.include_human)
    assert (t8["n"] == hc.items_per_language).all() and t8["avg"].between(1, 5).all()
    report = pd.read_csv(out / "human_eval" / "exports_report.csv")
    assert (report["status"] == "rejected").sum() == len(hc.languages) * hc.sim_careless
    assert (out / "figures" / "human_eval_page.png").read_bytes()[:4] == b"\x89PNG"


def test_report_compares_every_table_and_renders_offline(run):
    import re
    out, _ = run
    for t in ("table1", "table2", "table3", "table4", "table7", "table8"):
        c = pd.read_csv(out / "tables" / f"compare_{t}.csv")
        assert len(c) and c["reproduced"].notna().any(), t                    # something of the run is compared
        assert not c["comparable"].any(), t                                 # a rehearsal is not the paper's run
    st = pd.read_csv(out / "tables" / "stage_times.csv")
    assert [s.name for s in STAGES if s.name != "report"] == [s for s in st["stage"] if s != "report"]
    t7 = pd.read_csv(out / "tables" / "table7_runtime.csv")
    assert {"Full-SFT", "Bucket-SFT", "HDPO policy", "HDPO critic"} <= set(t7["stage"])
    assert t7["runtime_minutes"].notna().any()
    page = (out / "report" / "index.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)                # offline: nothing from the network
    for f in ("table2_main", "table8_human_eval", "fig4_embeddings.png", "deviations"): assert f in page, f
    assert (out / "report" / "index.md").read_text().startswith("#")
    assert (out / "figures" / "report_page.png").read_bytes()[:4] == b"\x89PNG"


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
    r = subprocess.run([*polyalign_cli, "reproduce", "--profile", "rehearsal", "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    for st in STAGES:
        assert f"stage {st.name}: current, skipped" in r.stderr, st.name
    assert "launching" not in r.stderr                          # no training process started again


def test_one_method_runs_only_its_own_parts(run, polyalign_cli):
    out, _ = run
    r = subprocess.run([*polyalign_cli, "reproduce", "--profile", "rehearsal", "--out", str(out), "--only", "dpo"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    # DPO's parts per model: Full-SFT train answers, pairs and training per language, test predictions
    n = len(CFG.models.policies) * (2 + 2 * len(CFG.sft.languages))
    assert f"stage preference: current, skipped ({n} parts finished earlier)" in r.stderr, r.stderr[-3000:]
    assert "stage sft" not in r.stderr and "stage metrics" not in r.stderr
