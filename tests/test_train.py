"""Training runs (`polyalign.train`): two launched CPU processes train exactly as one with the same global batch
(Bucket-SFT and HDPO, per-example columns on every rank), the global batch at any world size, fp32 master weights
against pure-bf16 Adam, a Gemma-like chat template, checkpoint pruning and resume, failing and overdue launches."""
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM

from polyalign.bucket_sft import (BucketSFTTrainer, load_tokenizer, make_sft_trainer, sft_arguments, sft_examples,
                                  train_method, trainer_arguments)
from polyalign.core import ConfigError, SFTStageConfig, TinyModelSpec, load_config, read_json, write_jsonl
from polyalign.data import accepts_system_role, render_messages, system_profile
from polyalign.hdpo import pair_dataset, pair_path, preference_arguments, train_preference
from polyalign.tiny import build_tiny
from polyalign.train import (LaunchError, TrainingGuard, TrainJob, check_global_batch, check_training_setup,
                             distributed_options, free_port, launch_command, launch_env, one_device, run_launched,
                             run_training, train_job, train_part)

SPEC = TinyModelSpec(corpus_sentences=80, vocab_size=600)
WEIGHTS = (0.5, 1.5, 3.0, 0.25)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("train") / "base", SPEC, seed=1)


def run_config(run_dir, processes, **extra):
    "A tiny-profile run whose sft and preference sections take 8 examples per step, 2 per device; gloo workers."
    over = [f"run_dir={run_dir}", f"launch.processes={processes}", "launch.backend=gloo"]
    for sec in ("sft", "preference"):
        over += [f"{sec}.per_device_batch_size=2", f"{sec}.examples_per_step=8", f"{sec}.max_length=64",
                 f"{sec}.logging_steps=1", f"{sec}.save_steps=1", f"{sec}.save_total_limit=0",
                 f"{sec}.keep_checkpoints=1", f"{sec}.learning_rate=1e-3", f"{sec}.warmup_ratio=0"]
    return load_config("tiny", over + [f"{k}={v}" for k, v in extra.items()])


def sft_rows(n=32):
    return [{"id": f"t{i}", "prompt": [{"role": "user", "content": f"question {i}?"}], "weight": WEIGHTS[i % 4],
             "completion": [{"role": "assistant", "content": "answer " * (1 + i % 5)}]} for i in range(n)]


def pair_rows(n=32):
    return [{"id": f"p{i}", "bucket_id": "en|x", "language": "en", "pair_type": "global",
             "prompt": [{"role": "user", "content": f"question {i}: what is {i}?"}],
             "chosen": [{"role": "assistant", "content": f"It is {i}."}],
             "rejected": [{"role": "assistant", "content": "I do not know " * (1 + i % 3)}],
             "weight": (0.5, 2.0, 1.0, 0.5)[i % 4], "s_plus": 0.1 * (i % 5), "s_minus": 1.0 + 0.2 * (i % 3)}
            for i in range(n)]


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory):
    "The same Bucket-SFT part, then the same HDPO part from its checkpoint: in this process, and in 2 launched ones."
    out, lines, gpus = {}, Lines(), os.environ.get("CUDA_VISIBLE_DEVICES")
    logging.getLogger("polyalign").addHandler(lines)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""   # CPU workers, also on a GPU host
    try:
        for procs in (1, 2):
            root = tmp_path_factory.mktemp(f"procs{procs}")
            shutil.copytree(base, root / "models" / "tiny")
            (root / "data").mkdir()
            (root / "data" / "train.parquet").write_text("stand-in for the train split (the parts' recorded input)")
            cfg = run_config(root, procs)
            t0 = time.perf_counter()
            _, sft = train_method(cfg, "tiny", "bucket_sft", "en", Dataset.from_list(sft_rows()))
            t1 = time.perf_counter()
            write_jsonl(pair_path(cfg, "tiny", "hdpo", "en"), pair_rows())
            _, pref = train_preference(cfg, "tiny", "hdpo", "en", pair_dataset(cfg, "tiny", "hdpo", "en"))
            t2 = time.perf_counter()
            print(f"\n{procs} process(es): Bucket-SFT part {t1 - t0:.1f} s, HDPO part {t2 - t1:.1f} s")
            out[procs] = SimpleNamespace(root=root, cfg=cfg, sft=sft, pref=pref, lines=lines.lines)
            lines.lines = []
    finally:
        logging.getLogger("polyalign").removeHandler(lines)
        if gpus is None: os.environ.pop("CUDA_VISIBLE_DEVICES")
        else: os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    return out


