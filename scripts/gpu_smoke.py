"""GPU smoke test: every GPU code path of the pipeline, in minutes, on the tiny checkpoints of a bundle.

Steps (each runs even when an earlier one failed; the report records its result, time, numbers and error text):

1. environment: versions, CUDA, bf16 support, and whether the bundle's wheels are the versions in effect;
2. Full-SFT and Bucket-SFT, 20 optimiser steps each under the precision policy (fp32 master weights, bf16 autocast
   where the GPU has it), interrupted after 10 steps and resumed from that checkpoint;
3. DPO and HDPO, 10 steps each from the SFT checkpoints, on pairs of the human answer and a made-up rejected answer;
4. HF generation of 128 test prompts with the Bucket-SFT checkpoint, half first and then all (the resume);
5. MAUVE featurisation and LM scoring on the GPU against the CPU;
6. vLLM generation through the package's own backend (`VLLMGenerator`), when vLLM is importable;
7. bundle coverage: every distribution the run imported is in the GPU image or in the bundle's wheels.

`--cpu` forces the CPU even where CUDA exists, in fp32, and compares CPU with CPU: a dry run of every code path.
Usage: `python scripts/gpu_smoke.py --bundle build/gpu-smoke --out report.json [--cpu]` (bundle:
`scripts/gpu_smoke_bundle.py`). Exit status 1 when a step failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

SFT_STEPS, RESUME_STEP, PREFERENCE_STEPS = 20, 10, 10
LANGUAGE = "en"  # the language the SFT and preference checkpoints are trained for
GENERATE_PROMPTS = 128
SCORE_TEXTS = 32
VLLM_PROMPTS = 8
REJECTED = {"en": "I am not sure.", "zh": "我不确定。"}  # the made-up rejected answer of every preference pair
FP32_REL_TOL = 1e-3  # fp32 on two devices: the same numbers up to summation order
MIN_CHANGED_SHARE = 0.5  # share of weights a training run must change (bf16-stored weights would lose most updates)


class Skip(Exception):
    "Raised by a step that does not apply here; the report records it as skipped with the message as the reason."


def new_report(bundle: str, mode: str) -> dict:
    "An empty report: what ran where, and one entry per step as `run_step` adds them."
    return {"bundle": str(bundle), "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ok": True,
            "seconds": 0.0, "steps": {}}


def run_step(report: dict, name: str, fn, *args) -> dict:
    """Run `fn(*args)` as step `name` and record it in `report`: ok, skipped, seconds, numbers, checks and error.
    `fn` returns a dict of numbers; its `checks` entry ({name: bool}) decides ok. An exception is recorded, not raised,
    so the other steps still run."""
    entry = {"ok": False, "skipped": None, "seconds": None, "numbers": {}, "checks": {}, "error": None}
    t0 = time.perf_counter()
    try:
        numbers = dict(fn(*args) or {})
        entry["checks"] = numbers.pop("checks", {})
        entry.update(ok=all(entry["checks"].values()), numbers=numbers)
    except Skip as e:
        entry.update(ok=True, skipped=str(e))
    except Exception as e:  # one failing step must not stop the others
        entry["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-8)}"
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    report["steps"][name] = entry
    report["ok"] = all(s["ok"] for s in report["steps"].values())
    return entry


def step_line(name: str, entry: dict) -> str:
    "One line per step for the console: status, seconds, failed checks or the error's first line."
    status = "skipped" if entry["skipped"] else ("ok" if entry["ok"] else "FAILED")
    failed = [k for k, v in entry["checks"].items() if not v]
    why = entry["skipped"] or (entry["error"] or "").split("\n", 1)[0] or (f"checks failed: {failed}" if failed else "")
    return f"{name:<18} {status:<7} {entry['seconds']:7.1f}s  {why}".rstrip()


def unmet_requirements(requirements, version_of) -> list[str]:
    "The requirements (strings) that `version_of(name)` (a version, or None when absent) does not meet."
    from packaging.requirements import Requirement
    from packaging.version import Version
    out = []
    for r in map(Requirement, requirements):
        v = version_of(r.name)
        if v is None: out.append(f"{r.name}: not installed (needs {r.specifier or 'any version'})")
        elif not r.specifier.contains(Version(v), prereleases=True): out.append(f"{r.name} {v}: needs {r.specifier}")
    return out


def installed_version(name: str) -> str | None:
    "The version of an installed distribution, None when it is absent."
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def changed_share(before: dict, after: dict) -> dict:
    """How much of a checkpoint training changed: the share of weight elements and of tensors that differ between two
    state dicts (name -> tensor), over the names both hold."""
    names = sorted(set(before) & set(after))
    if not names: raise ValueError("the two checkpoints share no weight names")
    diff = [before[n] != after[n] for n in names]  # torch promotes mixed dtypes before comparing
    total = sum(d.numel() for d in diff)
    return {"elements": round(sum(int(d.sum()) for d in diff) / total, 4),
            "tensors": round(sum(bool(d.any()) for d in diff) / len(diff), 4),
            "only_in_one": sorted(set(before) ^ set(after))}


def agreement(a, b) -> dict:
    """How closely two n x d arrays of the same quantity agree: the largest absolute difference, the largest per-column
    difference relative to the column's largest magnitude, and the smallest per-column correlation (NaN ignored)."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape: raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    if (both != (np.isfinite(a) | np.isfinite(b))).any():
        raise ValueError("NaN in one array where the other has a value")
    rel, corr = [], []
    for j in range(a.shape[1]):
        x, y = a[both[:, j], j], b[both[:, j], j]
        if not len(x): continue
        rel.append(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
        if len(x) > 2 and x.std() > 0 and y.std() > 0: corr.append(float(np.corrcoef(x, y)[0, 1]))
    return {"max_abs_diff": float(np.abs(a - b)[both].max()) if both.any() else 0.0,
            "max_rel_diff": max(rel, default=0.0), "min_corr": min(corr, default=1.0)}


@dataclass
class Smoke:
    "What every step reads: the bundle, a scratch folder for checkpoints and predictions, the run config, the mode."
    bundle: Path
    work: Path
    cfg: object  # polyalign.core.RunConfig
    cpu: bool

    @property
    def device(self) -> str:
        "The device compared with the CPU: cuda, or the CPU itself in `--cpu` mode."
        return "cpu" if self.cpu else "cuda"

    def model(self, name: str) -> str:
        "A bundled checkpoint: a chat family's policy, or `mauve-featurizer`."
        return str(self.bundle / "models" / name)

    def trained(self, method: str) -> str | None:
        "The final checkpoint of a method trained by an earlier step, or None when that step did not produce one."
        final = self.work / "checkpoints" / method / "final"
        return str(final) if (final / "config.json").is_file() else None

    def info(self) -> dict:
        "What the bundle script recorded: families, requirements, wheels, the image's packages."
        return json.loads((self.bundle / "bundle.json").read_text(encoding="utf-8"))

    def split(self, name: str):
        "A bundled split as `polyalign.data.read_split` returns it."
        from polyalign.data import read_split
        return read_split(self.bundle / "data" / f"{name}.parquet")


def load_smoke(bundle: Path, work: Path, cpu: bool) -> Smoke:
    "The bundle's run config with the run directory in `work` and bf16 autocast where the GPU supports it."
    import torch
    from polyalign.core import apply_overrides, load_config
    bf16 = not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cfg = apply_overrides(load_config(str(bundle / "config.yaml")), {"sft.bf16": bf16, "preference.bf16": bf16})
    return Smoke(bundle, work, replace(cfg, run_dir=str(work)), cpu)


def environment(s: Smoke) -> dict:
    "Versions, CUDA and bf16; the requirements this environment misses; the bundle's wheels in effect."
    import torch
    from polyalign.core import package_versions
    info = s.info()
    cuda = torch.cuda.is_available()
    stale = [f"{n}: {installed_version(n)} in effect, {w['version']} carried" for n, w in info["wheels"].items()
             if installed_version(n) != w["version"]]
    return {"versions": package_versions(("torch", "transformers", "trl", "datasets", "huggingface_hub", "accelerate",
                                          "peft", "tokenizers", "safetensors", "numpy", "pandas", "pyarrow")),
            "torch_cuda": torch.version.cuda, "cuda_available": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()), "bf16_autocast": s.cfg.sft.bf16,
            "unmet_requirements": unmet_requirements(info["requirements"], installed_version), "stale_wheels": stale,
            "checks": {"cuda_unless_cpu_mode": cuda or s.cpu, "bundle_wheels_in_effect": not stale}}


