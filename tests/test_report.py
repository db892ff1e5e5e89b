"""The report stage (polyalign.report) on synthetic run directories built here: the files it writes, every link of
the page resolving inside the run folder, model text escaped in the HTML and Markdown pages, missing tables listed
(not an error), Tables 6 and 7 and the comparison CSVs, comparable rows on the paper profile only, skipping when
current, and the screenshot where a headless Chromium is installed."""
import html as htmllib
import json
import re
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest

from polyalign import report as R
from polyalign.core import load_config, read_manifest, write_json

EVIL = "<script>alert(1)</script>"


def _rec(wall: float, **extra) -> dict:
    return {"status": "done", "wall_time_s": wall, "last_action": "ran", "finished": "2026-01-01T00:00:00+0000",
            "seed": 13, "rows": {"in": 1, "out": 1, "rejected": 0}, "touched": 1.0,
            "versions": {"python": "3.11.7", "torch": "2.13.0"}, **extra}


def _png(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(2, 1.5))
    plt.plot([0, 1], [1, 0])
    fig.savefig(path)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def make_run(root: Path, model: str = "tiny") -> Path:
    """A run folder as the stages leave it: a manifest (training, critic, preference, generation and evaluation
    parts), Tables 1-3 (Table 2 with its sanity rows, Table 3 with a model answer holding a script tag), two figures
    and two executed notebooks. Tables 4 and 8 are missing."""
    slug = model.replace("/", "__")
    stages = {"core": _rec(2.0), "data": _rec(1.0),
              f"sft/{slug}/full_sft/en": _rec(120.0, global_step=40, world_size=1),
              f"sft/{slug}/bucket_sft/en": _rec(150.0, global_step=40, world_size=1),
              f"sft/{slug}/full_sft/zh": _rec(100.0, global_step=30, world_size=1),
              f"critic/{slug}": _rec(80.0),
              f"preference/pairs/{slug}/hdpo/en": _rec(10.0),
              f"preference/train/{slug}/hdpo/en": _rec(200.0, global_step=12, world_size=1),
              f"generate/test/{model}/base_lm": _rec(30.0), "metrics": _rec(40.0), "judge": _rec(50.0),
              "detect": {"status": "running", "config_hash": "x"}}
    write_json(root / "manifest.json", {"profile": "tiny", "seed": 13, "stages": stages})
    t = root / "tables"
    t.mkdir(parents=True)
    pd.DataFrame([{"dataset": "Dolly", "language": "en", "situation": "assistant_like", "track": "single",
                   "family": "assistant", "train": 10, "val": 2, "test": 3, "count": 15},
                  {"dataset": "Total (en)", "language": "en", "train": 10, "val": 2, "test": 3, "count": 15}]
                 ).to_csv(t / "table1_corpus.csv", index=False)
    rows = [{"model": "sanity", "method": "Human", "en_agg": 1.0},
            {"model": "sanity", "method": "Noise floor", "en_agg": 0.8, "en_agg_low": 0.7, "en_agg_high": 0.9},
            {"model": model, "method": "BaseLM", "en_agg": 0.2, "en_agg_low": 0.1, "en_agg_high": 0.3},
            {"model": model, "method": "HDPO", "en_agg": 0.5, "en_agg_low": 0.45, "en_agg_high": 0.55}]
    pd.DataFrame(rows).to_csv(t / "table2_main.csv", index=False)
    pd.DataFrame([{"model": model, "language": "en", "method": "HDPO", "avg_overall": 60.0, "avg_overall_low": 30.0,
                   "avg_overall_high": 45.0}]).to_csv(t / "table3_judge.csv", index=False)
    pd.DataFrame([{"id": "en-001", "method": "HDPO", "prediction": EVIL}]).to_csv(t / "judge_examples.csv",
                                                                                  index=False)
    _png(root / "figures" / "fig4_embeddings.png")
    _png(root / "figures" / "sft_loss.png")
    (root / "notebooks").mkdir()
    for nb in ("03_bucket_sft.ipynb", "07_metrics.ipynb"): (root / "notebooks" / nb).write_text("{}")
    return root


