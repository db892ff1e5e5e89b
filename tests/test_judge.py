"""The judge (polyalign.judge) beyond its notebook examples: every prompt of a run is blind, constrained decoding with
a real model gives schema-valid JSON where free decoding does not, the vLLM judge's requests against the test double,
arbitrary judge output never crashes the parser, and the stage resumes, skips, and aborts on a changed reference."""
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from polyalign import judge as J
from polyalign.core import METHODS, JudgeConfig, TinyModelSpec, load_config, read_jsonl, read_manifest, write_jsonl
from polyalign.tiny import build_tiny

RUBRIC = J.load_rubric()
MAKE_JUDGE = J.make_judge
MODELS = ["Qwen/Qwen2.5-1.5B", "google/gemma-2-2b"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A tiny run's data stage (the bundled fixtures through every adapter): its test and train splits."
    from polyalign.sources import data_stage
    cfg = load_config("tiny", [f"run_dir={tmp_path_factory.mktemp('judge-run')}"])
    data_stage(cfg)
    return cfg


@pytest.fixture(scope="module")
def test_split(run):
    from polyalign.data import read_split
    return read_split(Path(run.run_dir) / "data" / "test.parquet")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    "A tiny ChatML checkpoint (random weights): a real tokenizer, chat template and model."
    spec = TinyModelSpec(corpus_sentences=120, vocab_size=800, max_position_embeddings=4096)
    return build_tiny(tmp_path_factory.mktemp("judge-model") / "m", spec, seed=5)


def _texts(ex, candidate):
    turns = [t["text"] for t in (ex["dialogue_history"] if ex["dialogue_history"] is not None else [])]
    return [ex["question"], ex["context"] or "", ex["human_answer"], candidate, *turns]


def test_every_prompt_of_a_run_is_blind(test_split, chat_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(chat_dir)
    answers = list(test_split["human_answer"])
    preds = {(m, meth): {i: answers[(k + j) % len(answers)] for k, i in enumerate(test_split["id"])}
             for j, m in enumerate(MODELS) for meth in METHODS}
    items = J.judge_items(test_split, preds, salt=3, seed=0)
    assert len(items) == len(test_split) * len(MODELS) * len(METHODS)
    names = J.identity_names(MODELS)
    leaks = []
    for it in items:
        msgs = J.judge_messages(it["example"], it["candidate"], it["candidate_id"], RUBRIC)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        leaks += J.blind_leaks(prompt, names, _texts(it["example"], it["candidate"]))
    assert leaks == []
    # the check is live: the authors' metadata (model_key, stage) would be found in every prompt
    it = items[0]
    leaky = {**it["example"], "bucket_id": f"{it['model']} stage={it['method']}"}
    prompt = tok.apply_chat_template(J.judge_messages(leaky, it["candidate"], it["candidate_id"], RUBRIC),
                                     tokenize=False, add_generation_prompt=True)
    assert set(J.blind_leaks(prompt, names, _texts(it["example"], it["candidate"]))) >= {it["model"], it["method"]}


def test_candidate_ids_are_opaque_and_unique(test_split):
    preds = {(m, meth): dict.fromkeys(test_split["id"], "x") for m in MODELS for meth in METHODS}
    items = J.judge_items(test_split, preds, salt=3, seed=0)
    ids = [it["candidate_id"] for it in items]
    assert len(set(ids)) == len(ids) and all(len(i) == 13 and i.startswith("c") for i in ids)
    # shuffled across methods: no long run of one method in the judging order
    runs, prev, longest = 0, None, 0
    for it in items:
        runs = runs + 1 if it["method"] == prev else 1
        prev, longest = it["method"], max(longest, runs)
    assert longest < 10


SMALL = replace(RUBRIC, rationale_max_chars=12, major_errors_max_items=1, major_error_max_chars=6)


def test_constrained_decoding_of_a_random_model_is_valid_json(chat_dir, test_split):
    "A random-weight model writes garbage; with the schema's logits processor every output parses and validates."
    rows = test_split.head(4).to_dict("records")
    out = {}
    for name, schema in (("free", None), ("constrained", J.judge_schema(SMALL))):
        jd = J.HFJudge(chat_dir, schema, dtype="float32")
        prompts = [jd.render(J.judge_messages(r, r["human_answer"], "c1", SMALL)) for r in rows]
        texts = jd(prompts, J.Attempt(400), seed=0) + jd(prompts[:2], J.Attempt(400, 0.9, 0.95), seed=1)
        out[name] = [J.parse_judgement(t, SMALL)[0] for t in texts]
    assert all(o is not None for o in out["constrained"]), out["constrained"]
    assert all(o is None for o in out["free"])
    assert all(set(o["scores"]) == set(SMALL.dims) for o in out["constrained"])




VERDICT = {"scores": {k: 4 for k in RUBRIC.dims}, "contradicts_context": False, "major_errors": [], "rationale": "ok"}


def _vllm_judge_dir(chat_dir, d):
    "A copy of the tiny checkpoint whose fake vLLM engine answers every request with VERDICT and the end of turn."
    import shutil
    shutil.copytree(chat_dir, d)
    (d / "fake_vllm_script.json").write_text(json.dumps({"text": json.dumps(VERDICT) + "<|im_end|>"}))
    return d


def test_vllm_judge_requests(fake_vllm, chat_dir, tmp_path, test_split):
    d, verdict = _vllm_judge_dir(chat_dir, tmp_path / "judge"), VERDICT
    jc = JudgeConfig(backend="vllm", vllm_max_model_len=4096)
    schema = J.judge_schema(RUBRIC)
    jd = J.VLLMJudge(d, schema, jc, seed=7, chat_kwargs={"enable_thinking": False})
    rows = test_split.head(3).to_dict("records")
    prompts = [jd.render(J.judge_messages(r, r["human_answer"], "c1", RUBRIC)) for r in rows]
    texts = jd(prompts, J.Attempt(384), seed=11) + jd(prompts[:1], J.Attempt(768, 0.7, 0.95), seed=12)
    assert [J.parse_judgement(t, RUBRIC)[0] for t in texts] == [verdict] * 4      # the end of turn is not in the text
    log = fake_vllm()
    [engine] = [e for e in log if e["event"] == "engine"]
    assert engine["kwargs"]["max_model_len"] == 4096 and engine["kwargs"]["generation_config"] == "vllm"
    reqs = [e["params"] for e in log if e["event"] == "request"]
    assert all(r["structured_outputs"]["json"] == schema for r in reqs)
    assert [(r["temperature"], r["max_tokens"]) for r in reqs] == [(0.0, 384)] * 3 + [(0.7, 768)]
    assert len({r["seed"] for r in reqs[:3]}) == 3                               # seeded per row
    assert all(r["stop_token_ids"] for r in reqs)
    with pytest.raises(Exception, match="needs vLLM"):
        sys.modules["vllm"] = None                                               # an environment without vLLM
        J.VLLMJudge(d, schema, jc, seed=7)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.builds(lambda a, b: a + b, st.text(max_size=20),
                                                  st.sampled_from([json.dumps({"scores": {}}), "{", "[]", "null"]))))