def stop_after(step: int):
    "A trainer callback that ends training after optimiser step `step` (what an interrupted run looks like)."
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step: control.should_training_stop = True

    return StopAfter()


def train_options(steps: int) -> dict:
    "Trainer options of a smoke training run: `steps` optimiser steps, a checkpoint every `RESUME_STEP`."
    return {"max_steps": steps, "save_steps": RESUME_STEP, "logging_steps": 5, "disable_tqdm": True}


def weights(path: str) -> dict:
    "The state dict of a saved checkpoint folder."
    from safetensors.torch import load_file
    return load_file(str(Path(path) / "model.safetensors"))


def training_numbers(trainer, res: dict, init: str) -> dict:
    "What a finished run tells about the policies: steps, loss, effective batch, precision, weights changed."
    args = trainer.args
    losses = [h["loss"] for h in res["history"]]
    return {"global_step": res["global_step"], "train_loss": res["train_loss"], "logged_losses": losses,
            "effective_batch": res["global_batch"], "per_device_batch": args.per_device_train_batch_size,
            "accumulation_steps": args.gradient_accumulation_steps, "world_size": res["world_size"],
            "bf16_autocast": bool(args.bf16), "device": str(args.device),
            "master_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}),
            "changed_share": changed_share(weights(init), weights(res["final"]))}


