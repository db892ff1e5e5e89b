"""Papermill as its users call it: the `polyalign` engine runs stage cells only; overrides as a string or a list;
a relative `config_path` resolves against the caller's directory; files keep the caller's umask."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from polyalign.core import config_to_dict, load_config

BIN = Path(sys.executable).parent


def _papermill(args, cwd, umask=None):
    env = {**os.environ, "PWD": str(cwd)}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([str(BIN / "papermill"), "--engine", "polyalign", "--no-progress-bar", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=pre)


def test_stage_run_skips_test_cells(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# a stage"),
        nbformat.v4.new_code_cell("#| stage\nout = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("#| export\ndef helper(): return 1"),
        nbformat.v4.new_code_cell("raise RuntimeError('a test cell ran in a stage run')"),
        nbformat.v4.new_code_cell("#| stage\nfrom pathlib import Path\nPath(out).write_text('stage ran')")])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(nb, tmp_path / "stage.ipynb")
    r = _papermill(["stage.ipynb", "done.ipynb", "-p", "out", str(tmp_path / "marker")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "marker").read_text() == "stage ran"
    executed = nbformat.read(tmp_path / "done.ipynb", as_version=4)
    assert not any("a test cell ran" in c.source for c in executed.cells)
    # the same notebook under papermill's default engine does reach the test cell: the engine is what skips it
    r = subprocess.run([str(BIN / "papermill"), "--no-progress-bar", "stage.ipynb", "all.ipynb", "-p", "out",
                        str(tmp_path / "m2")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "a test cell ran in a stage run" in r.stderr


@pytest.fixture(scope="module")
def caller(tmp_path_factory, root):
    "A directory outside the checkout holding a profile YAML with a relative run_dir."
    d = tmp_path_factory.mktemp("caller")
    cfg = config_to_dict(load_config("tiny"))
    cfg.update(run_dir="run", models={**cfg["models"], "policies": []})
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.mark.parametrize("how", ["string", "yaml-list", "list"])
def test_overrides_and_relative_config_path(caller, root, how):
    args = {"string": ["-p", "overrides", "seed=11"],
            "yaml-list": ["-p", "overrides", "[seed=11, data.tiny_scale=0.5, run_dir=run-b]"],
            "list": ["-y", "overrides: [seed=11, run_dir=run-c]"]}[how]
    run = caller / {"string": "run", "yaml-list": "run-b", "list": "run-c"}[how]
    r = _papermill([str(root / "nbs" / "00_core.ipynb"), f"core-{how}.ipynb", "-p", "config_path", "cfg.yaml", *args],
                   caller, umask=0o022)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = yaml.safe_load((run / "config.yaml").read_text())   # run_dir resolved against the caller
    assert saved["seed"] == 11 and saved["run_dir"] == str(run)
    if how == "yaml-list": assert saved["data"]["tiny_scale"] == 0.5
    for f in ("config.yaml", "manifest.json"):
        assert (run / f).stat().st_mode & 0o777 == 0o644, f
    assert json.loads((run / "manifest.json").read_text())["stages"]["core"]["status"] == "done"
