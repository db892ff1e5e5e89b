"""`polyalign reproduce` end to end on the tiny profile: manifest, executed notebook, skip on rerun, failure report."""
import json
import subprocess

import pytest


def _run(cli, *args, timeout=600):
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run") / "tiny"


def test_reproduce_core_then_skip(polyalign_cli, run_dir):
    r = _run(polyalign_cli, "reproduce", "--profile", "tiny", "--out", str(run_dir), "--only", "core")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run_dir / "manifest.json").read_text())
    core = m["stages"]["core"]
    assert core["status"] == "done" and core["last_action"] == "ran"
    assert set(core["outputs"]) == {"config.yaml", "models/tiny"}
    assert core["versions"]["torch"].startswith("2.13.0")
    assert (run_dir / "notebooks" / "00_core.ipynb").is_file()
    assert (run_dir / "models" / "tiny" / "model.safetensors").is_file()
    assert "tables" in r.stdout and "manifest.json" in r.stdout
    r2 = _run(polyalign_cli, "reproduce", "--profile", "tiny", "--out", str(run_dir), "--only", "core")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "stage core: current, skipped (1 part finished earlier)" in r2.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["core"]["finished"] == core["finished"]


def test_failing_stage_names_cell_and_keeps_artifacts(polyalign_cli, run_dir):
    before = (run_dir / "models" / "tiny" / "model.safetensors").read_bytes()
    r = _run(polyalign_cli, "reproduce", "--profile", "tiny", "--out", str(run_dir), "--only", "core",
             "--set", "models.tiny.hidden_size=-1")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "stage 'core' failed in cell" in last and "executed notebook:" in last, last
    assert (run_dir / "models" / "tiny" / "model.safetensors").read_bytes() == before
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["core"]["status"] == "running"


def test_unknown_stage(polyalign_cli, tmp_path):
    r = _run(polyalign_cli, "reproduce", "--out", str(tmp_path / "x"), "--only", "nosuch")
    assert r.returncode == 2 and "unknown stage or method 'nosuch'" in r.stderr


def test_info(polyalign_cli):
    r = _run(polyalign_cli, "info", "--profile", "paper")
    assert r.returncode == 0 and "transformers:" in r.stdout and "Qwen/Qwen2.5-3B" in r.stdout and "cuda:" in r.stdout


def test_each_stage_notebook_calls_its_library_function(root):
    "The stage list, the notebooks and the library agree: the stage cells of each notebook call `Stage.function`."
    import importlib
    import re

    import nbformat

    from polyalign.reproduce import STAGES, is_stage_cell
    for st in STAGES:
        module, fn = st.function.split(":")
        assert callable(getattr(importlib.import_module(f"polyalign.{module}"), fn)), st.function
        cells = [c.source for c in nbformat.read(root / "nbs" / st.notebook, as_version=4).cells
                 if c.cell_type == "code" and is_stage_cell(c)]
        calls = [s for s in cells if re.search(rf"\b{fn}\(cfg\b", s)]
        assert len(calls) == 1, f"{st.notebook}: expected one stage cell calling {fn}(cfg), found {len(calls)}"
        # the stage cells hold no pipeline logic of their own: no function or class definitions
        assert not any(re.search(r"^\s*(def|class) ", s, re.M) for s in cells), st.notebook


def test_plan_lists_failing_checks_with_fixes(polyalign_cli):
    r = _run(polyalign_cli, "plan", "--profile", "paper")
    assert r.returncode == 1, r.stderr[-2000:]
    fails = [l for l in r.stdout.splitlines() if l.startswith("FAIL")]
    assert any(l.startswith("FAIL pins:") for l in fails) and all("-> fix:" in l for l in fails)
    assert "sft | Qwen/Qwen2.5-1.5B@UNPINNED" in r.stdout and " h" in r.stdout   # loads and Table 7 hours
    ok = _run(polyalign_cli, "plan", "--profile", "tiny")
    assert ok.returncode == 0 and "FAIL" not in ok.stdout, ok.stdout


def test_rehearsal_plan_passes_from_its_local_mirror(polyalign_cli, tmp_path):
    r = _run(polyalign_cli, "plan", "--profile", "rehearsal", "--set", f"run_dir={tmp_path / 'r'}")
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout[-3000:]
    assert "ok   mirror:" in r.stdout and "google/gemma-2-2b@" in r.stdout
    assert "system text folded into the first user turn" in r.stdout      # the Gemma-2 stand-in has no system role
    assert (tmp_path / "r" / "hub" / "models--google--gemma-2-2b").is_dir()


def test_unpinned_paper_run_refuses_to_start(polyalign_cli, tmp_path):
    r = _run(polyalign_cli, "reproduce", "--profile", "paper", "--out", str(tmp_path / "paper"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "not pinned to a commit" in err[0] and "polyalign pin" in err[0], err
    assert not (tmp_path / "paper").exists() or not any((tmp_path / "paper").iterdir())
