"""The detectors' batching on CPU: 512 answers of mixed lengths (real tiny test answers, empty ones included) scored
by the tiny Binoculars and Fast-DetectGPT pairs and the tiny RADAR stand-in, batched (length-sorted, padded with
attention masks) against one text at a time; the speed-up and the largest score difference."""
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def main() -> Path:
    import numpy as np
    import torch
    from polyalign import detect as D
    from polyalign.core import load_config
    from polyalign.data import read_split
    from polyalign.sources import data_stage

    tmp = Path(tempfile.mkdtemp())
    cfg = load_config("tiny", [f"run_dir={tmp}"])
    data_stage(cfg)
    test = read_split(tmp / "data" / "test.parquet")
    texts = test["human_answer"].fillna("").sample(n=512, replace=len(test) < 512, random_state=0).tolist()
    texts[::64] = [""] * len(texts[::64])                                  # a few empty answers, as methods produce
    rows = []
    for name in cfg.detect.detectors:
        t = time.perf_counter()
        det = D.make_detector(cfg, name)
        build_s = time.perf_counter() - t
        lengths = [len(ids) for ids in det.encode(texts)]
        det.score(texts[:32])                                               # warm-up
        t = time.perf_counter(); batched, status = det.score(texts); tb = time.perf_counter() - t
        t = time.perf_counter(); single = np.array([det.score([x])[0][0] for x in texts]); ts = time.perf_counter() - t
        ok = np.isfinite(batched)
        assert (ok == np.isfinite(single)).all()
        diff = float(np.abs(batched[ok] - single[ok]).max())
        rows.append(f"| {name} | {build_s:.0f} | {ts:.1f} | {tb:.1f} | **{ts / tb:.1f}x** | {diff:.1e} | "
                    f"{sum(s != 'ok' for s in status)} | {min(lengths)}–{max(lengths)} (median {int(np.median(lengths))})"
                    " |")
    out = HERE / "detect.md"
    out.write_text("\n".join([
        "# Detector batching (tiny stand-ins)", "",
        f"512 answers drawn from the tiny test split (every 64th set empty), scored with batch size "
        f"{cfg.detect.batch_size} (sorted by length, right-padded, attention masks) and one text at a time; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f} at the end.", "",
        "| detector | build s | one at a time s | batched s | speed-up | largest score difference | too short | "
        "tokens per text |", "|---|---|---|---|---|---|---|---|", *rows, "",
        "The score differences are float32 rounding between padded and unpadded forward passes.", ""]))
    return out


if __name__ == "__main__":
    print(main())