def sft(s: Smoke, method: str) -> dict:
    "Train `method` (full_sft or bucket_sft) for `SFT_STEPS`, stopped after `RESUME_STEP` and resumed."
    import math
    from dataclasses import asdict
    from polyalign.bucket_sft import SFT_OBJECTIVE, load_tokenizer, make_sft_trainer, sft_examples
    from polyalign.train import max_length_for, run_training
    base, out = s.model("chatml"), s.work / "checkpoints" / method
    dataset = sft_examples(s.cfg, load_tokenizer(base), s.split("train"), LANGUAGE, model="tiny")

    def train(stop: int | None):
        tr = make_sft_trainer(base, dataset, s.cfg.sft, out, **asdict(SFT_OBJECTIVE[method]), seed=s.cfg.seed,
                              max_length=max_length_for(s.cfg.sft, "tiny", LANGUAGE), **train_options(SFT_STEPS))
        if stop: tr.add_callback(stop_after(stop))
        return tr, run_training(tr, out, s.cfg.sft.examples_per_step, f"smoke/{method}")

    _, first = train(RESUME_STEP)
    trainer, res = train(None)
    numbers = training_numbers(trainer, res, base)
    resumed = Path(res["resumed_from"] or "").name
    numbers.update(examples=len(dataset), first_run_steps=first["global_step"], resumed_from=resumed)
    numbers["checks"] = {"stopped_at_resume_step": first["global_step"] == RESUME_STEP,
                         "resumed_from_checkpoint": resumed == f"checkpoint-{RESUME_STEP}",
                         "reached_all_steps": res["global_step"] == SFT_STEPS,
                         "loss_finite": math.isfinite(res["train_loss"]),
                         "fp32_master_weights": numbers["master_dtypes"] == ["torch.float32"],
                         "weights_changed": numbers["changed_share"]["elements"] >= MIN_CHANGED_SHARE}
    return numbers


