"""The exported library and the README are generated from the notebooks; this fails when they drift."""
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _diff(a: Path, b: Path) -> list[str]:
    out = []
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out += [f"only in exported: {x}" for x in cmp.right_only] + [f"stale in repo: {x}" for x in cmp.left_only]
    out += [f"differs: {x}" for x in cmp.diff_files]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return sorted(set(out + [f"differs: {x}" for x in mismatch + errors]))


def test_nbdev_export_leaves_library_unchanged(tmp_path):
    for name in ("settings.ini", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "polyalign", tmp_path / "polyalign", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([str(BIN / "nbdev_export")], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _diff(ROOT / "polyalign", tmp_path / "polyalign") == [], "run nbdev_export and commit polyalign/"


def test_readme_generated_from_index():
    r = subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "markdown", "--stdout", "--log-level=ERROR",
                        str(ROOT / "nbs" / "index.ipynb")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "README.md").read_text(encoding="utf-8"), "run `make export` and commit README.md"
    assert "make reproduce" in r.stdout and "make test" in r.stdout


def test_notebooks_are_clean():
    "No outputs or execution counts are committed (settings.ini: clear_all is False, outputs are never kept)."
    import json
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            if c["cell_type"] == "code":
                assert not c.get("outputs") and c.get("execution_count") is None, f"{nb.name} cell {i} has outputs"


def test_ci_runs_readme_test_command():
    "CI runs the README's test command, then the rehearsal of the paper profile, and nothing else."
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [l.strip() for l in ci.splitlines() if l.strip().startswith("make ")]
    assert steps == ["make test", "make rehearsal"], steps
    assert "make test" in (ROOT / "README.md").read_text() and "make rehearsal" in (ROOT / "README.md").read_text()