def _cfg(run_dir: Path, profile: str = "tiny"):
    return load_config(profile, [f"run_dir={run_dir}"])


def _refs(page: str) -> list[str]:
    return [htmllib.unescape(r) for r in re.findall(r'(?:href|src)="([^"]*)"', page)]


@pytest.fixture
def tiny_report(tmp_path):
    run = make_run(tmp_path / "run")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html></html>")
    res = R.report_stage(_cfg(run), screenshot=False, site=site)
    return run, res


def test_report_writes_its_files(tiny_report):
    run, res = tiny_report
    for rel in ("report/index.html", "report/index.md", "report/inputs.json",
                *(f"tables/{t}.{s}" for t in ("table6_compute", "table7_runtime", "stage_times")
                  for s in ("csv", "md", "tex")),
                *(f"tables/compare_{t}.csv" for t in ("table1", "table2", "table3", "table7"))):
        assert (run / rel).is_file(), rel
    assert not (run / "tables" / "compare_table4.csv").exists() and not (run / "tables" / "compare_table8.csv").exists()
    assert not (run / "figures" / R.SCREENSHOT).exists()                      # screenshot=False
    rec = read_manifest(run)["stages"]["report"]
    assert rec["status"] == "done" and rec["last_action"] == "ran"
    assert rec["report"]["missing"] == ["table4", "table8"] and rec["report"]["screenshot"] == "not taken"
    assert {Path(p).name for p in res.outputs} >= {"index.html", "index.md", "compare_table2.csv"}


def test_every_link_resolves_inside_the_run(tiny_report):
    run, _ = tiny_report
    page = (run / "report" / "index.html").read_text()
    refs = _refs(page)
    ids = set(re.findall(r'id="([^"]+)"', page))
    local = [r for r in refs if not r.startswith("#")]
    assert all(not re.match(r"[a-z]+:", r) for r in local), local             # no URL: relative links only
    missing = [r for r in local if not (run / "report" / urllib.parse.unquote(r)).exists()]
    assert not missing, missing
    assert all(r[1:] in ids for r in refs if r.startswith("#"))
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == ["../figures/fig4_embeddings.png", "../figures/sft_loss.png"]
    for want in ("../figures/fig4_embeddings.pdf", "../notebooks/03_bucket_sft.ipynb", "../notebooks/07_metrics.ipynb",
                 "../../site/index.html", "../tables/table2_main.csv", "../tables/compare_table2.csv"):
        assert want in local, want
    assert "<link" not in page and "url(" not in page and "@import" not in page   # nothing fetched from elsewhere
    assert 'content="default-src \'none\'' in htmllib.unescape(page)


