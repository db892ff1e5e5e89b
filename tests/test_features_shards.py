"""The features stage in shards (resume after a failed shard, identity of a shard, sharded = one pass) and the LM
scorer's chunked head (equal to the full-logits computation for every tiny model family)."""
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polyalign import features
from polyalign.core import SPLITS, TinyModelSpec, load_config, read_manifest, write_parquet
from polyalign.features import (LM_FEATURE_NAMES, TEXT_FEATURE_NAMES, LMScorer, feature_scorer, feature_shards,
                                features_stage, lm_condition_text, shard_identity_of, target_logprobs)
from polyalign.tiny import build_tiny

OUTPUTS = [f"features/{s}.parquet" for s in SPLITS] + ["features/references.parquet", "features/catalogue.json"]
ROWS = {"train": 24, "val": 7, "test": 9}
SHARD = 5  # train: 5 shards, val: 2, test: 2
EN = ["The capital of France is Paris.", "I think you should try restarting it first, then check the logs!",
      "Yes.", "Honestly? I don't know. Maybe ask the library; they keep the 1998 records.", ""]
ZH = ["巴黎是法国的首都。", "我觉得你应该先重启一下，然后再看看日志！", "好的。", "说实话？我不知道。也许可以问问图书馆。",
      "水在海平面一百摄氏度沸腾。"]


