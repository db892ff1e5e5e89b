"""HF backend throughput: generated tokens per second for the tiny model at batch 1 and 16 (paper decoding)."""
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def main() -> Path:
    import torch
    from polyalign.core import GenerateConfig, TinyModelSpec
    from polyalign.generate import HFGenerator, Prompt, plain_prompt
    from polyalign.tiny import build_tiny

    d = build_tiny(Path(tempfile.mkdtemp()) / "m", TinyModelSpec(), seed=0)
    gen = GenerateConfig(max_new_tokens=64)
    g = HFGenerator(d, gen, seed=0)
    # force full-length completions so every row generates max_new_tokens tokens
    g.stop_ids = [-1]
    recs = [{"id": f"b{i}", "language": "en", "question": f"Explain topic number {i} briefly, please. 请简要解释。",
             "context": "", "dialogue_history": []} for i in range(64)]
    prompts = [Prompt(r["id"], plain_prompt(r), g.count(plain_prompt(r)), False, True) for r in recs]
    rows = []
    for bs in (1, 16):
        g(prompts[:bs])                                       # warm-up
        n = 16 if bs == 1 else 64
        t0, toks = time.perf_counter(), 0
        for s in range(0, n, bs):
            toks += sum(o["completion_tokens"] for o in g(prompts[s:s + bs]))
        dt = time.perf_counter() - t0
        rows.append((bs, n, toks, dt))
    out = HERE / "generate.md"
    out.write_text("\n".join([
        "# Generation throughput (HF backend)", "",
        f"Tiny Qwen2 model, paper decoding (temperature 0.1, top-p 0.9, repetition 1.1, frequency 0.1, presence 0), "
        f"{gen.max_new_tokens} new tokens per prompt, stop tokens disabled; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads).", "",
        "| batch | prompts | generated tokens | seconds | tokens/s |", "|---|---|---|---|---|",
        *[f"| {bs} | {n} | {t} | {dt:.2f} | {t / dt:,.0f} |" for bs, n, t, dt in rows], ""]), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
