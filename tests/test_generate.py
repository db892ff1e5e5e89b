"""Generation: penalties, seeded reproducibility, resume after a crash, CoT parsing, bad input."""
import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from polyalign.core import GenerateConfig, TinyModelSpec, load_config, read_jsonl, read_manifest
from polyalign.data import records_to_table
from polyalign.generate import (FrequencyPresencePenalty, HFGenerator, generate, generate_stage, generation_summary,
                                parse_cot, prediction_path)
from polyalign.tiny import build_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("gen") / "m", TinyModelSpec(corpus_sentences=100, vocab_size=700), seed=2)


def records(n=10):
    return [{"id": f"r{i:02d}", "language": "en" if i % 2 else "zh", "question": f"Question {i}? 问题{i}？",
             "context": "Some context. 一些上下文。" * (i % 3), "dialogue_history": [], "style_bucket": "qa_search"}
            for i in range(n)]


GEN = GenerateConfig(max_new_tokens=8, batch_size=4, max_prompt_tokens=200)


def test_penalties_by_hand_on_a_toy_vocabulary():
    proc = FrequencyPresencePenalty(prompt_length=1, frequency_penalty=0.3, presence_penalty=1.0)
    ids = torch.tensor([[4, 2, 2, 2, 0], [4, 1, 3, 3, 3]])
    scores = torch.arange(10, dtype=torch.float32).repeat(2, 1)
    out = proc(ids, scores.clone())
    expect = scores.clone()
    expect[0, 2] -= 0.3 * 3 + 1; expect[0, 0] -= 0.3 + 1            # token 4 is prompt-only: untouched
    expect[1, 1] -= 0.3 + 1; expect[1, 3] -= 0.3 * 3 + 1
    torch.testing.assert_close(out, expect)


def test_same_seed_same_text(model_dir, tmp_path):
    a = HFGenerator(model_dir, GEN, seed=5)
    generate(a, records(), "base_lm", tmp_path / "a.jsonl", model_name="tiny", batch_size=4, progress=False)
    b = HFGenerator(model_dir, GEN, seed=5)
    generate(b, records(), "base_lm", tmp_path / "b.jsonl", model_name="tiny", batch_size=4, progress=False)
    assert read_jsonl(tmp_path / "a.jsonl") == read_jsonl(tmp_path / "b.jsonl")


def test_resume_after_crash_gives_one_row_per_id(model_dir, tmp_path):
    g = HFGenerator(model_dir, GEN, seed=5)
    out = tmp_path / "p.jsonl"
    calls = {"n": 0}
    real = g.__call__

    class Crashing:
        def __init__(self): self.count, self.encode, self.chat_text = g.count, g.encode, g.chat_text
        def __call__(self, batch, stop=()):
            calls["n"] += 1
            if calls["n"] == 2: raise KeyboardInterrupt("killed")
            return real(batch, stop)
    with pytest.raises(KeyboardInterrupt):
        generate(Crashing(), records(), "base_lm", out, model_name="tiny", batch_size=4, progress=False)
    with open(out, "a") as f: f.write('{"id": "r99", "predic')          # a torn line from the kill
    stats = generate(g, records(), "base_lm", out, model_name="tiny", batch_size=4, progress=False)
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == [r["id"] for r in records()]
    assert stats["resumed_skipped"] == 4 and stats["generated"] == 6
    full = tmp_path / "full.jsonl"
    generate(HFGenerator(model_dir, GEN, seed=5), records(), "base_lm", full, model_name="tiny", batch_size=4, progress=False)
    assert {r["id"]: r["prediction"] for r in rows} == {r["id"]: r["prediction"] for r in read_jsonl(full)}


def test_rows_carry_the_contract_fields(model_dir, tmp_path):
    g = HFGenerator(model_dir, GEN, seed=1)
    generate(g, records(4), "cot", tmp_path / "c.jsonl", model_name="tiny", progress=False)
    for r in read_jsonl(tmp_path / "c.jsonl"):
        assert {"id", "method", "model", "prediction", "finish_reason", "prompt_tokens", "completion_tokens",
                "prompt_truncated", "raw_prediction", "cot_parse"} <= set(r)
        assert r["finish_reason"] in {"stop", "length"} and r["completion_tokens"] <= 8


@pytest.mark.parametrize("text, expect", [
    ('{"reasoning": "Paris is the capital.", "final_answer": "Paris"}', ("Paris", "json")),
    ('思考：…… {"reasoning": "首都是北京", "final_answer": "北京"}', ("北京", "json")),
    ('{"reasoning": {"steps": [1, 2]}, "final_answer": "3"} trailing', ("3", "json")),
    ('{"reasoning": "a"} {"final_answer": "b"}', ("b", "json")),
    ('```json\n{"reasoning": "x", "final_answer": "y\\n z"}\n```', ("y\n z", "json")),
    ('{"reasoning": "bad json, "final_answer": "Rome"', ("Rome", "key")),
    ("Reasoning: ...\nFinal Answer: 42", ("42", "line")),
    ("推理过程\n最终答案：长城", ("长城", "line")),
    ("", ("", "failed")),
    ("just words", ("just words", "failed")),
])
def test_parse_cot(text, expect):
    assert parse_cot(text) == expect