def losses(run, method):
    h = json.loads((run.root / "checkpoints" / "tiny" / f"{method}-en" / "loss_history.json").read_text())
    return [x["step"] for x in h], np.array([x["loss"] for x in h])


@pytest.mark.parametrize("method", ["bucket_sft", "hdpo"])
def test_two_launched_processes_train_as_one(runs, method):
    # 8 examples per step: 1 process x 2 per device x 4 accumulation steps, or 2 processes x 2 x 2. Accelerate's
    # seedable sampler gives every rank the same permutation and rank r takes micro-batches r, r+2, ..., so a step sees
    # the same examples; each micro-batch loss is a per-example mean, divided by the accumulation steps and averaged
    # over ranks: the same gradient, up to float summation order.
    (s1, l1), (s2, l2) = losses(runs[1], method), losses(runs[2], method)
    rel = float(np.abs(l1 - l2).max() / np.abs(l1).max())
    print(f"\n{method}: 1 process {np.round(l1, 6).tolist()}\n{method}: 2 processes {np.round(l2, 6).tolist()}; "
          f"max |diff| / max |loss| = {rel:.2e}")
    assert s1 == s2 == [1, 2, 3, 4]
    assert rel <= 1e-4
    assert l1[0] - l1[-1] > 0.1 * l1[0]   # the curve moves (lr 1e-3), so agreement is not trivial


@pytest.mark.parametrize("method,columns,rows", [("bucket_sft", ["weight"], sft_rows()),
                                                 ("hdpo", ["weight", "s_plus", "s_minus"], pair_rows())])
def test_every_rank_trained_with_the_per_example_columns(runs, method, columns, rows):
    res = read_json(runs[2].root / "checkpoints" / "tiny" / f"{method}-en" / "launch" / "result.json")
    assert (res["world_size"], res["global_batch"], len(res["columns_seen"])) == (2, 8, 2)
    for col in columns:
        counts = [rank[col][0] for rank in res["columns_seen"]]
        total = sum(rank[col][1] for rank in res["columns_seen"])
        assert counts == [16, 16], col                      # half the examples on each rank, one epoch
        assert total == pytest.approx(sum(r[col] for r in rows), rel=1e-6), col   # the values, not defaults


def test_launched_parts_record_what_in_process_parts_record(runs):
    for kind in ("sft", "pref"):
        one, two = getattr(runs[1], kind), getattr(runs[2], kind)
        assert set(one) == set(two)
        assert (list(one["outputs"]), one["rows"], one["global_step"]) == (list(two["outputs"]), two["rows"],
                                                                           two["global_step"])
        assert (one["world_size"], two["world_size"]) == (1, 2)
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


def test_worker_progress_reaches_the_parent_log(runs):
    assert any("sft/tiny/bucket_sft/en | step 4/4 loss=" in line for line in runs[2].lines)
    assert any("preference/tiny/hdpo/en | step 4/4 loss=" in line for line in runs[2].lines)
    assert any("global batch 8 = 2 per device x 2 processes x 2 accumulation steps" in line for line in runs[2].lines)
    assert any("global batch 8 = 2 per device x 1 processes x 4 accumulation steps" in line for line in runs[1].lines)


