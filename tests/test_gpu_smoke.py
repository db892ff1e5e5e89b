"""The pure helpers of the GPU smoke test's two scripts: which wheels travel, the bundle's checks, the step runner and
the report. The full `--cpu` run is `make gpu-smoke-cpu`, not a unit test."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bundle = _load("gpu_smoke_bundle")
smoke = _load("gpu_smoke")


# --- which wheels travel -------------------------------------------------------------------------------------------

def test_image_packages_builtin_list_and_freeze_file():
    image = bundle.image_packages()
    assert image["transformers"] == "5.17.0" and image["huggingface-hub"] == "1.33.0"
    assert "click" in image and image["click"] is None      # present there, version unknown
    assert "trl" not in image and "datasets" not in image
    freeze = "Foo_Bar==1.2\n# a comment\n-e git+https://example.org/x\nbaz @ file:///tmp/baz.whl\n\n"
    assert bundle.image_packages(freeze) == {"foo-bar": "1.2", "baz": None}


def test_root_requirements_takes_the_smoke_roots_from_settings():
    text = "[DEFAULT]\nrequirements = torch>=2.13 jieba>=0.42 trl==1.16.0 huggingface_hub>=2.4\nversion = 1\n"
    assert bundle.root_requirements(text, ("torch", "trl", "huggingface-hub")) == [
        "torch>=2.13", "trl==1.16.0", "huggingface_hub>=2.4"]
    with pytest.raises(ValueError, match="datasets"):
        bundle.root_requirements(text, ("torch", "datasets"))
    assert len(bundle.root_requirements((ROOT / "settings.ini").read_text())) == len(bundle.SMOKE_ROOTS)


def test_is_pure_needs_purelib_and_any_platform_tags():
    assert bundle.is_pure("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    assert bundle.is_pure("Root-Is-Purelib: true\nTag: py311-none-any\n")        # multiprocess: per Python, no ABI
    assert not bundle.is_pure("Root-Is-Purelib: false\nTag: cp311-cp311-manylinux_2_28_x86_64\n")
    assert not bundle.is_pure("Root-Is-Purelib: true\nTag: cp38-abi3-manylinux2014_x86_64\n")
    assert not bundle.is_pure(None)


def _dist(version, *requires, pure=True):
    return bundle.LocalDist(version, tuple(requires), pure)


def test_plan_wheels_carries_what_the_image_lacks_or_does_not_meet():
    local = {"a": _dist("2.1", "d>=1", "e; python_version < '3.11'", "f; python_version < '3.13'"),
             "b": _dist("1.0", "g"), "c": _dist("1.0", pure=False), "d": _dist("1.5"), "e": _dist("1.0"),
             "f": _dist("1.0"), "g": _dist("1.0"), "h": _dist("3.0"), "k": _dist("1.0"), "t": _dist("2.13", pure=False)}
    image = {"a": "1.0", "b": "1.0", "c": None, "h": None, "k": None, "t": "2.11"}
    plan = bundle.plan_wheels(["a>=2", "b", "c>=1", "h>=2", "k", "t>=2.13"], local, image)
    # a: too old there; d: a requirement of a carried package the image lacks; f: its marker holds on Python 3.12;
    # h: version there unknown while a requirement bounds it. Not: b (met), g (b's own), e (marker), k (unbounded)
    assert plan.carry == {"a": "2.1", "d": "1.5", "f": "1.0", "h": "3.0"}
    assert plan.reasons["a"] == "1.0 there; needs >=2" and plan.reasons["d"] == "not in the image"
    assert [p.split(" ", 1)[0] for p in plan.problems] == ["c", "t"]          # binary: reported, never carried
    assert "2.11 there; needs >=2.13" in plan.problems[1]


def test_plan_wheels_follows_requirements_until_nothing_new_travels():
    local = {"top": _dist("1.0", "mid>=2"), "mid": _dist("2.0", "leaf"), "leaf": _dist("0.1")}
    plan = bundle.plan_wheels(["top"], local, {"mid": "1.0"})
    assert plan.carry == {"top": "1.0", "mid": "2.0", "leaf": "0.1"}
    missing = bundle.plan_wheels(["top"], {"top": _dist("1.0", "ghost")}, {})
    assert missing.problems == ["ghost: not in the image, and it is not installed here"]


def test_wheel_key_normalises_the_name():
    assert bundle.wheel_key("typing_extensions-4.16.0-py3-none-any.whl") == ("typing-extensions", "4.16.0")
    assert bundle.wheel_key("multiprocess-0.70.19-py312-none-any.whl") == ("multiprocess", "0.70.19")


def test_download_wheels_keeps_cached_fetches_missing_and_drops_stale(tmp_path, monkeypatch):
    (tmp_path / "trl-1.16.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "trl-1.15.0-py3-none-any.whl").write_bytes(b"")           # another version: stale
    (tmp_path / "jieba-0.42.1-py3-none-any.whl").write_bytes(b"")         # not planned: stale
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / "dill-0.4.1-py3-none-any.whl").write_bytes(b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    wheels = bundle.download_wheels({"trl": "1.16.0", "dill": "0.4.1"}, tmp_path)
    assert [p.name for p in wheels] == ["dill-0.4.1-py3-none-any.whl", "trl-1.16.0-py3-none-any.whl"]
    (cmd,) = calls
    assert cmd[-1] == "dill==0.4.1" and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux_2_28_x86_64" in cmd
    calls.clear()
    bundle.download_wheels({"trl": "1.16.0", "dill": "0.4.1"}, tmp_path)
    assert calls == []                                                     # all cached: no download
    with pytest.raises(RuntimeError, match="peft==0.21.2"):                 # pip "succeeded" without the wheel
        bundle.download_wheels({"peft": "0.21.2"}, tmp_path)


# --- the bundle's contents -----------------------------------------------------------------------------------------

def test_smoke_config_makes_vllm_loadable_checkpoints():
    from polyalign.core import load_config
    cfg = load_config("tiny", bundle.CONFIG_OVERRIDES)
    assert bundle.head_dim(cfg.models.tiny) >= bundle.MIN_HEAD_DIM
    assert cfg.models.tiny.max_position_embeddings >= 1024                 # vLLM's max_model_len in the smoke test
    assert cfg.sft.examples_per_step > cfg.sft.per_device_batch_size       # gradient accumulation is exercised
    small = SimpleNamespace(models=SimpleNamespace(tiny=SimpleNamespace(hidden_size=64, num_attention_heads=2)))
    with pytest.raises(ValueError, match="head dim"):
        bundle.build_models(small, Path("unused"))


def test_sample_table_takes_rows_per_language_in_order():
    import pyarrow as pa
    table = pa.table({"id": [f"r{i}" for i in range(10)], "language": ["en", "zh"] * 5})
    got = bundle.sample_table(table, 2, seed=13, split="test")
    assert got.column("language").to_pylist().count("en") == 2 and got.num_rows == 4
    ids = got.column("id").to_pylist()
    assert ids == sorted(ids, key=lambda i: int(i[1:]))
    assert bundle.sample_table(table, 2, seed=13, split="test").equals(got)
    assert bundle.sample_table(table, 9, seed=13, split="test").num_rows == 10


def test_run_notes_give_the_install_and_run_lines(tmp_path):
    notes = bundle.run_notes("build/gpu-smoke", 28.8, bundle.WheelPlan(problems=["torch 2.13 (binary, not carried)"]))
    assert ("python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "
            "build/gpu-smoke/wheels/*.whl && export PYTHONPATH=/tmp/site:.") in notes
    assert "scripts/gpu_smoke.py --bundle build/gpu-smoke" in notes and "28.8 MiB" in notes
    assert "- torch 2.13 (binary, not carried)" in notes
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(SystemExit, match="not a smoke-test bundle"):
        bundle.check_out_dir(tmp_path)
    (tmp_path / "bundle.json").write_text("{}")
    bundle.check_out_dir(tmp_path)


def test_dir_size_counts_every_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"12345")
    (tmp_path / "y.bin").write_bytes(b"123")
    assert bundle.dir_size(tmp_path) == 8


# --- the step runner and the report --------------------------------------------------------------------------------

def _boom():
    raise ValueError("boom")


def test_run_step_records_a_failure_and_the_next_step_still_runs():
    report = smoke.new_report("b", "cpu")
    failed = smoke.run_step(report, "first", _boom)
    assert not failed["ok"] and failed["error"].startswith("ValueError: boom") and "_boom" in failed["error"]
    done = smoke.run_step(report, "second", lambda x: {"x": x, "checks": {"fine": True}}, 3)
    assert done == {"ok": True, "skipped": None, "seconds": done["seconds"], "numbers": {"x": 3},
                    "checks": {"fine": True}, "error": None}
    assert list(report["steps"]) == ["first", "second"] and report["ok"] is False


def test_run_step_failed_check_and_skip():
    report = smoke.new_report("b", "cuda")
    entry = smoke.run_step(report, "check", lambda: {"n": 1, "checks": {"resumed": False, "other": True}})
    assert not entry["ok"] and entry["error"] is None and entry["numbers"] == {"n": 1}
    assert "checks failed: ['resumed']" in smoke.step_line("check", entry)

    def skipped():
        raise smoke.Skip("vllm not importable")

    report = smoke.new_report("b", "cuda")
    entry = smoke.run_step(report, "vllm", skipped)
    assert entry["ok"] and entry["skipped"] == "vllm not importable" and report["ok"]
    assert smoke.step_line("vllm", entry).split()[:2] == ["vllm", "skipped"]


def test_write_report_is_json_with_every_step(tmp_path):
    report = smoke.new_report("build/gpu-smoke", "cpu")
    smoke.run_step(report, "one", lambda: {"tokens_per_s": 1.5, "path": Path("x")})
    out = tmp_path / "report.json"
    smoke.write_report(report, out)
    back = json.loads(out.read_text())
    assert back["mode"] == "cpu" and back["ok"] and back["steps"]["one"]["numbers"] == {"tokens_per_s": 1.5,
                                                                                          "path": "x"}
    assert set(back) == {"bundle", "mode", "started", "ok", "seconds", "steps"}
    assert not list(tmp_path.glob("*.tmp"))


def test_unmet_requirements():
    versions = {"torch": "2.11.0", "trl": "1.16.0", "numpy": "2.5.2"}
    assert smoke.unmet_requirements(["torch>=2.13", "trl==1.16.0", "numpy>=2.0", "datasets>=5.2"], versions.get) == [
        "torch 2.11.0: needs >=2.13", "datasets: not installed (needs >=5.2)"]
    assert smoke.unmet_requirements(["torch>=2.13"], {"torch": "2.13.0+cu130"}.get) == []


def test_changed_share_counts_elements_and_tensors():
    import torch
    before = {"a": torch.zeros(4), "b": torch.ones(2, 2), "only_before": torch.zeros(1)}
    after = {"a": torch.tensor([0.0, 1.0, 0.0, 0.0]), "b": torch.ones(2, 2), "only_after": torch.zeros(1)}
    assert smoke.changed_share(before, after) == {"elements": 0.125, "tensors": 0.5,
                                                  "only_in_one": ["only_after", "only_before"]}
    bf16 = {"a": torch.zeros(4, dtype=torch.bfloat16), "b": torch.ones(2, 2, dtype=torch.bfloat16)}
    assert smoke.changed_share(bf16, after)["elements"] == 0.125
    with pytest.raises(ValueError, match="share no weight names"):
        smoke.changed_share({"x": torch.zeros(1)}, {"y": torch.zeros(1)})


def test_agreement_of_two_arrays():
    import numpy as np
    a = np.array([[1.0, 10.0, np.nan], [2.0, 20.0, np.nan], [3.0, 30.0, 1.0], [4.0, 40.0, 1.0]])
    assert smoke.agreement(a, a) == {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "min_corr": 1.0}
    b = a.copy(); b[0, 1] = 14.0
    got = smoke.agreement(a, b)
    assert got["max_abs_diff"] == 4.0 and got["max_rel_diff"] == pytest.approx(0.1) and got["min_corr"] < 1
    c = a.copy(); c[0, 2] = 5.0
    with pytest.raises(ValueError, match="NaN in one array"):
        smoke.agreement(a, c)


def test_uncovered_imports():
    assert smoke.uncovered({"torch", "trl", "jieba", "polyalign"}, {"torch"}, {"trl"}) == ["jieba"]


def test_stop_after_ends_training_at_the_step():
    control = SimpleNamespace(should_training_stop=False)
    cb = smoke.stop_after(10)
    cb.on_step_end(None, SimpleNamespace(global_step=9), control)
    assert not control.should_training_stop
    cb.on_step_end(None, SimpleNamespace(global_step=10), control)
    assert control.should_training_stop
    assert smoke.train_options(20) == {"max_steps": 20, "save_steps": smoke.RESUME_STEP, "logging_steps": 5,
                                       "disable_tqdm": True}


def test_main_refuses_a_missing_bundle_or_a_used_work_folder(tmp_path):
    with pytest.raises(SystemExit, match="no bundle"):
        smoke.main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "r.json")])
    (tmp_path / "bundle.json").write_text("{}")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "old").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        smoke.main(["--bundle", str(tmp_path), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
