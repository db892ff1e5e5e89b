"""Bucket-SFT vs stock SFTTrainer: median step time on identical batches of the tiny model (same process)."""
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _steptime import abba_step_times, medians  # noqa: E402
STEPS, ROUNDS = 40, 4


def main() -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from polyalign.bucket_sft import BucketSFTConfig, BucketSFTTrainer
    from polyalign.core import TinyModelSpec
    from polyalign.tiny import build_tiny

    tmp = Path(tempfile.mkdtemp())
    model_dir = build_tiny(tmp / "m", TinyModelSpec(), seed=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    answer = "The answer is a sentence of moderate length. "
    rows = [{"prompt": [{"role": "system", "content": "en|single|qa|medium"},
                        {"role": "user", "content": f"Question {i}: explain the idea number {i} in a few words. 请解释。"}],
             "completion": [{"role": "assistant", "content": (answer * (1 + i % 4)).strip()}],
             "weight": 0.5 + (i % 3)} for i in range(STEPS * 8)]
    ds = Dataset.from_list(rows)
    common = dict(per_device_train_batch_size=8, max_steps=STEPS, learning_rate=1e-4, report_to=[], max_length=128,
                  use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0, data_seed=0, logging_steps=1000)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir)
    args = lambda cls, name: cls(output_dir=str(tmp / name), **common)   # fresh arguments per run
    make = {
        "SFTTrainer (Full-SFT)": lambda cb: SFTTrainer(model=load(), args=args(SFTConfig, "s"), processing_class=tok,
                                                       train_dataset=ds.remove_columns("weight"), callbacks=cb),
        "BucketSFTTrainer": lambda cb: BucketSFTTrainer(model=load(), args=args(BucketSFTConfig, "b"), train_dataset=ds,
                                                        processing_class=tok, callbacks=cb)}
    med = abba_step_times(make, ROUNDS)
    m = medians(med)
    ratio = m["BucketSFTTrainer"] / m["SFTTrainer (Full-SFT)"]
    out = HERE / "bucket_sft.md"
    out.write_text("\n".join([
        "# Bucket-SFT step time", "",
        f"Tiny Qwen2 model ({sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters()):,} parameters), "
        f"batch 8, max_length 128, {STEPS} steps per run, {ROUNDS} runs per trainer in ABBA order, first step of each run excluded; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads).", "",
        "| trainer | median s/step | steps timed |", "|---|---|---|",
        *[f"| {k} | {m[k]:.4f} | {len(med[k])} |" for k in med], "",
        f"**Ratio Bucket-SFT / Full-SFT: {ratio:.3f}** (target ≤ 1.03; the paper's own wall-time ratio is 6h05/5h35 ≈ 1.09).", ""]),
        encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