def test_checkpoints_beyond_keep_checkpoints_are_pruned(runs):
    # save_steps=1 and save_total_limit=0 kept checkpoint-1..4 while training; keep_checkpoints=1 leaves checkpoint-4
    for procs in (1, 2):
        for method in ("bucket_sft", "hdpo"):
            d = runs[procs].root / "checkpoints" / "tiny" / f"{method}-en"
            dirs = sorted(p.name for p in d.iterdir() if p.is_dir())
            assert dirs == ["checkpoint-4", "final"] + (["launch"] if procs == 2 else []), (procs, method)
    launch = runs[2].root / "checkpoints" / "tiny" / "bucket_sft-en" / "launch"
    assert sorted(p.name for p in launch.iterdir()) == ["config.yaml", "job.json", "result.json"]   # dataset removed


def test_a_rerun_resumes_from_the_newest_checkpoint(runs, tmp_path):
    run = runs[1]
    out = shutil.copytree(run.root / "checkpoints" / "tiny" / "bucket_sft-en", tmp_path / "bucket_sft-en")
    shutil.rmtree(out / "final")
    job = TrainJob("sft", "tiny", "bucket_sft", "en", init=str(run.root / "models" / "tiny"), output_dir=str(out))
    res = train_job(run.cfg, job, Dataset.from_list(sft_rows()))
    assert Path(res["resumed_from"]).name == "checkpoint-4" and res["global_step"] == 4
    assert (out / "final" / "config.json").is_file()


BATCH_SCRIPT = """
import json, os, sys
from polyalign.bucket_sft import sft_arguments
from polyalign.core import load_config
from polyalign.hdpo import preference_arguments
from polyalign.train import check_global_batch
paper = load_config("paper")
a = sft_arguments(paper.sft, sys.argv[1], seed=0, weighted=True)
b = preference_arguments(paper.preference, sys.argv[1], seed=0, hdpo=True)
row = {"world": a.world_size, "sft": check_global_batch(a, 64, "sft"),
       "preference": check_global_batch(b, 64, "preference"),
       "accumulation": [a.gradient_accumulation_steps, b.gradient_accumulation_steps]}
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f: json.dump(row, f)
"""


