"""`pip install polyalign` users: the wheel alone (no checkout) gives a working library and command line."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PY = sys.executable


def _sh(args, cwd, timeout=600, env=None):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory, root):
    "A fresh venv holding only the built wheel; its dependencies come from the running environment's site-packages."
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"   # build from a copy of the working tree, so no build files land in the checkout
    files = _sh(["git", "ls-files", "-co", "--exclude-standard"], root).stdout.splitlines()
    for f in files:
        if (root / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((root / f).read_bytes())
    _sh([PY, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp)
    wheel = next((tmp / "dist").glob("polyalign-*.whl"))
    venv = tmp / "venv"
    _sh([PY, "-m", "venv", "--without-pip", str(venv)], tmp)
    _sh([PY, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-deps", str(wheel)], tmp)
    site = Path(_sh([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, wheel


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("POLYALIGN_ROOT", "POLYALIGN_CONFIG_DIR", "PYTHONPATH")}
    return {**env, "HF_HUB_OFFLINE": "1"}


def test_wheel_carries_profiles_notebooks_and_reported_tables(venv):
    import zipfile
    names = zipfile.ZipFile(venv[1]).namelist()
    for f in ("polyalign/assets/configs/tiny.yaml", "polyalign/assets/configs/paper.yaml", "polyalign/assets/nbs/00_core.ipynb",
              "polyalign/assets/nbs/01a_sources.ipynb", "polyalign/assets/reported/table2_main.csv"):
        assert f in names, f


def test_installed_cli_outside_the_checkout(venv, tmp_path):
    bin_ = venv[0] / "bin"
    r = _sh([str(bin_ / "python"), "-c", "import polyalign, polyalign.core as c; print(polyalign.__file__); "
             "print(c.config_dir())"], tmp_path, env=_env())
    assert str(venv[0]) in r.stdout.splitlines()[0] and "assets" in r.stdout.splitlines()[1], r.stdout
    r = _sh([str(bin_ / "polyalign"), "info", "--profile", "tiny"], tmp_path, env=_env())
    assert "seed:" in r.stdout
    r = _sh([str(bin_ / "polyalign"), "reproduce", "--profile", "tiny", "--out", "run", "--only", "core", "data"],
            tmp_path, timeout=900, env=_env())
    for f in ("run/manifest.json", "run/data/train.parquet", "run/tables/table1_corpus.csv",
              "run/notebooks/01a_sources.ipynb"):
        assert (tmp_path / f).is_file(), f