def _split(split: str, n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        lang = "zh" if i % 2 else "en"
        hist = [{"role": "user", "text": "Hello"}, {"role": "assistant", "text": "Hi"}] if i % 3 == 0 else []
        rows.append({"id": f"{split}-{i:03d}", "language": lang, "bucket_id": f"{lang}|single|qa|short",
                     "question": f"question {i}?", "context": "some context" if i % 4 else "", "dialogue_history": hist,
                     "human_answer": (EN if lang == "en" else ZH)[i % 5] + (" again" * (i % 7))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    "Data splits in the data stage's schema and the run's tiny scorer model."
    run = tmp_path_factory.mktemp("shards") / "base"
    for s, n in ROWS.items(): write_parquet(run / "data" / f"{s}.parquet", _split(s, n))
    build_tiny(run / "models" / "tiny", TinyModelSpec(corpus_sentences=80, vocab_size=600), seed=0)
    return run


def _copy(base: Path, to: Path) -> Path:
    for d in ("data", "models"): shutil.copytree(base / d, to / d)
    return to


def _cfg(run: Path, **over):
    return load_config("tiny", {"run_dir": str(run), "features.min_bucket_count": 3, "features.shard_rows": SHARD,
                                "features.lm_max_length": 48, "features.lm_batch_size": 4, **over})


def _shard_order(run: Path) -> list[str]:
    "The first id of every shard, in the order the stage computes them."
    return [df["id"].iloc[k] for s in SPLITS for df in [pd.read_parquet(run / "data" / f"{s}.parquet")]
            for k in range(0, len(df), SHARD)]


@pytest.fixture(scope="module")
def clean_run(base_run, tmp_path_factory) -> Path:
    run = _copy(base_run, tmp_path_factory.mktemp("clean") / "run")
    features_stage(_cfg(run))
    return run


def _counting(monkeypatch, fail_at: int | None = None) -> list[str]:
    "Patch the per-shard function to record the first id of every shard it computes (and raise at call `fail_at`)."
    calls, real = [], features.shard_features

    def shard_features(cfg, frame, scorer, prompts):
        calls.append(frame["id"].iloc[0])
        if len(calls) == fail_at: raise RuntimeError(f"shard {fail_at} failed")
        return real(cfg, frame, scorer, prompts)
    monkeypatch.setattr(features, "shard_features", shard_features)
    return calls


@pytest.mark.parametrize("fail_at", [3, 7])   # inside the train split; in the second split (val)
def test_failed_shard_propagates_and_the_rerun_resumes_there(base_run, clean_run, tmp_path, monkeypatch, fail_at):
    run, order = _copy(base_run, tmp_path / "run"), _shard_order(base_run)
    calls = _counting(monkeypatch, fail_at)
    with pytest.raises(RuntimeError, match=f"shard {fail_at} failed"):
        features_stage(_cfg(run))
    assert calls == order[:fail_at]
    assert read_manifest(run)["stages"]["features"]["status"] == "running"
    shard_files = sorted(p for p in (run / "features" / "shards").rglob("*") if p.is_file())
    assert len(shard_files) == fail_at - 1 and all(f.suffix == ".parquet" for f in shard_files)  # no partial file
    assert (run / "features" / "train.parquet").exists() == (fail_at > 5)     # train has 5 shards

    calls = _counting(monkeypatch)
    rec = features_stage(_cfg(run)).records["features"]
    assert calls == order[fail_at - 1:]                        # shards before the failed one were not recomputed
    assert rec["status"] == "done" and rec["last_action"] == "ran"
    assert sum(v["kept"] for v in rec["features"]["shards"].values()) == fail_at - 1
    assert {s: v["shards"] for s, v in rec["features"]["shards"].items()} == {"train": 5, "val": 2, "test": 2}
    for rel in OUTPUTS:                                        # the resumed run wrote what a clean run writes
        assert (run / rel).read_bytes() == (clean_run / rel).read_bytes(), rel
    assert rec["outputs"] == read_manifest(clean_run)["stages"]["features"]["outputs"]


def test_shard_identity_decides_what_is_recomputed(base_run, tmp_path, monkeypatch):
    run = _copy(base_run, tmp_path / "run")
    features_stage(_cfg(run))
    calls = _counting(monkeypatch)
    rec = features_stage(_cfg(run, **{"features.min_bucket_count": 30})).records["features"]   # Λ_b's option only
    assert rec["last_action"] == "ran" and calls == [] and rec["features"]["eligible_buckets"] == 0
    train = pd.read_parquet(run / "data" / "train.parquet")
    train.loc[13, "human_answer"] = "A different answer."                                    # row 13: train shard 2
    write_parquet(run / "data" / "train.parquet", train)
    features_stage(_cfg(run))
    assert calls == ["train-010"]
    assert pd.read_parquet(run / "features" / "train.parquet").loc[13, "word_count"] == 3
    cfg, shards = _cfg(run, **{"features.lm_max_length": 40}), run / "features" / "shards" / "train"
    calls.clear()
    feature_shards(cfg, "train", feature_scorer(cfg))                                        # changes LM values
    assert calls == _shard_order(run)[:5]
    (shards / "00001.parquet").write_bytes(b"not parquet")                                  # a damaged shard
    write_parquet(shards / "00003.parquet", pd.read_parquet(shards / "00003.parquet"))      # one without identity
    (shards / ".00004.parquet.x.tmp").write_bytes(b"partial")                               # left by a killed run
    (shards / "00099.parquet").write_bytes(b"stale")                                        # of a longer split
    assert shard_identity_of(shards / "00001.parquet") is None
    calls.clear()
    frame, files, kept = feature_shards(cfg, "train", feature_scorer(cfg))
    assert calls == ["train-005", "train-015"] and kept == 3 and len(files) == 5
    assert sorted(p.name for p in shards.iterdir()) == [f"{k:05d}.parquet" for k in range(5)]
    assert frame.columns.tolist() == ["id", "language", "bucket_id", "split"] and len(frame) == ROWS["train"]


def test_sharded_outputs_equal_one_pass(base_run, tmp_path):
    "Text features: byte for byte. LM features: to float32 rounding (a shard changes which rows share a padded batch)."
    out = {}
    for lm in (False, True):
        for rows in (SHARD, 10**9):
            run = _copy(base_run, tmp_path / f"{lm}-{rows}")
            features_stage(_cfg(run, **{"features.lm_features": lm, "features.shard_rows": rows}))
            out[lm, rows] = run
    for rel in OUTPUTS:
        assert (out[False, SHARD] / rel).read_bytes() == (out[False, 10**9] / rel).read_bytes(), rel
    for s in SPLITS:
        a, b = (pd.read_parquet(out[True, r] / "features" / f"{s}.parquet") for r in (SHARD, 10**9))
        pd.testing.assert_frame_equal(a[["id", *TEXT_FEATURE_NAMES]], b[["id", *TEXT_FEATURE_NAMES]])
        np.testing.assert_allclose(a[LM_FEATURE_NAMES], b[LM_FEATURE_NAMES], rtol=1e-5, atol=1e-5)
        pd.testing.assert_frame_equal(a[["id", *TEXT_FEATURE_NAMES]],
                                      pd.read_parquet(out[False, SHARD] / "features" / f"{s}.parquet"))
    assert len(list((out[True, SHARD] / "features" / "shards" / "train").glob("*.parquet"))) == 5
    assert json.loads((out[True, SHARD] / "manifest.json").read_text())["stages"]["features"]["features"]["shards"] == \
        {"train": {"shards": 5, "kept": 0}, "val": {"shards": 2, "kept": 0}, "test": {"shards": 2, "kept": 0}}


def _full_logits_surprisals(sc: LMScorer, seqs, n_scored):
    "The scorer's computation before the chunked head: the model's logits of the last k + 1 positions of a batch."
    out = [np.zeros(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for b in range(0, len(order), sc.batch_size):
        idx = [i for i in order[b:b + sc.batch_size] if n_scored[i] > 0]
        if not idx: continue
        L, k = max(len(seqs[i]) for i in idx), max(n_scored[i] for i in idx)
        ids = torch.full((len(idx), L), sc.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, L - len(seqs[i]):] = torch.tensor(seqs[i]); mask[r, L - len(seqs[i]):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = sc.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=k + 1).logits
            for r, i in enumerate(idx):
                n = n_scored[i]
                lp = torch.log_softmax(logits[r, -n - 1:-1].float(), dim=-1)
                out[i] = (-lp.gather(1, ids[r, L - n:][:, None])[:, 0]).double().numpy()
    return out


@pytest.fixture(scope="module", params=["chatml", "llama3", "gemma2"])
def family_model(request, tmp_path_factory) -> Path:
    spec = TinyModelSpec(corpus_sentences=80, vocab_size=600)
    path = build_tiny(tmp_path_factory.mktemp(request.param) / "tiny", spec, seed=1, family=request.param)
    if request.param == "gemma2":                       # a cap the tiny model's small logits actually reach
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["final_logit_softcapping"] == 30.0
        cfg["final_logit_softcapping"] = 0.05
        (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_chunked_scorer_equals_full_logits(family_model):
    answers = ["The sky is blue because of Rayleigh scattering.", "", "天空是蓝色的。", "ok " * 30, "Why?"]
    prompts = [lm_condition_text("Why is the sky blue?", "Some context " * 5)] * len(answers)
    ref = LMScorer(family_model, device="cpu", dtype="float32", max_length=40, batch_size=2)
    ref._surprisals = partial(_full_logits_surprisals, ref)
    expected = ref.score(answers, prompts).values
    rng = np.random.default_rng(0)
    seqs = [[ref.start_id] + rng.integers(1, 600, n).tolist() for n in (3, 17, 39, 1, 25)]
    n_scored = [2, 17, 30, 0, 1]
    for chunk in (1, 7, 10**6):
        sc = LMScorer(family_model, device="cpu", dtype="float32", max_length=40, batch_size=2, chunk_tokens=chunk)
        got = sc.score(answers, prompts).values
        # float32 features: summed surprisals reach ~170, where one unit in the last place is 1.5e-5
        np.testing.assert_allclose(np.nan_to_num(got, nan=-1), np.nan_to_num(expected, nan=-1), rtol=1e-6, atol=1e-5)
        for a, b in zip(sc._surprisals(seqs, n_scored), _full_logits_surprisals(sc, seqs, n_scored)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    if sc.softcap is not None:                          # Gemma-2: without the cap the result would differ
        ids = torch.tensor([seqs[2]])
        with torch.no_grad():
            h = sc.base(input_ids=ids).last_hidden_state[0, :-1]
            capped, plain = (target_logprobs(sc.head, h, ids[0, 1:], 7, cap) for cap in (sc.softcap, None))
        assert (capped - plain).abs().max() > 1e-2