def test_the_paper_global_batch_is_64_at_any_world_size(tmp_path, monkeypatch):
    paper = load_config("paper")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # 1 process: this one
    a = sft_arguments(paper.sft, tmp_path, seed=0, weighted=True)
    b = preference_arguments(paper.preference, tmp_path, seed=0, hdpo=True)
    assert (check_global_batch(a, 64, "sft"), check_global_batch(b, 64, "preference")) == (64, 64)
    assert (a.world_size, a.gradient_accumulation_steps, b.gradient_accumulation_steps) == (1, 16, 32)
    # 2 processes: two real workers (torchrun, gloo) build the same arguments from the real world size
    script = tmp_path / "batch.py"
    script.write_text(BATCH_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", str(script), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=launch_env(cuda=False))
    # one file per worker: two processes printing to one stdout can interleave their lines
    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert done.returncode == 0 and len(rows) == 2, done.stderr[-2000:]
    assert rows[0] == rows[1] == {"world": 2, "sft": 64, "preference": 64, "accumulation": [8, 16]}
    # 8 processes: configuration arithmetic
    for name, args in (("sft", sft_arguments(paper.sft, tmp_path, seed=0, weighted=True, world=8)),
                       ("preference", preference_arguments(paper.preference, tmp_path, seed=0, hdpo=True, world=8))):
        assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 64, name
        assert check_global_batch(args, 64, name, world=8) == 64


def test_a_global_batch_mismatch_is_a_clear_error(base, tmp_path):
    paper = load_config("paper")
    args = sft_arguments(paper.sft, tmp_path, seed=0, weighted=True, world=1)       # 4 x 1 x 16
    with pytest.raises(ConfigError, match=r"4 per device x 2 processes x 16 accumulation steps = 128 examples per "
                                          r"optimiser step, but the config's examples_per_step is 64"):
        check_global_batch(args, 64, "sft", world=2)
    with pytest.raises(ConfigError, match=r"sft.examples_per_step=64 is not a multiple of per_device_batch_size x "
                                          r"processes = 3 x 1"):
        sft_arguments(replace(paper.sft, per_device_batch_size=3), tmp_path, seed=0, weighted=True, world=1)
    cfg = run_config(tmp_path, 3)                     # 8 examples per step do not split over 3 x 2
    job = TrainJob("sft", "tiny", "bucket_sft", "en", init=str(base), output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="sft.examples_per_step=8 is not a multiple"):
        train_part(cfg, job, Dataset.from_list(sft_rows(8)))
    assert not (tmp_path / "out").exists()            # refused before anything was written or launched


def test_never_data_parallel(base, tmp_path):
    tr = make_sft_trainer(base, Dataset.from_list(sft_rows(8)), SFTStageConfig(per_device_batch_size=2,
                          examples_per_step=8, max_length=64), tmp_path, weighted=True, seed=0)
    assert tr.args.n_gpu <= 1 and not isinstance(tr.model_wrapped, torch.nn.DataParallel)
    tr.args._n_gpu = 2                               # as a process that sees two GPUs
    with pytest.raises(ConfigError, match="set launch.processes=2"):
        check_training_setup(tr, 8, "sft")
    assert one_device(tr.args).n_gpu == 1            # what trainer_arguments does to every config
    tr.model_wrapped = torch.nn.DataParallel(tr.model)
    with pytest.raises(RuntimeError, match="nn.DataParallel"):
        TrainingGuard(tr).on_train_begin(tr.args, tr.state, tr.control)


def _share_changed(trainer, train) -> float:
    before = {k: p.detach().clone() for k, p in trainer.model.named_parameters()}
    train()
    after = dict(trainer.model.named_parameters())
    return sum(int((after[k].detach() != v).sum()) for k, v in before.items()) / sum(v.numel() for v in before.values())


def test_fp32_master_weights_keep_the_small_updates_pure_bf16_loses(tmp_path):
    model = build_tiny(tmp_path / "m", TinyModelSpec(), seed=3)      # the tiny profile's model: 271k parameters
    sec = SFTStageConfig(per_device_batch_size=4, examples_per_step=4, learning_rate=5e-7, lr_scheduler_type="constant",
                         warmup_ratio=0.0, bf16=True, max_length=64, save_steps=1000)
    ds = Dataset.from_list(sft_rows(4))
    policy = make_sft_trainer(model, ds, sec, tmp_path / "fp32", weighted=True, seed=0)
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32} and policy.args.bf16
    fp32 = _share_changed(policy, lambda: run_training(policy, tmp_path / "fp32", 4, "sft"))
    pure = BucketSFTTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16),
                            args=sft_arguments(sec, tmp_path / "bf16", seed=0, weighted=True), train_dataset=ds,
                            processing_class=load_tokenizer(model))
    with pytest.raises(ConfigError, match="master weights must be fp32"):
        check_training_setup(pure, 4, "sft")          # what the package refuses to run
    bf16 = _share_changed(pure, pure.train)
    n = sum(p.numel() for p in policy.model.parameters())
    print(f"\none AdamW step at lr 5e-7 on {n} parameters: fp32 master weights + bf16 autocast change {fp32:.1%}, "
          f"pure bf16 weights and Adam state change {bf16:.1%}")
    assert policy.state.global_step == pure.state.global_step == 1
    assert fp32 > 0.9 and bf16 < 0.05


def _record(i):
    return {"id": f"en{i}", "language": "en", "track": "single", "family": "qa", "style_bucket": "qa_search",
            "length_bin": "short", "bucket_id": f"en|single|qa|{'short' if i < 6 else 'long'}",
            "question": f"Question {i}?", "context": "word " * 5, "human_answer": f"Answer number {i}.",
            "dialogue_history": []}


