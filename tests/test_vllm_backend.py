"""The vLLM backend against a double of vLLM's documented interface (tests/fake_vllm): engine and sampling arguments,
stop ids, token-id prompts with BOS once, structured output, data-parallel workers merged by id, crash and resume."""
import json
import sys

import pytest

from polyalign.core import GenerateConfig, TinyModelSpec, derive_seed, load_config, read_jsonl
from polyalign.generate import (COT_STOPS, PLAIN_STOPS, VLLMGenerator, generate, generate_in_workers, shard_files,
                                vllm_json_params)
from polyalign.data import renderer
from polyalign.tiny import build_tiny





@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    "A Llama-3-like checkpoint whose eos is the base model's and whose answers go on after the end of turn."
    from transformers import AutoTokenizer
    d = build_tiny(tmp_path_factory.mktemp("llama") / "m", TinyModelSpec(corpus_sentences=100, vocab_size=700),
                   seed=1, family="llama3")
    assert AutoTokenizer.from_pretrained(d).eos_token == "<|end_of_text|>"
    script = "Paris {n}.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd Rome?<|eot_id|><|end_of_text|>"
    (d / "fake_vllm_script.json").write_text(json.dumps({"text": script}))
    return d


def records(n):
    return [{"id": f"r{i:02d}", "language": "en", "track": "single", "family": "qa", "style_bucket": "qa_search",
             "length_bin": "short", "bucket_id": "en|single|qa|short", "question": f"Where is thing {i}?",
             "context": "Some context." * (i % 3), "dialogue_history": []} for i in range(n)]


GEN = GenerateConfig(backend="vllm", max_new_tokens=24, max_prompt_tokens=200, batch_size=2,
                     vllm_gpu_memory_utilization=0.5)


def test_engine_sampling_stop_ids_and_token_prompts(fake_vllm, llama_dir, tmp_path):
    g = VLLMGenerator(llama_dir, GEN, seed=7)
    [engine] = [e for e in fake_vllm() if e["event"] == "engine"]
    assert engine["kwargs"] == {"tokenizer": str(llama_dir), "revision": None, "tokenizer_revision": None, "seed": 7,
                                "dtype": "bfloat16", "max_model_len": 224, "gpu_memory_utilization": 0.5,
                                "tensor_parallel_size": 1, "trust_remote_code": False, "generation_config": "vllm"}
    tok = g.tok
    eot, bos = tok.convert_tokens_to_ids("<|eot_id|>"), tok.bos_token_id
    render = renderer(load_config("tiny").data, tok)
    generate(g, records(3), "bucket_sft", tmp_path / "chat.jsonl", model_name="m", render=render, progress=False)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "chat.jsonl")}
    assert {r["finish_reason"] for r in rows.values()} == {"stop"}
    assert all(r["prediction"].startswith("Paris") and "Rome" not in r["prediction"] for r in rows.values())
    requests = [e for e in fake_vllm() if e["event"] == "request"]
    assert len(requests) == 3
    for req in requests:
        p = req["params"]
        assert eot in p["stop_token_ids"] and tok.eos_token_id in p["stop_token_ids"] and p["stop"] == []
        assert (p["temperature"], p["top_p"], p["repetition_penalty"], p["frequency_penalty"], p["max_tokens"]) == \
            (0.1, 0.9, 1.1, 0.1, 24)
        ids = req["prompt_token_ids"]
        assert ids[0] == bos and ids.count(bos) == 1                       # BOS once, from the template
    assert sorted(r["params"]["seed"] for r in requests) == sorted(derive_seed(7, "generate", i) for i in rows)
    generate(g, records(2), "base_lm", tmp_path / "plain.jsonl", model_name="m", progress=False)
    plain = [e for e in fake_vllm() if e["event"] == "request"][3:]
    assert all(r["params"]["stop"] == list(PLAIN_STOPS) and r["prompt_token_ids"].count(bos) == 1
               and r["prompt_token_ids"][0] == bos for r in plain)          # a plain prompt gets the tokenizer's BOS
    generate(g, records(1), "cot", tmp_path / "cot.jsonl", model_name="m", progress=False)
    [cot] = [e for e in fake_vllm() if e["event"] == "request"][5:]
    assert cot["params"]["stop"] == list(COT_STOPS) and cot["prompt_token_ids"].count(bos) == 1