def preference_pairs(s: Smoke, method: str, tok) -> list[dict]:
    """Pairs of the train split's human answer (chosen) and `REJECTED` (rejected), prompts fit to max_length, with the
    columns HDPO reads: made-up critic scores and Theorem 5's pair weights from them (DPO: zeros and ones)."""
    import numpy as np
    from polyalign.core import derive_seed
    from polyalign.data import renderer
    from polyalign.hdpo import HDPO_OBJECTIVE, PairWeightConfig, build_pairs, fit_pair_prompts, fit_pair_weights
    from polyalign.train import max_length_for
    train = s.split("train")
    recs = train[train.language == LANGUAGE].to_dict("records")
    render = renderer(s.cfg.data, tok)
    answers = [{"id": r["id"], "prediction": REJECTED[LANGUAGE]} for r in recs]
    pairs, _ = build_pairs(recs, answers, render, model_name="tiny")
    pairs, _, _ = fit_pair_prompts(pairs, recs, tok, render, max_length_for(s.cfg.preference, "tiny", LANGUAGE))
    n = len(pairs)
    if HDPO_OBJECTIVE[method]:  # the critic is not under test here: scores drawn with a seed stand in for its output
        rng = np.random.default_rng(derive_seed(s.cfg.seed, "gpu-smoke", method))
        sp, sm = rng.uniform(0, 1, n), rng.uniform(0, 2, n)
        w, _ = fit_pair_weights([p["bucket_id"] for p in pairs], [p["language"] for p in pairs], sp, sm,
                                [p["pair_type"] for p in pairs], PairWeightConfig.from_section(s.cfg.preference))
    else:
        sp = sm = np.zeros(n); w = np.ones(n)
    for p, a, b, wi in zip(pairs, sp, sm, w): p.update(s_plus=float(a), s_minus=float(b), weight=float(wi))
    return pairs


def preference(s: Smoke, method: str) -> dict:
    "Train `method` (dpo or hdpo) for `PREFERENCE_STEPS` from its SFT checkpoint (the base one if SFT failed)."
    import math
    from datasets import Dataset
    from polyalign.bucket_sft import load_tokenizer
    from polyalign.core import METHODS
    from polyalign.hdpo import HDPO_OBJECTIVE, make_preference_trainer
    from polyalign.train import max_length_for, run_training
    init = s.trained(METHODS[method].init) or s.model("chatml")
    pairs = preference_pairs(s, method, load_tokenizer(init))
    out = s.work / "checkpoints" / method
    tr = make_preference_trainer(init, Dataset.from_list(pairs), s.cfg.preference, out, hdpo=HDPO_OBJECTIVE[method],
                                 seed=s.cfg.seed, max_length=max_length_for(s.cfg.preference, "tiny", LANGUAGE),
                                 **train_options(PREFERENCE_STEPS))
    res = run_training(tr, out, s.cfg.preference.examples_per_step, f"smoke/{method}")
    numbers = {"init": Path(init).parent.name if s.trained(METHODS[method].init) else "base", "pairs": len(pairs),
               **training_numbers(tr, res, init)}
    numbers["checks"] = {"reached_all_steps": res["global_step"] == PREFERENCE_STEPS,
                         "loss_finite": math.isfinite(res["train_loss"]),
                         "fp32_master_weights": numbers["master_dtypes"] == ["torch.float32"],
                         "weights_changed": numbers["changed_share"]["elements"] >= MIN_CHANGED_SHARE}
    return numbers


