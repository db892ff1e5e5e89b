"""Foundation benchmarks: tiny checkpoint build, one training step, atomic JSONL/parquet IO, manifest hashing."""
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def _time(fn, repeat=5):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main() -> Path:
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM

    from polyalign.tiny import build_tiny
    from polyalign.core import TinyModelSpec, append_jsonl, file_hash, read_jsonl, write_jsonl, write_parquet

    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter(); build_tiny(d / "tiny", TinyModelSpec(), seed=0); build_s = time.perf_counter() - t0
        rows.append(("build tiny tokenizer + model (default spec)", f"{build_s:.2f} s", "once"))
        m = AutoModelForCausalLM.from_pretrained(d / "tiny").train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        x = torch.randint(0, m.config.vocab_size, (8, 128))

        def step():
            loss = m(input_ids=x, labels=x).loss; loss.backward(); opt.step(); opt.zero_grad()
        step()
        med, best = _time(step, 10)
        rows.append(("train step, batch 8 x 128 tokens (fwd+bwd+AdamW)", f"{med * 1000:.0f} ms", f"best {best * 1000:.0f} ms of 10"))
        data = [{"id": f"ex-{i:06d}", "text": "some text 一些文字 " * 8, "n": i} for i in range(100_000)]
        med, _ = _time(lambda: write_jsonl(d / "a.jsonl", data), 3)
        rows.append(("atomic write_jsonl, 100k rows", f"{med:.2f} s", f"{100_000 / med:,.0f} rows/s"))
        med, _ = _time(lambda: read_jsonl(d / "a.jsonl"), 3)
        rows.append(("read_jsonl, 100k rows", f"{med:.2f} s", f"{100_000 / med:,.0f} rows/s"))
        med, _ = _time(lambda: append_jsonl(d / "b.jsonl", data[:2000]), 1)
        rows.append(("append_jsonl with fsync per row, 2k rows", f"{med:.2f} s", f"{2000 / med:,.0f} rows/s"))
        df = pd.DataFrame(data)
        med, _ = _time(lambda: write_parquet(d / "a.parquet", df), 3)
        rows.append(("atomic write_parquet, 100k rows", f"{med:.2f} s", ""))
        med, _ = _time(lambda: file_hash(d / "a.jsonl"), 3)
        size = (d / "a.jsonl").stat().st_size / 2**20
        rows.append(("file_hash (sha256)", f"{med * 1000:.0f} ms", f"{size:.0f} MiB, {size / med:,.0f} MiB/s"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = HERE / "core.md"
    lines = ["# Foundation benchmarks", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
             f"peak RSS of the benchmark process {peak:.0f} MiB. Medians unless stated.", "",
             "| what | time | note |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