def test_structured_output_request(fake_vllm):
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    p = vllm_json_params(schema, temperature=0.0, max_tokens=64)
    assert p.structured_outputs.json == schema and (p.temperature, p.max_tokens) == (0.0, 64)
    with pytest.raises(TypeError):
        vllm_json_params(schema, guided_json=schema)                        # the field removed in vLLM 0.12


def _cfg(tmp_path, engines, **gen):
    cfg = load_config("tiny", [f"run_dir={tmp_path}", "generate.backend=vllm", f"generate.vllm_data_parallel={engines}",
                               "generate.batch_size=2", "generate.max_new_tokens=24",
                               f"generate.python={sys.executable}", *[f"generate.{k}={v}" for k, v in gen.items()]])
    return cfg


def test_three_engines_merged_by_id_equal_one_engine(fake_vllm, llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    s1 = generate_in_workers(_cfg(tmp_path, 1), str(llama_dir), None, records(10), "bucket_sft", one, model_name="m")
    s3 = generate_in_workers(_cfg(tmp_path, 3), str(llama_dir), None, records(10), "bucket_sft", three, model_name="m")
    assert (s1["engines"], s3["engines"], s3["generated"]) == (1, 3, 10)
    engines = [e for e in fake_vllm() if e["event"] == "engine"]
    assert sorted(e["cuda_visible_devices"] for e in engines[1:]) == ["0", "1", "2"]
    assert len({e["pid"] for e in engines}) == 4                           # one process per engine
    a, b = read_jsonl(one), read_jsonl(three)
    assert len(b) == len({r["id"] for r in b}) == 10
    assert {r["id"]: r for r in a} == {r["id"]: r for r in b}
    assert not shard_files(three) and not list(tmp_path.glob(".*.workers"))


def test_a_crashed_worker_resumes_without_duplicates(fake_vllm, llama_dir, tmp_path, monkeypatch):
    out, ref = tmp_path / "p.jsonl", tmp_path / "ref.jsonl"
    generate_in_workers(_cfg(tmp_path, 1), str(llama_dir), None, records(12), "bucket_sft", ref, model_name="m")
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "1")                        # each worker dies after one batch
    with pytest.raises(RuntimeError, match="rerun to resume"):
        generate_in_workers(_cfg(tmp_path, 3), str(llama_dir), None, records(12), "bucket_sft", out, model_name="m")
    assert len(read_jsonl(out)) == 6 and not shard_files(out)              # 3 workers x one batch of 2, merged
    monkeypatch.delenv("FAKE_VLLM_CRASH_AFTER")
    stats = generate_in_workers(_cfg(tmp_path, 3), str(llama_dir), None, records(12), "bucket_sft", out,
                                model_name="m")
    assert (stats["resumed_skipped"], stats["generated"]) == (6, 6)
    rows = read_jsonl(out)
    assert len(rows) == len({r["id"] for r in rows}) == 12
    assert {r["id"]: r for r in rows} == {r["id"]: r for r in read_jsonl(ref)}


def test_plan_finds_vllm_in_the_configured_environment(fake_vllm, tmp_path):
    from polyalign.reproduce import vllm_check
    ok = vllm_check(load_config("tiny", ["generate.backend=vllm", f"generate.python={sys.executable}"]))
    assert ok.ok and "0.33.0" in ok.detail
    missing = vllm_check(load_config("tiny", ["generate.backend=vllm", f"generate.python={tmp_path / 'no-python'}"]))
    assert not missing.ok and "FileNotFoundError" in missing.detail and "generate.python" in missing.fix