def generation(s: Smoke) -> dict:
    """`GENERATE_PROMPTS` test prompts answered by the Bucket-SFT checkpoint (the base one if SFT failed): half, then
    all, so the second call resumes. The share that stopped at the end of turn is reported, not checked: a 20-step
    tiny model often runs to the token budget."""
    from polyalign.core import read_jsonl
    from polyalign.data import renderer
    from polyalign.generate import HFGenerator, generate
    ckpt = s.trained("bucket_sft") or s.model("chatml")
    gen = HFGenerator(ckpt, s.cfg.generate, seed=s.cfg.seed)
    recs = s.split("test").to_dict("records")[:GENERATE_PROMPTS]
    out, half = s.work / "predictions" / "bucket_sft.jsonl", len(recs) // 2
    kw = dict(model_name="tiny", render=renderer(s.cfg.data, gen.tok), batch_size=s.cfg.generate.batch_size,
              max_prompt_tokens=s.cfg.generate.max_prompt_tokens, progress=False)
    first = generate(gen, recs[:half], "bucket_sft", out, **kw)
    second = generate(gen, recs, "bucket_sft", out, **kw)
    rows = read_jsonl(out)
    ids = [r["id"] for r in rows]
    finish = Counter(r["finish_reason"] for r in rows)
    tokens = sum(r["completion_tokens"] for r in rows)
    seconds = first["seconds"] + second["seconds"]
    return {"checkpoint": Path(ckpt).parent.name if s.trained("bucket_sft") else "base", "prompts": len(recs),
            "device": str(gen.model.device), "dtype": str(gen.model.dtype), "batch_size": s.cfg.generate.batch_size,
            "max_new_tokens": s.cfg.generate.max_new_tokens, "completion_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None, "finish_reasons": dict(finish),
            "stop_share": round(finish["stop"] / len(rows), 3) if rows else None, "first_call": first,
            "second_call": second,
            "checks": {"each_id_once": sorted(ids) == sorted(str(r["id"]) for r in recs),
                       "resume_skipped_done": second["resumed_skipped"] == half,
                       "resume_generated_rest": second["generated"] + second["flagged_too_long"] == len(recs) - half}}


def scoring(s: Smoke) -> dict:
    """The MAUVE featuriser and the LM scorer (each bundled family's policy) on `SCORE_TEXTS` test answers, on the CPU
    in fp32 and on the GPU in fp32 and bf16 (the scorer's `auto` there); fp32 must agree across devices."""
    from polyalign.features import LMScorer, lm_prompts
    from polyalign.metrics import featurize_texts
    rows = s.split("test").iloc[:SCORE_TEXTS]
    texts, prompts, m, f = rows.human_answer.tolist(), lm_prompts(rows), s.cfg.metrics, s.cfg.features

    def embed(device):
        return featurize_texts(texts, s.model("mauve-featurizer"), pooling=m.mauve_pooling,
                               max_length=m.mauve_max_length, batch_size=m.mauve_batch_size, device=device)

    def score(family, device, dtype):
        scorer = LMScorer(s.model(family), device=device, dtype=dtype, max_length=f.lm_max_length,
                          batch_size=f.lm_batch_size, chunk_tokens=f.lm_chunk_tokens)
        return scorer.score(texts, prompts).values

    numbers = {"compared": f"cpu float32 vs {s.device}" + (" (dry run: the same device)" if s.cpu else ""),
               "texts": len(texts), "featurizer": agreement(embed("cpu"), embed(s.device)), "lm_scorer": {}}
    checks = {"featurizer_fp32": numbers["featurizer"]["max_rel_diff"] <= FP32_REL_TOL}
    for family in s.info()["families"]:
        ref = score(family, "cpu", "float32")
        got = {"float32": agreement(ref, score(family, s.device, "float32"))}
        if not s.cpu: got["bfloat16"] = agreement(ref, score(family, s.device, "bfloat16"))
        numbers["lm_scorer"][family] = got
        checks[f"lm_scorer_fp32_{family}"] = got["float32"]["max_rel_diff"] <= FP32_REL_TOL
    numbers["checks"] = checks
    return numbers


