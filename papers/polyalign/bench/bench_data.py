"""Data benchmark: normalise + length/bucket + exact dedup (leakage guard) + MinHash near-dup over 700k synthetic records."""
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N = int(os.environ.get("POLYALIGN_BENCH_DATA_N", "700000"))


def synthetic_raw(n: int, seed: int = 0) -> list[dict]:
    "Raw-ish records (untidy whitespace, ~5% exact copies in other splits, ~1% near copies), 85% en / 15% zh."
    from polyalign.data import _EN_WORDS, _ZH_CHARS
    rng = random.Random(seed)
    words, chars = list(_EN_WORDS), list(_ZH_CHARS)
    out = []
    for i in range(n):
        r = rng.random()
        if out and r < 0.05:
            src = out[rng.randrange(len(out))]
            out.append({**src, "id": f"r{i}", "split": rng.choice(("train", "val", "test")), "question": "  " + src["question"].upper()})
            continue
        if out and r < 0.06:
            src = out[rng.randrange(len(out))]
            out.append({**src, "id": f"r{i}", "split": rng.choice(("train", "val", "test")), "human_answer": src["human_answer"] + " ok"})
            continue
        zh = rng.random() < 0.15
        if zh:
            q = "".join(rng.choices(chars, k=rng.randint(6, 20))) + "？"
            a = "".join(rng.choices(chars, k=rng.choice((20, 60, 150, 300)))) + "。"
        else:
            q = " ".join(rng.choices(words, k=rng.randint(5, 14))) + " ?"
            a = "  ".join(rng.choices(words, k=rng.choice((15, 60, 150, 260)))) + " .\r\n"
        out.append({"id": f"r{i}", "dataset": "dolly" if rng.random() < 0.5 else "natural_questions",
                    "split": rng.choices(("train", "val", "test"), (0.85, 0.075, 0.075))[0], "language": "zh" if zh else "en",
                    "track": "single", "family": "qa", "style_bucket": "qa_search", "question": q, "context": "",
                    "dialogue_history": [], "human_answer": a})
    return out


def main() -> Path:
    from polyalign.core import DataConfig
    from polyalign.data import answer_length, bucket_key, dedup_records, near_duplicates, normalize_text
    cfg = DataConfig()
    t0 = time.perf_counter(); recs = synthetic_raw(N); gen_s = time.perf_counter() - t0
    rss_gen = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows, t_all = [], time.perf_counter()
    t0 = time.perf_counter()
    for r in recs:
        r["question"], r["human_answer"] = normalize_text(r["question"]), normalize_text(r["human_answer"])
        r["answer_tokens"], r["length_bin"] = answer_length(r["human_answer"], r["language"], cfg)
        r["bucket_id"] = bucket_key(r, cfg.bucket_fields)
        r["group_id"] = r["id"]
    rows.append(("normalise + length tokens + bin + bucket key", time.perf_counter() - t0))
    t0 = time.perf_counter(); kept, removed = dedup_records(recs, ["dolly", "natural_questions"])
    rows.append((f"exact dedup + leakage guard ({len(removed):,} removed)", time.perf_counter() - t0))
    t0 = time.perf_counter(); pairs = near_duplicates(kept, cfg.near_dup_threshold, cfg.near_dup_num_perm)
    rows.append((f"MinHash near-dup across splits, {cfg.near_dup_num_perm} perms ({len(pairs):,} pairs)", time.perf_counter() - t0))
    total = time.perf_counter() - t_all
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = HERE / "data.md"
    lines = ["# Data benchmark", "",
             f"{N:,} synthetic records (85% en, 15% zh; answers of 15-300 tokens; 5% exact and 1% near copies across splits). "
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, single process. "
             f"Generating the records (not timed) took {gen_s:.1f} s.", "",
             "| step | time |", "|---|---|", *[f"| {a} | {b:.1f} s |" for a, b in rows],
             f"| **total** (target: at most 120 s) | **{total:.1f} s** |", "",
             f"Peak RSS of the process: {peak:,.0f} MiB ({rss_gen:,.0f} MiB after generating the records; target: under 4 GB).", ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main().read_text())
