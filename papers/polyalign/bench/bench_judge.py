"""The judge's cost on CPU: schema-constrained against free decoding for the same number of generated tokens with a
tiny judge (target: at most 1.5x), and judge rows per second at batch 8 (retries included)."""
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def main() -> Path:
    import torch
    from polyalign import judge as J
    from polyalign.core import load_config
    from polyalign.data import read_split
    from polyalign.sources import data_stage

    tmp = Path(tempfile.mkdtemp())
    cfg = load_config("tiny", [f"run_dir={tmp}"])
    data_stage(cfg)
    train, test = (read_split(tmp / "data" / f"{s}.parquet") for s in ("train", "test"))
    rubric = J.load_rubric()
    t0 = time.perf_counter()
    path = J.build_tiny_judge(cfg, "bench", train, rubric)
    build_s = time.perf_counter() - t0
    rows = test.sample(n=32, random_state=0).to_dict("records")
    answers = [r["human_answer"] for r in rows]
    judges = {"free": J.HFJudge(path, None, dtype="float32"),
              "constrained": J.HFJudge(path, J.judge_schema(rubric), dtype="float32")}
    prompts = [judges["free"].render(J.judge_messages(r, answers[(i + 1) % len(answers)], f"c{i}", rubric))
               for i, r in enumerate(rows)]
    # N new tokens per row in both modes: below the length of a whole judgement (about 80 tokens), and with the end of
    # sequence switched off for free decoding, so neither mode stops early
    n_new = 64
    judges["free"].stop_ids = []
    judges["free"].model.generation_config.eos_token_id = None
    for j in judges.values(): j(prompts[:8], J.Attempt(4), 0)          # warm-up (builds the constraint index)
    times = {k: [] for k in judges}
    for _ in range(3):                                                    # interleaved, so load drift hits both alike
        for k, j in judges.items():
            t = time.perf_counter()
            for s in range(0, 16, 8): j(prompts[s:s + 8], J.Attempt(n_new), 0)
            times[k].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    # rows per second: the stage's loop (batch 8, the tiny profile's budgets, retries), fresh output file
    jc = cfg.judge
    items = J.judge_items(test.head(16), {("tiny", m): dict(zip(test["id"], test["human_answer"]))
                                          for m in ("full_sft", "hdpo")}, salt=1, seed=0)
    t = time.perf_counter()
    stats = J.run_judge(judges["constrained"], items, "bench", rubric, jc, tmp / "bench.jsonl", seed=0)
    rows_s = len(items) / (time.perf_counter() - t)
    tries = [r["attempts"] for r in J.read_jsonl(tmp / "bench.jsonl")]
    load = os.getloadavg()[0]
    out = HERE / "judge.md"
    out.write_text("\n".join([
        "# Judge decoding cost (HF backend)", "",
        f"A tiny judge (`judge.build_tiny_judge`: tiny Qwen2, {jc.tiny_steps} fine-tuning steps on synthetic rubric "
        f"JSON, built in {build_s:.0f} s) on 16 real judge prompts (tiny test rows, about "
        f"{sum(judges['free'].count(p) for p in prompts[:16]) // 16} tokens each), batch 8; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
        f"{load:.1f}.", "",
        f"Same work in both modes: {n_new} new tokens per prompt (short of a whole judgement, and free decoding does "
        "not stop at the end of sequence). Best of three interleaved runs:", "",
        "| decoding | seconds for 16 prompts | generated tokens/s |", "|---|---|---|",
        *[f"| {k} | {best[k]:.2f} | {16 * n_new / best[k]:,.0f} |" for k in judges], "",
        f"Constrained / free time: **{best['constrained'] / best['free']:.2f}x** (target: at most 1.5x).", "",
        f"Judge rows per second at batch 8 (the tiny profile's budgets {jc.max_new_tokens} then "
        f"{jc.retry_max_new_tokens} tokens, up to {jc.max_retries} retries; {len(items)} rows: {stats['ok']} ok, "
        f"{stats['error']} error rows, {sum(t > 1 for t in tries)} retried): **{rows_s:.2f} rows/s**.", ""]))
    return out


if __name__ == "__main__":
    print(main())