def test_model_text_is_escaped(tiny_report):
    run, _ = tiny_report
    page = (run / "report" / "index.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = (run / "report" / "index.md").read_text()
    assert EVIL not in md and "\\<script\\>alert(1)\\</script\\>" in md


def test_header_sections_and_missing_tables(tiny_report):
    run, _ = tiny_report
    page = (run / "report" / "index.html").read_text()
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", page))
    assert "Profile tiny: numbers are not comparable with the paper" in text and 'class="banner"' in page
    assert re.search(r"seed\s+13", text) and "written 20" in text
    assert "Table 4 (written by the detect stage)" in text and "Table 8 (written by the human_eval stage)" in text
    assert "missing: the run has no tables/table4_detect.csv" in text
    for anchor in ("summary", "comparison", "tables", "figures", "versions", "notebooks", "deviations", "noise-floor",
                   "stage-times", "t-table6_compute", "t-table7_runtime", "compare-table2"):
        assert f'id="{anchor}"' in page, anchor
    floor = page.split('id="noise-floor"')[1].split("</figure>")[0]
    assert "Noise floor" in floor and "0.8 [0.7, 0.9]" in floor and "BaseLM" not in floor
    assert "Deviations from the paper and from the authors" in text              # the register, rendered
    assert "3.11.7" in text and "2.13.0" in text                                  # versions from the manifest
    md = (run / "report" / "index.md").read_text()
    assert "Profile tiny: numbers are not comparable with the paper" in md and "](../figures/sft_loss.png)" in md


def test_tables_6_and_7_and_stage_times(tiny_report):
    run, _ = tiny_report
    t7 = pd.read_csv(run / "tables" / "table7_runtime.csv", dtype={"paper_model": str, "paper_runtime": str})
    row = lambda stage, lang: t7[(t7["stage"] == stage) & (t7["language"] == lang)].iloc[0]
    assert row("Full-SFT", "en")[["model", "runtime", "runtime_minutes", "steps", "paper_model", "paper_runtime"]
                                 ].tolist() == ["tiny", "2m 00s", 2.0, 40, "Qwen2.5-1.5B", "5h 35m"]
    assert row("HDPO critic", "en+zh")[["runtime_minutes", "paper_runtime_minutes"]].tolist() == [1.33, 625]
    assert row("HDPO pairs", "en")["group"] == "preference pairs"
    assert row("BaseLM answers (test)", "all")["group"] == "generation"
    assert set(t7.loc[t7["group"] == "evaluation", "stage"]) == {"metrics", "judge"}   # detect is still running
    assert set(t7["device"]) <= {R.device_label(R.run_devices())}
    t6 = pd.read_csv(run / "tables" / "table6_compute.csv").set_index("item")
    assert t6.loc["GPU node", "paper"] == "8 × AMD Instinct MI210 GPUs"
    assert "judge_a: tiny" in t6.loc["Judge models", "this run"]
    st = pd.read_csv(run / "tables" / "stage_times.csv").set_index("stage")
    assert list(st.index) == ["core", "data", "sft", "generate", "critic", "preference", "metrics", "judge", "detect"]
    assert st.loc["sft", "wall_time_s"] == 370.0 and st.loc["detect", "last_action"] == "running"


def test_comparisons_on_the_tiny_profile(tiny_report):
    run, _ = tiny_report
    c2 = pd.read_csv(run / "tables" / "compare_table2.csv")
    assert list(c2.columns) == ["model", "language", "method", "run_model", *R.COMPARE_COLUMNS]
    assert set(c2["model"]) == {"Qwen2.5-1.5B"} and set(c2["language"]) == {"en"} and set(c2["metric"]) == {"agg"}
    assert not c2["comparable"].any() and len(c2) == 6                       # the paper's six methods, Agg only
    b = c2.set_index("method")
    assert b.loc["BaseLM", "run_model"] == "tiny" and abs(b.loc["BaseLM", "difference"] - (0.2 - 0.235)) < 1e-12
    assert bool(b.loc["BaseLM", "ci_contains_reported"]) and not bool(b.loc["HDPO", "ci_contains_reported"])
    assert pd.isna(b.loc["DPO", "reproduced"]) and pd.isna(b.loc["DPO", "ci_contains_reported"])
    c3 = pd.read_csv(run / "tables" / "compare_table3.csv")
    assert set(c3["metric"]) == {"avg_overall"}                                # the tiny judges' names match none
    assert c3.set_index("method").loc["HDPO", "ci_contains_reported"] == True  # noqa: E712 (printed 39.3 in [30, 45])
    c1 = pd.read_csv(run / "tables" / "compare_table1.csv").set_index(["dataset", "metric"])
    assert c1.loc[("Total (en)", "count"), ["reported", "reproduced"]].tolist() == [693852, 15]
    assert c1["ci_contains_reported"].isna().all()                            # Table 1 has no intervals
    c7 = pd.read_csv(run / "tables" / "compare_table7.csv").set_index(["language", "stage", "metric"])
    assert c7.loc[("en", "Full-SFT", "steps"), ["reported", "reproduced"]].tolist() == [9132, 40]
    assert c7.loc[("en+zh", "HDPO critic", "runtime_minutes"), "reported"] == 625


def test_skipped_when_current_and_rerun_when_a_stage_changes(tiny_report):
    run, _ = tiny_report
    cfg = _cfg(run)
    R.report_stage(cfg, screenshot=False, site=run.parent / "site")
    assert read_manifest(run)["stages"]["report"]["last_action"] == "skipped"
    m = read_manifest(run)
    m["stages"]["judge"].update(touched=99.0, last_action="skipped")           # the judge stage was called, current
    write_json(run / "manifest.json", m)
    R.report_stage(cfg, screenshot=False, site=run.parent / "site")
    assert read_manifest(run)["stages"]["report"]["last_action"] == "skipped"
    m = read_manifest(run)
    m["stages"]["judge"].update(last_action="ran", wall_time_s=51.0)           # the judge stage ran again
    write_json(run / "manifest.json", m)
    R.report_stage(cfg, screenshot=False, site=run.parent / "site")
    assert read_manifest(run)["stages"]["report"]["last_action"] == "ran"
    R.report_stage(cfg, screenshot=False, site=None)                           # another option: runs again
    assert read_manifest(run)["stages"]["report"]["last_action"] == "ran"


def test_paper_profile_rows_are_comparable(tmp_path):
    run = make_run(tmp_path / "run", model="Qwen/Qwen2.5-1.5B")
    R.report_stage(_cfg(run, "paper"), screenshot=False, site=tmp_path / "no-site")
    c2 = pd.read_csv(run / "tables" / "compare_table2.csv")
    assert c2["comparable"].all() and set(c2["run_model"].dropna()) == {"Qwen/Qwen2.5-1.5B"}
    page = (run / "report" / "index.html").read_text()
    assert 'class="banner"' not in page and "numbers are not comparable with the paper." not in page
    assert "The documentation site is not built here" in htmllib.unescape(page)


def test_a_run_with_nothing_yet(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    R.report_stage(_cfg(run), screenshot=False, site=tmp_path / "no-site")
    text = htmllib.unescape((run / "report" / "index.html").read_text())
    assert "The run has no figures yet." in text and "No executed notebooks in this run." in text
    assert json.loads((run / "report" / "inputs.json").read_text())["parts"] == {}
    assert read_manifest(run)["stages"]["report"]["report"]["missing"] == ["table1", "table2", "table3", "table4",
                                                                           "table8"]


def test_notebook_stage_cells():
    "The cells `polyalign reproduce` runs: the parameters cell, the call and the display."
    from polyalign.reproduce import is_stage_cell
    nb = json.loads((Path(__file__).resolve().parents[1] / "nbs" / "13_report.ipynb").read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and is_stage_cell(c)]
    assert len(code) == 3 and "parameters" in code[0]["metadata"].get("tags", [])
    assert "report_stage(" in "".join(code[1]["source"])


@pytest.mark.skipif(not R.browser_available(), reason="no headless Chromium and chromedriver installed")
def test_screenshot(tiny_report):
    run, _ = tiny_report
    R.report_stage(_cfg(run), screenshot=True, site=run.parent / "site")
    png = run / "figures" / R.SCREENSHOT
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    rec = read_manifest(run)["stages"]["report"]["report"]
    assert rec["screenshot"] == f"figures/{R.SCREENSHOT}" and rec["broken_images"] == []
    assert R.SCREENSHOT not in (run / "report" / "index.html").read_text()    # the page does not show itself


def test_deviations_register_raw_html_is_inert(tmp_path, monkeypatch):
    "The register is Markdown from the project, rendered with raw HTML off: a tag in it shows as text."
    reg = tmp_path / "deviations.md"
    reg.write_text(f"# Deviations\n\n| topic | why |\n|---|---|\n| a {EVIL} | <img src=x onerror=alert(1)> "
                   "[x](javascript:alert(1)) |\n", encoding="utf-8")
    monkeypatch.setattr(R, "deviations_path", lambda: reg)
    run = make_run(tmp_path / "run")
    R.report_stage(_cfg(run), screenshot=False, site=tmp_path / "no-site")
    page = (run / "report" / "index.html").read_text()
    dev = page.split('id="deviations"')[1]
    assert "<h3>Deviations</h3>" in dev and "<table>" in dev                 # rendered, one heading level down
    assert "<script" not in page.lower() and "<img src=x" not in page and 'href="javascript' not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in dev
