"""HF backend throughput: generated tokens per second for the tiny model at batch 1 and 16 (paper decoding), and at
batch 16 with length-sorted batches against input order, on prompts and answers of mixed lengths."""
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def _records(n: int, seed: int = 0) -> list[dict]:
    "Questions with contexts of 0 to 180 words, in shuffled order (a test split is not sorted by length)."
    rng = random.Random(seed)
    words = "the river runs past an old mill where people meet to talk about the weather and the harvest".split()
    return [{"id": f"b{i}", "language": "en", "question": f"Explain topic number {i} briefly, please.",
             "context": " ".join(rng.choice(words) for _ in range(rng.choice([0, 10, 40, 100, 180]))),
             "dialogue_history": [], "style_bucket": "qa_search"} for i in range(n)]


def _throughput(g, recs, out: Path, sort: bool) -> tuple[float, int, float, list[int]]:
    "(tokens/s, generated tokens, padding share of the prompt tensor, answer lengths) of one `generate` run."
    from polyalign.core import read_jsonl
    from polyalign.generate import encode_prompts, generate, plain_prompt
    prompts = encode_prompts(g, recs, plain_prompt, 3840)
    order = sorted(prompts, key=lambda p: -len(p.ids)) if sort else prompts
    batches = [order[s:s + 16] for s in range(0, len(order), 16)]
    pad = sum(len(b) * max(len(p.ids) for p in b) - sum(len(p.ids) for p in b) for b in batches)
    pad_share = pad / sum(len(b) * max(len(p.ids) for p in b) for b in batches)
    out.unlink(missing_ok=True)
    s = generate(g, recs, "base_lm", out, model_name="tiny", batch_size=16, progress=False, sort_by_length=sort)
    return s["tokens_per_s"], s["completion_tokens"], pad_share, sorted(r["completion_tokens"] for r in read_jsonl(out))


def main() -> Path:
    import torch
    from polyalign.core import GenerateConfig, TinyModelSpec
    from polyalign.generate import HFGenerator, encode_prompts, plain_prompt
    from polyalign.tiny import build_tiny

    tmp = Path(tempfile.mkdtemp())
    d = build_tiny(tmp / "m", TinyModelSpec(), seed=0)
    gen = GenerateConfig(max_new_tokens=64)
    g = HFGenerator(d, gen, seed=0)
    g.stop_ids, g.model.generation_config.eos_token_id = [], None   # every row generates max_new_tokens tokens
    recs = _records(64)
    prompts = encode_prompts(g, recs, plain_prompt, 3840)
    rows = []
    for bs in (1, 16):
        g(prompts[:bs])                                       # warm-up
        n = 16 if bs == 1 else 64
        t0, toks = time.perf_counter(), 0
        for s in range(0, n, bs):
            toks += sum(o["completion_tokens"] for o in g(prompts[s:s + bs]))
        rows.append((bs, n, toks, time.perf_counter() - t0))
    # answers of mixed lengths: 100 random token ids end a row (the random model's next token is close to uniform
    # over the 3,072 ids, so a row stops after about 30 tokens, geometrically spread)
    g.stop_ids = sorted(random.Random(1).sample(range(len(g.tok)), 100))
    sorted_runs = {True: [], False: []}
    for _ in range(2):                                        # interleaved, so load drift hits both alike
        for sort in (False, True):
            sorted_runs[sort].append(_throughput(g, recs, tmp / "p.jsonl", sort))
    best = {k: max(v) for k, v in sorted_runs.items()}
    lens = best[True][3]
    load = os.getloadavg()[0]
    out = HERE / "generate.md"
    out.write_text("\n".join([
        "# Generation throughput (HF backend)", "",
        f"Tiny Qwen2 model, paper decoding (temperature 0.1, top-p 0.9, repetition 1.1, frequency 0.1, presence 0), "
        f"{gen.max_new_tokens} new tokens per prompt; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load:.1f}.", "",
        "Stop tokens disabled (every row generates the full budget):", "",
        "| batch | prompts | generated tokens | seconds | tokens/s |", "|---|---|---|---|---|",
        *[f"| {bs} | {n} | {t} | {dt:.2f} | {t / dt:,.0f} |" for bs, n, t, dt in rows], "",
        "Batch 16, 64 prompts with contexts of 0 to 180 words in shuffled order; 100 random token ids end a row, so "
        f"answers have mixed lengths (min / median / max {lens[0]} / {lens[len(lens) // 2]} / {lens[-1]} tokens). "
        "`generate` with `sort_by_length` (the default: batches of similar prompt length, longest first) against "
        "input order; best of two interleaved runs each:", "",
        "| batches | tokens/s | generated tokens | padding share of the prompt tensor |", "|---|---|---|---|",
        *[f"| {'length-sorted' if k else 'input order'} | {v[0]:,.0f} | {v[1]} | {v[2]:.0%} |"
          for k, v in sorted(best.items(), reverse=True)], "",
        f"Sorted / unsorted tokens/s: {best[True][0] / best[False][0]:.2f}x.", ""]), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
