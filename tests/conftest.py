"""Shared test setup: no hub access, repository paths, the vLLM test double."""
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def polyalign_cli() -> list[str]:
    "The installed console script (what a user runs)."
    exe = BIN / "polyalign"
    assert exe.exists(), f"console script not installed at {exe}; run make setup"
    return [str(exe)]


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    "Import the vLLM test double (tests/fake_vllm) as `vllm`, here and in worker processes; returns its log reader."
    from polyalign.core import read_jsonl
    fake = ROOT / "tests" / "fake_vllm"
    monkeypatch.syspath_prepend(str(fake))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "vllm-log.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return lambda: read_jsonl(log) if log.exists() else []
