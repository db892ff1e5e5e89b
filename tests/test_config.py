"""RunConfig: profiles, YAML round trips, overrides, and the one-line errors a user sees."""
import subprocess

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from polyalign.core import (ConfigError, RunConfig, apply_overrides, config_to_dict, load_config, profiles,
                            save_config, stage_config)


def test_profiles_load_and_differ():
    assert {"tiny", "paper"} <= set(profiles())
    tiny, paper = load_config("tiny"), load_config("paper")
    assert tiny.profile == "tiny" and paper.profile == "paper"
    assert tiny.models.policies == ["tiny"]
    assert "Qwen/Qwen2.5-1.5B" in paper.models.policies


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_profile_yaml_is_complete(root, name):
    "Profiles spell out every key, so a reader sees the whole run in one file."
    data = yaml.safe_load((root / f"papers/polyalign/configs/{name}.yaml").read_text())

    def keys(d, p=""):
        return {p + k for k in d} | {x for k, v in d.items() if isinstance(v, dict) and k != "revisions"
                                     for x in keys(v, f"{p}{k}.")}
    assert keys(data) == keys(config_to_dict(load_config(name)))


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(load_config("tiny"), ["seed=99", "models.tiny.hidden_size=16"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), hidden=st.integers(1, 4096), offline=st.booleans(),
       pols=st.lists(st.text("abcxyz/-.", min_size=1, max_size=12), min_size=1, max_size=4))
def test_overrides_parse_by_declared_type(seed, hidden, offline, pols):
    cfg = apply_overrides(RunConfig(), [f"seed={seed}", f"models.tiny.hidden_size={hidden}",
                                        f"hf_offline={str(offline).lower()}", "models.policies=" + ",".join(pols)])
    assert (cfg.seed, cfg.models.tiny.hidden_size, cfg.hf_offline, cfg.models.policies) == (seed, hidden, offline, pols)


def test_stage_config_sets_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = stage_config(None, ["seed=5"])
    assert cfg.seed == 5
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("make_args, expect", [
    (lambda p: ["--profile", "nosuch"], "unknown profile 'nosuch' (known: paper, rehearsal, tiny)"),
    (lambda p: ["--profile", str(p / "missing.yaml")], "config file not found:"),
    (lambda p: ["--profile", str(p / "bad.yaml")], "malformed YAML in"),
    (lambda p: ["--profile", "tiny", "--set", "models.tiny.depth=3"], "unknown config key 'models.tiny.depth'"),
    (lambda p: ["--profile", "tiny", "--set", "seed=abc"], "config key 'seed' must be int"),
    (lambda p: ["--profile", str(p / "extra.yaml")], "unknown config key 'learning_rate'"),
])
@pytest.mark.parametrize("cmd", ["info", "reproduce"])
def test_cli_bad_config_is_one_line(tmp_path, polyalign_cli, make_args, expect, cmd):
    (tmp_path / "bad.yaml").write_text("profile: tiny\nseed: [1, 2\n")
    (tmp_path / "extra.yaml").write_text("profile: tiny\nlearning_rate: 0.1\n")
    extra = ["--out", str(tmp_path / "run")] if cmd == "reproduce" else []
    r = subprocess.run([*polyalign_cli, cmd, *make_args(tmp_path), *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("polyalign: error: ") and expect in lines[0], r.stderr
    assert not (tmp_path / "run").exists()           # nothing written for a config that does not validate


def test_malformed_yaml_names_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("profile: tiny\nseed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml at line \d+, column \d+"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("override, message", [
    ("generate.backend=tgi", "generate.backend must be hf or vllm"),
    ("generate.vllm_dtype=int8", "generate.vllm_dtype must be"),
    ("generate.vllm_data_parallel=-1", "generate.vllm_data_parallel must be >= 0"),
    ("generate.vllm_tensor_parallel_size=0", "must be >= 1"),
    ("generate.vllm_gpu_memory_utilization=1.5", "must lie in (0, 1]"),
])
def test_generate_config_is_validated(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        load_config("tiny", [override])
