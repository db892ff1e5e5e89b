"""Feature extraction throughput: 100,000 English and 20,000 Chinese answers of realistic length, per core; peak memory;
the sharded stage's peak memory at 1x and 4x rows; the LM scorer's peak memory with full and chunked logits."""
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
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


STAGE_ROWS, STAGE_SHARD = 800, 200            # the stage's memory at 1x and 4x STAGE_ROWS train answers
LM_BATCH, LM_VOCAB, LM_CHUNK = 16, 150_000, 1024   # the scorer's memory: 16 sequences, a Qwen-sized vocabulary


def _reset_peak() -> None:
    "Count this process's peak RSS afresh from now (Linux: /proc/self/clear_refs; elsewhere nothing happens)."
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib() -> float:
    """This process's peak RSS in MiB: VmHWM where /proc exists (it starts afresh at exec and at `_reset_peak`), else
    ru_maxrss, which on Linux a child inherits from its parent and `make bench` carries over from earlier benches."""
    try:
        return next(int(l.split()[1]) / 1024 for l in Path("/proc/self/status").read_text().splitlines()
                    if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(*args: str) -> dict:
    "Run one measurement in a fresh process (its own peak RSS) and return what it printed as JSON."
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env={**os.environ})
    if r.returncode: raise RuntimeError(f"{args}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _stage_data(run: Path, rows: int, model: Path) -> None:
    "A run directory with data splits in the data stage's schema (80% en, 20% zh; contexts on 40%) and a scorer."
    import pandas as pd
    from polyalign.core import write_parquet
    n_zh = rows // 5
    answers, contexts = english_answers(rows - n_zh, seed=1) + chinese_answers(n_zh, seed=1), english_answers(rows, 2)
    langs = ["en"] * (rows - n_zh) + ["zh"] * n_zh
    for split, n in (("train", rows), ("val", 50), ("test", 50)):
        write_parquet(run / "data" / f"{split}.parquet", pd.DataFrame({
            "id": [f"{split}-{i}" for i in range(n)], "language": langs[:n], "bucket_id": [f"{l}|b" for l in langs[:n]],
            "question": ["Why is that so?"] * n,
            "context": [c if i % 5 < 2 else "" for i, c in enumerate(contexts[:n])],
            "human_answer": answers[:n]}))
    shutil.copytree(model, run / "models" / "tiny")


def child_stage(run: str, shard_rows: str) -> dict:
    "Peak RSS of `write_features` (LM features on) above the process after imports, resources and the scorer load."
    import torch
    from polyalign.core import load_config
    from polyalign.features import extract_features, feature_scorer, write_features
    torch.set_num_threads(1)   # the tiny scorer gains nothing from a second thread on a shared 2-core machine
    cfg = load_config("tiny", {"run_dir": run, "features.shard_rows": int(shard_rows), "features.lm_max_length": 32,
                               "features.lm_batch_size": 64, "features.min_bucket_count": 1})
    scorer = feature_scorer(cfg)
    extract_features(english_answers(20) + chinese_answers(20), ["en"] * 20 + ["zh"] * 20, scorer=scorer)
    del scorer
    base = _peak_mib(); t0 = time.perf_counter()
    res = write_features(cfg)
    return {"base": base, "peak": _peak_mib(), "s": time.perf_counter() - t0, "rows": res.rows_in}


def stage_memory_rows() -> list[tuple]:
    "(train rows, shard rows, peak MiB, MiB above baseline, seconds) of the features stage at 1x and 4x rows."
    from polyalign.core import TinyModelSpec
    from polyalign.tiny import build_tiny
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny(Path(tmp) / "model", TinyModelSpec(), seed=0)
        for rows in (STAGE_ROWS, 4 * STAGE_ROWS):
            _stage_data(Path(tmp) / f"r{rows}", rows, model)
            for shard in (STAGE_SHARD, 10**9):
                run = Path(tmp) / f"r{rows}-{shard}"
                shutil.copytree(Path(tmp) / f"r{rows}", run)
                m = _child("stage", str(run), str(shard))
                out.append((rows, shard, m["peak"], m["peak"] - m["base"], m["s"]))
    return out


def _lm_model(path: Path) -> Path:
    "A throwaway causal LM with a 150,000-token vocabulary and 64 hidden units (weights ~40 MB) and a small tokenizer."
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from polyalign.tiny import build_tokenizer
    build_tokenizer(english_answers(200), vocab_size=400).save_pretrained(path)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=LM_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                      tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def _full_logits_surprisals(sc, seqs, n_scored):
    "The scorer before the chunked head: one forward keeping the logits of the last k + 1 positions of the batch."
    import numpy as np, torch
    ids = torch.tensor(seqs)
    k = max(n_scored)
    with torch.inference_mode():
        logits = sc.model(input_ids=ids, logits_to_keep=k + 1).logits
        return [(-torch.log_softmax(logits[r, -n - 1:-1].float(), -1).gather(1, ids[r, -n:, None])[:, 0]).numpy()
                for r, n in enumerate(n_scored)]


def child_lm(path: str, how: str, tokens: str, scored: str) -> dict:
    "Peak RSS of scoring the last `scored` tokens of 16 sequences of `tokens` tokens, above the loaded model."
    import numpy as np
    from polyalign.features import LMScorer
    T, n = int(tokens), int(scored)
    sc = LMScorer(path, device="cpu", dtype="float32", max_length=T, batch_size=LM_BATCH, chunk_tokens=LM_CHUNK)
    rng = np.random.default_rng(0)
    seqs = [[sc.start_id] + rng.integers(1, LM_VOCAB, T - 1).tolist() for _ in range(LM_BATCH)]
    score = sc._surprisals if how == "chunked" else lambda s, n: _full_logits_surprisals(sc, s, n)
    score([s[:8] for s in seqs[:2]], [7, 7])
    base = _peak_mib(); t0 = time.perf_counter()
    score(seqs, [n] * LM_BATCH)
    return {"base": base, "peak": _peak_mib(), "s": time.perf_counter() - t0}


def lm_memory_rows() -> list[tuple]:
    "(path, tokens, scored tokens, peak MiB above the loaded model, seconds) of the scorer at several lengths."
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _lm_model(Path(tmp) / "lm")
        for how, T, n in (("full logits", 128, 127), ("full logits", 256, 255), ("chunked", 128, 127),
                          ("chunked", 256, 255), ("chunked", 4096, 512)):
            m = _child("lm", str(path), "chunked" if how == "chunked" else "full", str(T), str(n))
            out.append((how, T, n, m["peak"] - m["base"], m["s"]))
    return out


def memory_lines(stage: list[tuple], lm: list[tuple]) -> list[str]:
    "The memory sections of the table."
    gib = lambda n: n * 4 / 2**30
    full_4096 = gib(LM_BATCH * 4096 * LM_VOCAB)
    lines = ["## Peak memory of the sharded features stage", "",
             "`write_features` with LM features on (the tiny scorer, `lm_max_length` 32, one thread) over "
             f"{STAGE_ROWS:,} and {4 * STAGE_ROWS:,} train answers (80% en, 20% zh, contexts on 40%; val and test "
             "50 rows each), each run in a fresh process. *Above baseline* is the peak RSS minus the peak after "
             "imports, resources and a scorer load. One shard (`shard_rows` above the row count) is one pass over the "
             "split, as before sharding: its texts and tokenisations grow with the rows.", "",
             "| train rows | shard_rows | peak RSS | above baseline | time |", "|---|---|---|---|---|",
             *[f"| {r:,} | {'one shard' if s >= r else f'{s:,}'} | {p:,.0f} MiB | {d:,.0f} MiB | {t:.1f} s |"
               for r, s, p, d, t in stage], "",
             "## Peak memory of the LM scorer", "",
             f"One batch of {LM_BATCH} sequences through a throwaway causal LM with a {LM_VOCAB:,}-token vocabulary "
             "and 64 hidden units (so the logits, not the weights, dominate), float32 on CPU, each run in a fresh "
             "process; *peak above the model* is the peak RSS minus the peak after loading it. Full logits is the "
             "scorer before chunking (`logits_to_keep` = k + 1: batch × (k + 1) × vocabulary logits at once); chunked "
             f"applies the head to {LM_CHUNK:,} positions at a time. The full-size chunked run scores the last 512 "
             "tokens of each sequence (its memory does not depend on the number of chunks; scoring all 4,095 takes "
             "minutes of CPU time here). The full-size full-logits run cannot run on this machine: its row gives the "
             "size of the logits tensor it would hold, computed, not measured.", "",
             "| path | batch × tokens (scored per row) | peak above the model | logits held at once | time |",
             "|---|---|---|---|---|",
             *[f"| {h} | {LM_BATCH} × {T:,} ({n:,}) | {d:,.0f} MiB | "
               f"{gib(LM_BATCH * (n + 1) * LM_VOCAB) if h == 'full logits' else gib(LM_CHUNK * LM_VOCAB):.2f} GiB | "
               f"{t:.1f} s |" for h, T, n, d, t in lm],
             f"| full logits | {LM_BATCH} × 4,096 (4,095) | not run | {full_4096:.1f} GiB (computed: "
             f"{LM_BATCH} × 4,096 × {LM_VOCAB:,} float32) | – |", ""]
    return lines


def main() -> Path:
    import numpy as np
    import pandas as pd

    from polyalign.features import TEXT_FEATURES, check_resources, extract_features, fit_references

    check_resources()
    _reset_peak()            # `make bench` runs every bench in one process: count this one's peak only
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
    peak_single = _peak_mib()
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
    peak = _peak_mib()
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    load1 = os.getloadavg()[0]
    del en, zh, fm_en, fm_zh, frame, refs
    stage, lm = stage_memory_rows(), lm_memory_rows()
    out = HERE / "features.md"
    lines = ["# Feature extraction benchmarks", "",
             f"Machine: {platform.machine()}, {procs} CPUs, Python {platform.python_version()}. "
             f"{len(TEXT_FEATURES)} text features (LM features off). The issue's target is 2,000 English answers/s per core. "
             f"1-minute load average {load0:.1f} at the start and {load1:.1f} at the end (other work on a shared "
             "machine lowers every figure; with a load above the CPU count, several processes cannot beat one).", "",
             "| what | time | throughput |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
             f"Peak RSS of the benchmark process: {peak_single:,.0f} MiB after the single-process runs (texts, matrices and "
             f"jieba's dictionary included), {peak:,.0f} MiB at the end; largest worker process {peak_children:,.0f} MiB.", "",
             "English answers are sentences of the standard library's documentation (`pydoc_data`), lengths log-normal with "
             "median 55 words; Chinese answers are words of jieba's dictionary with Chinese punctuation, lengths log-normal with "
             "median 80 characters. Regenerate with `make bench` (or `python papers/polyalign/bench/run.py features`).", "",
             *memory_lines(stage, lm), f"1-minute load average {os.getloadavg()[0]:.1f} after the memory runs.", ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:   # one measurement in this fresh process
        print(json.dumps({"stage": child_stage, "lm": child_lm}[sys.argv[1]](*sys.argv[2:])))
    else:
        print(main())