def test_a_gemma_like_template_gets_the_system_text_folded_and_trains(tmp_path):
    model = build_tiny(tmp_path / "models" / "tiny", SPEC, seed=2, family="gemma2")
    cfg = run_config(tmp_path, 1, **{"sft.per_device_batch_size": 4, "sft.examples_per_step": 4,
                                     "sft.max_length": 128, "sft.keep_checkpoints": 0})
    tok = load_tokenizer(model)
    assert not accepts_system_role(tok)
    train = pd.DataFrame([_record(i) for i in range(8)])
    rec = train.iloc[0].to_dict()
    with pytest.raises(Exception, match="(?i)system"):   # the unfolded messages do not render
        tok.apply_chat_template(render_messages(rec, cfg.data), tokenize=False, add_generation_prompt=True)
    ds = sft_examples(cfg, tok, train, "en", model="tiny")
    prompt = ds["prompt"][0]
    system = system_profile(rec, cfg.data)
    assert [m["role"] for m in prompt] == ["user"] and prompt[0]["content"].startswith(system + "\n\n")
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert system in text and "Question 0?" in text
    (tmp_path / "data").mkdir()
    train.to_parquet(tmp_path / "data" / "train.parquet")
    _, done = train_method(cfg, "tiny", "bucket_sft", "en", ds)
    hist = json.loads((tmp_path / "checkpoints" / "tiny" / "bucket_sft-en" / "loss_history.json").read_text())
    assert (done["status"], done["global_step"], done["rows"]["out"]) == ("done", 2, 8)
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)


def test_a_failing_launched_job_raises_with_the_workers_error(base, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")   # CPU workers, also on a GPU host
    shutil.copytree(base, tmp_path / "models" / "tiny")
    cfg = run_config(tmp_path, 2, **{"launch.launcher": "torchrun"})
    job = TrainJob("sft", "tiny", "bucket_sft", "en", init=str(tmp_path / "models" / "tiny"),
                   output_dir=str(tmp_path / "out"))
    t0 = time.perf_counter()
    with pytest.raises(LaunchError, match="the train dataset has no 'weight' column") as err:
        train_part(cfg, job, Dataset.from_list(sft_rows(8)).remove_columns("weight"))
    msg = str(err.value)
    print(f"\nfailed launch reported after {time.perf_counter() - t0:.1f} s:\n{msg[:600]}")
    assert "the launched training failed (exit code" in msg and "--- first worker error (error-rank" in msg
    assert "--- last lines of stderr ---" in msg


def test_a_launch_past_its_time_limit_is_stopped():
    t0 = time.perf_counter()
    with pytest.raises(LaunchError, match="time limit"):
        run_launched([sys.executable, "-c", "import time; print('working', flush=True); time.sleep(60)"], timeout_s=2)
    assert time.perf_counter() - t0 < 30


def test_the_paper_launch_uses_the_shipped_accelerate_and_deepspeed_configs(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    paper = load_config("paper")
    cmd = launch_command(paper.launch, tmp_path / "job.json", port=29999)
    acc = Path(cmd[cmd.index("--config_file") + 1])
    assert (acc.name, cmd[cmd.index("--num_processes") + 1], cmd[cmd.index("--main_process_port") + 1]) == \
        ("accelerate.yaml", "8", "29999")
    assert cmd[-3:] == ["-m", "polyalign.train", str(tmp_path / "job.json")]
    assert load_config_from_file(str(acc)).distributed_type == "MULTI_GPU"
    assert "main_training_function" not in yaml.safe_load(acc.read_text())
    opts = distributed_options(paper.launch)
    ds = json.loads(Path(opts["deepspeed"]).read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] is False
    built = {}
    trainer_arguments(lambda **kw: built.update(kw) or SimpleNamespace(n_gpu=1), paper.sft, tmp_path, name="sft",
                      seed=0, world=8, **opts)      # the TRL config receives them (DeepSpeed need not be installed)
    assert (built["deepspeed"], built["ddp_backend"], built["bf16"], built["gradient_accumulation_steps"]) == \
        (opts["deepspeed"], "nccl" if torch.cuda.is_available() else "gloo", True, 2)
    torchrun = launch_command(replace(paper.launch, launcher="torchrun"), "j.json", port=7)
    assert torchrun[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=8" in torchrun
