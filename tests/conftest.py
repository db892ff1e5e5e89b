"""Shared test setup: no hub access, repository paths, a session-scoped tiny checkpoint."""
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
