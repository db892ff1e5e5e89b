"""HDPOTrainer vs stock DPOTrainer: median step time on identical batches of the tiny model, with and without
precomputed reference log-probs (same process, alternating runs)."""
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
    from trl import DPOConfig, DPOTrainer

    from polyalign.core import TinyModelSpec
    from polyalign.tiny import build_tiny
    from polyalign.hdpo import PAIR_COLUMNS, HDPOConfig, HDPOTrainer

    tmp = Path(tempfile.mkdtemp())
    d = build_tiny(tmp / "m", TinyModelSpec(), seed=0)
    tok = AutoTokenizer.from_pretrained(d)
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: what happened next? 然后呢？"}],
             "chosen": [{"role": "assistant", "content": ("A human answer of a few words. " * (1 + i % 3)).strip()}],
             "rejected": [{"role": "assistant", "content": ("The model answer is longer and generic. " * (2 + i % 2)).strip()}],
             "weight": 0.5 + i % 3, "s_plus": 0.1, "s_minus": 0.9} for i in range(STEPS * 8)]
    ds = Dataset.from_list(rows)
    results = {}
    for precompute in (False, True):
        common = dict(per_device_train_batch_size=8, max_steps=STEPS, learning_rate=1e-5, report_to=[], max_length=128,
                      use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0, data_seed=0, logging_steps=1000,
                      beta=0.1, precompute_ref_log_probs=precompute)
        ref = lambda: None if precompute else AutoModelForCausalLM.from_pretrained(d)
        make = {
            "DPOTrainer": lambda cb: DPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=ref(),
                                                args=DPOConfig(output_dir=str(tmp / "d"), loss_type=["sigmoid"], **common),
                                                train_dataset=ds.remove_columns(list(PAIR_COLUMNS)),
                                                processing_class=tok, callbacks=cb),
            "HDPOTrainer": lambda cb: HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=ref(),
                                                  args=HDPOConfig(output_dir=str(tmp / "h"), **common),
                                                  train_dataset=ds, processing_class=tok, callbacks=cb)}
        results[precompute] = medians(abba_step_times(make, ROUNDS))
    out = HERE / "hdpo.md"
    lines = ["# HDPO step time", "",
             f"Tiny Qwen2 model, batch 8 pairs, max_length 128, {STEPS} steps per run, {ROUNDS} runs per trainer in ABBA order, "
             f"first step of each run excluded; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads).", "",
             "| reference | DPOTrainer s/step | HDPOTrainer s/step | ratio HDPO/DPO |", "|---|---|---|---|"]
    for pre, m in results.items():
        lines.append(f"| {'precomputed log-probs' if pre else 'frozen reference model'} | {m['DPOTrainer']:.4f} | "
                     f"{m['HDPOTrainer']:.4f} | {m['HDPOTrainer'] / m['DPOTrainer']:.3f} |")
    lines += ["", "Target ≤ 1.03 (the paper's HDPO/DPO policy wall-time ratio is 15h05/14h20 ≈ 1.05).", ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
