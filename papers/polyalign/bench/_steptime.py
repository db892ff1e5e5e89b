"""Shared by the trainer benchmarks: median optimiser-step time of two trainers on identical data, runs in ABBA order."""
import statistics
import time
from typing import Callable


def abba_step_times(make: dict[str, Callable[[list], object]], rounds: int) -> dict[str, list[float]]:
    """`make[name](callbacks)` builds a fresh trainer; each is trained `rounds` times, alternating A B B A ... so slow
    drift of the machine hits both alike. Returns every step time per trainer, the first step of each run excluded."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self): self.times, self.t0 = [], None
        def on_step_begin(self, *a, **k): self.t0 = time.perf_counter()
        def on_step_end(self, *a, **k): self.times.append(time.perf_counter() - self.t0)

    names = list(make)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            timer = StepTimer()
            make[name]([timer]).train()
            out[name].extend(timer.times[1:])          # first step excluded (warm-up)
    return out


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}
