"""Feature extraction throughput: 100,000 English and 20,000 Chinese answers of realistic length, per core; peak memory."""
import os
import platform
import random
import re
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
N_EN, N_ZH = 100_000, 20_000


def english_answers(n: int, seed: int = 0) -> list[str]:
    "Prose from the standard library's bundled documentation, cut to answer lengths drawn log-normally (median 55 words)."
    from pydoc_data.topics import topics
    sents = sorted({s.strip() for t in topics.values() for s in re.split(r"(?<=[.!?])\s+", t) if 20 <= len(s.strip()) <= 300})
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target, parts, k = int(min(600, max(3, rng.lognormvariate(4.0, 0.9)))), [], 0
        while k < target:
            s = rng.choice(sents); parts.append(s); k += len(s.split())
        out.append(" ".join(parts))
    return out


def chinese_answers(n: int, seed: int = 0) -> list[str]:
    "Words from jieba's bundled dictionary with Chinese punctuation, lengths drawn log-normally (median 80 characters)."
    import jieba
    words = [l.split()[0] for l in (Path(jieba.__file__).parent / "dict.txt").read_text(encoding="utf-8").splitlines()[:60000] if l.strip()]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target, s = int(min(1500, max(4, rng.lognormvariate(4.4, 0.8)))), []
        k = 0
        while k < target:
            w = rng.choice(words); s.append(w); k += len(w)
            if rng.random() < 0.15: s.append(rng.choice("，，，。。！？；、")); k += 1
        out.append("".join(s) + "。")
    return out


def main() -> Path:
    import numpy as np
    import pandas as pd

    from polyalign.features import TEXT_FEATURES, check_resources, extract_features, fit_references

    check_resources()
    load0 = os.getloadavg()[0]
    rows = []
    en, zh = english_answers(N_EN), chinese_answers(N_ZH)
    en_words = np.mean([len(t.split()) for t in en]); en_chars = np.mean([len(t) for t in en]); zh_chars = np.mean([len(t) for t in zh])
    extract_features(en[:200], "en"); extract_features(zh[:200], "zh")       # warm caches and jieba's dictionary
    t0 = time.perf_counter(); fm_en = extract_features(en, "en"); t_en = time.perf_counter() - t0
    rows.append((f"English, {N_EN:,} answers (mean {en_words:.0f} words, {en_chars:.0f} chars), 1 process",
                 f"{t_en:.1f} s", f"**{N_EN / t_en:,.0f} answers/s per core**"))
    t0 = time.perf_counter(); fm_zh = extract_features(zh, "zh"); t_zh = time.perf_counter() - t0
    rows.append((f"Chinese, {N_ZH:,} answers (mean {zh_chars:.0f} chars; jieba POS), 1 process",
                 f"{t_zh:.1f} s", f"**{N_ZH / t_zh:,.0f} answers/s per core**"))
    peak_single = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    procs = os.cpu_count() or 1
    if procs > 1:
        t0 = time.perf_counter(); fm2 = extract_features(en, "en", num_proc=procs, batch_size=2000); t_mp = time.perf_counter() - t0
        same = bool(np.array_equal(fm2.values, fm_en.values, equal_nan=True))
        rows.append((f"English, {N_EN:,} answers, num_proc={procs} (datasets.map shards)", f"{t_mp:.1f} s",
                     f"{N_EN / t_mp:,.0f} answers/s total; identical to 1 process: {same}"))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [str(i) for i in range(N_EN)], "split": rng.choice(["train", "val", "test"], N_EN, p=[.8, .1, .1]),
                          "bucket_id": rng.choice([f"en|b{i}" for i in range(40)], N_EN)})
    fm_en.ids = frame["id"].tolist()
    t0 = time.perf_counter(); refs = fit_references(frame, fm_en); t_ref = time.perf_counter() - t0
    rows.append((f"fit_references: {int(refs.meta['rows']):,} train rows, 40 buckets x {len(refs.features)} features",
                 f"{t_ref:.2f} s", ""))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = HERE / "features.md"
    lines = ["# Feature extraction benchmarks", "",
             f"Machine: {platform.machine()}, {procs} CPUs, Python {platform.python_version()}. "
             f"{len(TEXT_FEATURES)} text features (LM features off). The issue's target is 2,000 English answers/s per core. "
             f"1-minute load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other work on a shared "
             "machine lowers every figure; with a load above the CPU count, several processes cannot beat one).", "",
             "| what | time | throughput |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
             f"Peak RSS of the benchmark process: {peak_single:,.0f} MiB after the single-process runs (texts, matrices and "
             f"jieba's dictionary included), {peak:,.0f} MiB at the end; largest worker process {peak_children:,.0f} MiB.", "",
             "English answers are sentences of the standard library's documentation (`pydoc_data`), lengths log-normal with "
             "median 55 words; Chinese answers are words of jieba's dictionary with Chinese punctuation, lengths log-normal with "
             "median 80 characters. Regenerate with `make bench` (or `python papers/polyalign/bench/run.py features`).", ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