def test_parser_never_raises(text):
    obj, err = J.parse_judgement(text, RUBRIC)
    assert (obj is None) != (err is None)
    if obj is not None: assert set(obj["scores"]) == set(RUBRIC.dims)


class Scripted:
    "A judge backend that answers every prompt with `text(prompt, attempt)`; can crash after some calls."
    def __init__(self, text, crash_after=None): self.text, self.calls, self.crash_after = text, 0, crash_after
    def render(self, messages): return messages[1]["content"]
    def count(self, text): return len(text.split())
    def __call__(self, prompts, attempt, seed):
        if self.crash_after is not None and self.calls >= self.crash_after: raise RuntimeError("worker killed")
        self.calls += 1
        return [self.text(p, attempt) for p in prompts]


def _verdict(p, a):
    s = 5 if "&lt;" not in p else 2
    return json.dumps({"scores": {k: s for k in RUBRIC.dims}, "contradicts_context": False, "major_errors": [],
                       "rationale": "r"})


@pytest.fixture
def stage_run(run, tmp_path, monkeypatch, test_split):
    "A copy of the run with two methods' predictions and scripted judges in place of the models."
    cfg = load_config("tiny", [f"run_dir={tmp_path}", "judge.rows_per_language=3", "judge.bootstrap_samples=50",
                               "judge.unconstrained=[]", "judge.batch_size=4"])
    (tmp_path / "data").mkdir()
    test_split.to_parquet(tmp_path / "data" / "test.parquet")
    (tmp_path / "data" / "train.parquet").write_bytes((Path(run.run_dir) / "data" / "train.parquet").read_bytes())
    for m in ("full_sft", "hdpo"):
        write_jsonl(tmp_path / "predictions" / "tiny" / f"{m}.jsonl",
                    [{"id": i, "model": "tiny", "prediction": a}
                     for i, a in zip(test_split["id"], test_split["human_answer"])])
    backends = {}
    monkeypatch.setattr(J, "make_judge", lambda cfg, name, rubric, examples=None: backends[name])
    return cfg, backends


