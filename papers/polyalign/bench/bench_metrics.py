"""Metrics benchmark: every metric except MAUVE featurisation (utility, BNG, G-/C-MAUVE clustering, TDM, NUF, Agg,
bootstrap CIs) on a 55,000-row synthetic test set; target at most 60 s. Writes metrics.md beside this file."""
import os
import platform
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_ROWS, N_FEATURES, EMB_DIM, BOOTSTRAP = 55_000, 177, 768, 200


def synthetic(n=N_ROWS, seed=0):
    "12 en buckets (3 multi-turn), answers of realistic length, 177 features, 768-d embeddings; predictions perturb the answers."
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    fams = [("single", "qa"), ("single", "assistant"), ("multi", "dialogue")]
    bins = [("short", 25), ("medium", 80), ("long", 180), ("xlong", 300)]
    keys = [(t, f, b, L) for t, f in fams for b, L in bins]
    k = rng.integers(0, len(keys), n)
    lens = np.maximum(1, (np.array([keys[i][3] for i in k]) * rng.uniform(0.5, 1.2, n)).astype(int))
    human = [" ".join(words[rng.zipf(1.3, L) % 5000]) for L in lens]
    pred = [" ".join(h.split()[: max(1, int(len(h.split()) * f))]) + (" extra words" if f < 0.9 else "")
            for h, f in zip(human, rng.uniform(0.3, 1.1, n))]
    frame = pd.DataFrame({"id": [f"ex{i:06d}" for i in range(n)], "language": "en",
                          "bucket_id": [f"en|{keys[i][0]}|{keys[i][1]}|{keys[i][2]}" for i in k],
                          "dataset": [f"ds{i % 8}" for i in k], "family": [keys[i][1] for i in k], "track": [keys[i][0] for i in k],
                          "question": [" ".join(words[rng.integers(0, 5000, 12)]) for _ in range(n)],
                          "human_answer": human, "prediction": pred})
    H = rng.lognormal(size=(n, N_FEATURES)).astype(np.float32)
    G = (H * rng.lognormal(0.1, 0.3, size=(n, N_FEATURES))).astype(np.float32)
    He = rng.standard_normal((n, EMB_DIM)).astype(np.float32)
    Ge = (He + 0.5 * rng.standard_normal((n, EMB_DIM))).astype(np.float32)
    return frame, G, H, Ge, He


def main() -> Path:
    import numpy as np
    import torch
    from polyalign.core import MetricsConfig
    from polyalign.metrics import evaluate
    frame, G, H, Ge, He = synthetic()
    names = [f"f{i}" for i in range(N_FEATURES)]
    rows = []
    cfg0 = MetricsConfig(bootstrap_samples=0)
    t0 = time.perf_counter()
    ev = evaluate(frame, G, H, names, Ge, He, mcfg=cfg0, seed=0)
    point = time.perf_counter() - t0
    rows.append(("all metrics, point estimates (utility, BNG, G-MAUVE + 12 C-MAUVE, TDM, NUF, Agg)", f"{point:.1f} s", ""))
    cfg = MetricsConfig(bootstrap_samples=BOOTSTRAP)
    t0 = time.perf_counter()
    ev = evaluate(frame, G, H, names, Ge, He, mcfg=cfg, seed=0)
    total = time.perf_counter() - t0
    rows.append((f"all metrics with {BOOTSTRAP} bootstrap replicates (the tiny profile's setting)", f"{total:.1f} s",
                 "target <= 60 s: " + ("met" if total <= 60 else "NOT met")))
    c = ev.table2_cells()
    rows.append(("Table 2 cells of the synthetic set", ", ".join(f"{k} {v:.3f}" for k, v in c.items()), ""))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = HERE / "metrics.md"
    lines = ["# Metrics benchmark", "",
             f"{N_ROWS:,} synthetic English rows in 12 buckets (3 multi-turn), {N_FEATURES} features, {EMB_DIM}-d embeddings "
             f"(MAUVE featurisation excluded, as the issue asks). Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__}; peak RSS of the benchmark process {peak:.0f} MiB.", "",
             "| what | time | note |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