def vllm_generation(s: Smoke) -> dict:
    """`VLLM_PROMPTS` test prompts through the package's own vLLM backend (`VLLMGenerator` + `generate`: token-id
    prompts, stop ids from the chat template, per-request seeds) on the Bucket-SFT checkpoint (the base one if SFT
    failed)."""
    if s.cpu: raise Skip("--cpu mode: vLLM needs a GPU")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise Skip(f"vllm not importable: {e}") from None
    from dataclasses import replace
    from polyalign.core import read_jsonl
    from polyalign.data import renderer
    from polyalign.generate import VLLMGenerator, generate
    g = s.cfg.generate
    cfg = replace(g, backend="vllm", vllm_max_model_len=1024, vllm_gpu_memory_utilization=0.3,
                  max_prompt_tokens=min(g.max_prompt_tokens, 1024 - g.max_new_tokens))
    ckpt = s.trained("bucket_sft") or s.model("chatml")
    gen = VLLMGenerator(ckpt, cfg, seed=s.cfg.seed)
    recs = s.split("test").to_dict("records")[:VLLM_PROMPTS]
    out = s.work / "predictions" / "vllm-bucket_sft.jsonl"
    stats = generate(gen, recs, "bucket_sft", out, model_name="tiny", render=renderer(s.cfg.data, gen.tok),
                     batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens, progress=False)
    rows = read_jsonl(out)
    return {"prompts": len(recs), "stop_ids": gen.stop_ids, "completion_tokens": stats["completion_tokens"],
            "tokens_per_s": stats["tokens_per_s"], "finish_reasons": dict(Counter(r["finish_reason"] for r in rows)),
            "checks": {"every_prompt_answered": sorted(r["id"] for r in rows) == sorted(str(r["id"]) for r in recs),
                       "tokens_generated": stats["completion_tokens"] > 0}}


def imported_distributions() -> set[str]:
    "Canonical names of the installed distributions whose top-level modules this process has imported."
    from importlib.metadata import packages_distributions
    from packaging.utils import canonicalize_name
    owners = packages_distributions()
    tops = {name.split(".", 1)[0] for name in list(sys.modules)}
    return {canonicalize_name(d) for t in tops for d in owners.get(t, ())}


def uncovered(imported: set[str], image: set[str], carried: set[str]) -> list[str]:
    "The imported distributions that neither the GPU image nor the bundle provides (polyalign travels as source)."
    return sorted(imported - image - carried - {"polyalign"})


def coverage(s: Smoke) -> dict:
    "Every distribution the steps imported must be in the GPU image or among the bundle's wheels."
    info = s.info()
    missing = uncovered(imported_distributions(), set(info["image_packages"]), set(info["wheels"]))
    return {"uncovered": missing, "checks": {"every_import_provided": not missing}}


def write_report(report: dict, path: Path) -> None:
    "Atomically, so a run stopped mid-way leaves the steps it finished."
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def run(s: Smoke, out: Path, report: dict) -> dict:
    "Every step in order, the report rewritten after each."
    t0 = time.perf_counter()
    steps = [("environment", environment), ("full_sft", sft, "full_sft"), ("bucket_sft", sft, "bucket_sft"),
             ("dpo", preference, "dpo"), ("hdpo", preference, "hdpo"), ("generation", generation),
             ("scoring", scoring), ("vllm", vllm_generation), ("coverage", coverage)]
    for name, fn, *args in steps:
        print(step_line(name, run_step(report, name, fn, s, *args)), flush=True)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        write_report(report, out)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="build/gpu-smoke", help="the folder scripts/gpu_smoke_bundle.py wrote")
    ap.add_argument("--out", default="gpu-smoke-report.json", help="the JSON report")
    ap.add_argument("--cpu", action="store_true", help="force the CPU (fp32), comparing CPU with CPU: a dry run")
    ap.add_argument("--work", help="scratch folder for checkpoints and predictions (new or empty; default: temporary)")
    args = ap.parse_args(argv)
    bundle, out = Path(args.bundle), Path(args.out)
    if not (bundle / "bundle.json").is_file(): raise SystemExit(f"{bundle}: no bundle (run gpu_smoke_bundle.py)")
    if args.work and Path(args.work).exists() and any(Path(args.work).iterdir()):
        raise SystemExit(f"--work {args.work} is not empty: the resume checks need a fresh folder")
    # before torch is imported: offline, and (--cpu) no visible GPU
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")
    if args.cpu: os.environ["CUDA_VISIBLE_DEVICES"] = ""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(args.work or tmp)
        report = run(load_smoke(bundle, work, args.cpu), out, new_report(str(bundle), "cpu" if args.cpu else "cuda"))
    print(f"report {out}: {'ok' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