def test_stage_writes_table3_resumes_and_skips(stage_run):
    cfg, backends = stage_run
    backends.update(judge_a=Scripted(_verdict, crash_after=1), judge_b=Scripted(_verdict))
    with pytest.raises(RuntimeError, match="worker killed"):
        J.judge_stage(cfg)
    out = Path(cfg.run_dir)
    assert len(read_jsonl(out / "judge" / "judge_a.jsonl")) == 4                   # one batch landed before the crash
    backends.update(judge_a=Scripted(_verdict))
    res = J.judge_stage(cfg)
    rec = res.records["judge"]
    assert rec["judging"]["judge_a"] == {"judged": 8, "resumed_skipped": 4, "ok": 8, "error": 0}
    rows = read_jsonl(out / "judge" / "judge_a.jsonl")
    assert len(rows) == len({r["uid"] for r in rows}) == 12                       # 2 methods x 2 languages x 3 rows
    t3 = pd.read_csv(out / "tables" / "table3_judge.csv")
    assert len(t3) == 4 and set(t3["method"]) == {"Full-SFT", "HDPO"}
    for f in ("table3_judge.md", "table3_judge.tex", "table3_agreement.csv"): assert (out / "tables" / f).is_file()
    assert J.judge_stage(cfg).records["judge"]["last_action"] == "skipped"
    assert read_manifest(out)["stages"]["judge"]["sections"] == list(J.JUDGE_SECTIONS)


def test_stage_aborts_when_a_reference_changed(stage_run):
    cfg, backends = stage_run
    backends.update(judge_a=Scripted(_verdict), judge_b=Scripted(_verdict))
    J.judge_stage(cfg)
    p = Path(cfg.run_dir) / "data" / "test.parquet"
    t = pd.read_parquet(p)
    judged = read_jsonl(Path(cfg.run_dir) / "judge" / "judge_a.jsonl")[0]["id"]
    t.loc[t["id"] == judged, "human_answer"] = "a different reference"
    t.to_parquet(p)
    with pytest.raises(ValueError, match=f"differ from the test split: \\['{judged}'\\]"):
        J.judge_stage(cfg)


def test_config_errors():
    from polyalign.core import ConfigError
    for bad, msg in ((["judge.backend=tgi"], "hf or vllm"), (["judge.max_retries=3"], "0, 1 or 2"),
                     (["judge.unconstrained=[nobody]"], "unknown judges"),
                     (["judge.backend=vllm", "judge.unconstrained=[judge_a]"], "always use the schema")):
        with pytest.raises(ConfigError, match=msg):
            load_config("tiny", bad)


def test_vllm_judges_run_in_a_worker_that_resumes(fake_vllm, stage_run, chat_dir, monkeypatch):
    cfg, _ = stage_run
    monkeypatch.setattr(J, "make_judge", MAKE_JUDGE)                 # the real one (the worker process uses it too)
    d = str(_vllm_judge_dir(chat_dir, Path(cfg.run_dir) / "vllm-judge"))
    cfg = load_config("tiny", [f"run_dir={cfg.run_dir}", "judge.backend=vllm", f"judge.judges={{a: {d}, b: {d}}}",
                               "judge.rows_per_language=3", "judge.batch_size=4", "judge.bootstrap_samples=20",
                               "judge.max_new_tokens=600", "judge.retry_max_new_tokens=800",
                               f"generate.python={sys.executable}"])
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "1")
    with pytest.raises(RuntimeError, match="judge a: worker exit 17"):
        J.judge_stage(cfg)
    assert len(read_jsonl(Path(cfg.run_dir) / "judge" / "a.jsonl")) == 4          # the batch before the crash
    monkeypatch.delenv("FAKE_VLLM_CRASH_AFTER")
    rec = J.judge_stage(cfg).records["judge"]
    assert rec["judging"]["a"] == {"judged": 8, "resumed_skipped": 4, "ok": 8, "error": 0}
    engines = [e for e in fake_vllm() if e["event"] == "engine"]
    assert len({e["pid"] for e in engines}) == 3 and all(e["pid"] != os.getpid() for e in engines)
    t3 = pd.read_csv(Path(cfg.run_dir) / "tables" / "table3_judge.csv")
    assert (t3["avg_overall"] == 75.0).all()                                      # every score 4