def test_bad_inputs(model_dir, tmp_path):
    g = HFGenerator(model_dir, GEN, seed=1)
    with pytest.raises(ValueError, match="empty question"):
        generate(g, [{"id": "e", "question": " ", "context": "", "dialogue_history": []}], "base_lm",
                 tmp_path / "e.jsonl", model_name="tiny", progress=False)
    huge = [{"id": "h", "language": "en", "question": "why " * 500, "context": "", "dialogue_history": []}]
    stats = generate(g, huge, "base_lm", tmp_path / "h.jsonl", model_name="tiny", progress=False, max_prompt_tokens=50)
    row = read_jsonl(tmp_path / "h.jsonl")[0]
    assert stats["flagged_too_long"] == 1 and row["finish_reason"] == "prompt_too_long" and row["prediction"] == ""
    with pytest.raises(FileNotFoundError, match="model path does not exist"):
        HFGenerator(tmp_path / "no-such-model", GEN, seed=1)
    with pytest.raises(ValueError, match="duplicate ids"):
        generate(g, records(2) + records(1), "base_lm", tmp_path / "d.jsonl", model_name="tiny", progress=False)


def test_training_and_inference_prompts_are_identical(model_dir):
    "The chat prompt a trained method sees at inference is the prompt its SFT example was built from."
    from transformers import AutoTokenizer
    from polyalign.bucket_sft import sft_dataset
    from polyalign.core import DataConfig
    from polyalign.data import render_messages
    from polyalign.generate import prompt_builder
    recs = [{"id": "m1", "language": "zh", "track": "multi", "family": "dialogue", "style_bucket": "open_chat",
             "length_bin": "short", "bucket_id": "zh|multi|dialogue|short", "question": "那你呢？", "context": "",
             "human_answer": "我也很好。", "dialogue_history": [{"role": "user", "text": "你好吗？"},
                                                            {"role": "assistant", "text": "很好，谢谢。"}]},
            {"id": "q1", "language": "en", "track": "single", "family": "qa", "style_bucket": "qa_search",
             "length_bin": "short", "bucket_id": "en|single|qa|short", "question": "Who?", "context": "Ann came.",
             "human_answer": "Ann", "dialogue_history": []}]
    render = lambda r: render_messages(r, DataConfig())
    ds = sft_dataset(recs, render)
    g = HFGenerator(model_dir, GEN, seed=0)
    build = prompt_builder("bucket_sft", g, render)
    tok = AutoTokenizer.from_pretrained(model_dir)
    for r, ex in zip(recs, ds):
        assert ex["prompt"] == render(r)
        train_text = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        infer_text = build(r)
        assert train_text.startswith(infer_text) and train_text[len(infer_text):].startswith(r["human_answer"])


def _corpus_rows(split, n):
    "Records in the data stage's schema, both languages, some with dialogue history."
    rows = []
    for i in range(n):
        lang = "en" if i % 2 else "zh"
        hist = [{"role": "user", "text": "Hello"}, {"role": "assistant", "text": "Hi"}] if i % 3 == 0 else []
        rows.append({"id": f"{split}-{i:03d}", "dataset": "synthetic", "split": split, "language": lang,
                     "track": "multi" if hist else "single", "family": "qa", "style_bucket": "qa_search",
                     "length_bin": "short", "bucket_id": f"{lang}|single|qa|short",
                     "question": f"Question {i}? 问题{i}？", "context": "", "dialogue_history": hist, "human_answer": "answer", "answer_tokens": 1,
                     "group_id": f"g{i}", "meta": "{}"})
    return rows


def _write_split(run_dir, split, n):
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(records_to_table(_corpus_rows(split, n)), run_dir / "data" / f"{split}.parquet")


def test_generate_stage_from_plain_python(model_dir, tmp_path):
    "The stage function without papermill: one part per (split, model, method), resumable files, a skip on rerun."
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "models" / "tiny")
    _write_split(run, "test", 6)
    cfg = load_config("tiny", [f"run_dir={run}", "generate.max_new_tokens=4", "generate.batch_size=4"])
    cfg.generate.methods, cfg.generate.splits = ["base_lm", "cot"], ["test"]
    result = generate_stage(cfg)
    assert list(result.records) == ["generate/test/tiny/base_lm", "generate/test/tiny/cot"]
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (12, 12, 0)
    assert sorted(map(str, result.outputs)) == sorted(str(prediction_path(run, "tiny", m)) for m in ("base_lm", "cot"))
    stages = read_manifest(run)["stages"]
    for part in result.records:
        rec = stages[part]
        assert rec["status"] == "done" and rec["sections"] == ["seed", "models", "data", "sft", "generate"]
        assert set(rec["inputs"]) == {"data/test.parquet", "models/tiny"} and set(rec["generation"]) == {"en", "zh"}
    for m in ("base_lm", "cot"):
        ids = sorted(r["id"] for r in read_jsonl(prediction_path(run, "tiny", m)))
        assert ids == [f"test-{i:03d}" for i in range(6)]
    summary = generation_summary(result.records)
    assert summary[["method", "en_generated", "zh_generated"]].values.tolist() == [["base_lm", 3, 3], ["cot", 3, 3]]
    before = prediction_path(run, "tiny", "cot").read_bytes()
    again = generate_stage(cfg)
    assert {r["last_action"] for r in again.records.values()} == {"skipped"}
    assert prediction_path(run, "tiny", "cot").read_bytes() == before


def test_generate_stage_needs_the_trained_checkpoints(tmp_path):
    _write_split(tmp_path, "test", 2)
    cfg = load_config("tiny", [f"run_dir={tmp_path}"])
    cfg.generate.methods, cfg.generate.splits = ["full_sft"], ["test"]
    with pytest.raises(FileNotFoundError, match="run its training stage first"):
        generate_stage(cfg)
