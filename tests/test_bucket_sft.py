"""Bucket-SFT trainer: Eq. 1 by hand, gradient-accumulation invariance, fp32 weights under bf16, resume, bad input;
the three SFT objectives (Full-SFT = Eq. 1 with w = 1, Bucket-SFT, TRL's token mean) by value;
the shared trainer layer (per-example columns, arguments, LoRA); the stage helpers."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings, strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyalign.bucket_sft import (SFT_OBJECTIVE, BucketSFTConfig, BucketSFTTrainer, ExtraColumnsCollator,
                                  SFTObjective, bucket_masses, bucket_weights, example_weights, fit_train_records,
                                  lora_config, macro_risk, make_sft_trainer, per_example_token_nll, sft_arguments,
                                  sft_dataset, sft_trainer, training_summary, weighted_risk)
from polyalign.core import ConfigError, PreferenceConfig, SFTStageConfig, TinyModelSpec, load_config, methods_for
from polyalign.tiny import build_tiny
from polyalign.train import TrainJob


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = build_tiny(tmp_path_factory.mktemp("bsft") / "m", TinyModelSpec(corpus_sentences=80, vocab_size=600), seed=1)
    return d, AutoTokenizer.from_pretrained(d)


def toy(n=4, weights=None):
    weights = weights or [0.5, 1.5, 2.0, 0.25][:n]
    return Dataset.from_list([{"id": f"t{i}", "weight": float(weights[i % len(weights)]),
                               "prompt": [{"role": "system", "content": "zh|multi|chat"},
                                          {"role": "user", "content": f"问题 {i}：what is {i}?"}],
                               "completion": [{"role": "assistant", "content": ("答 answer " * (i + 2)).strip()}]}
                              for i in range(n)])


def trainer(tiny, ds, out, **kw):
    d, tok = tiny
    base = dict(output_dir=str(out), report_to=[], max_length=96, use_cpu=True, save_strategy="no", disable_tqdm=True,
                seed=0, data_seed=0)
    base.update(kw)
    return BucketSFTTrainer(model=AutoModelForCausalLM.from_pretrained(d), args=BucketSFTConfig(**base),
                            train_dataset=ds, processing_class=tok)


def test_whole_set_in_one_batch_equals_eq1_by_hand(tiny, tmp_path):
    ds = toy(4)
    tr = trainer(tiny, ds, tmp_path, per_device_train_batch_size=4, max_steps=1)
    batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(4)]))
    ell = per_example_token_nll(tr.model, batch)
    by_hand = weighted_risk(ell.tolist(), ["a", "b", "c", "d"], dict(zip("abcd", ds["weight"])))
    assert tr.compute_loss(tr.model, dict(batch)).item() == pytest.approx(by_hand, rel=1e-5)


def test_weighted_loss_by_value_with_weights_not_averaging_one(tiny, tmp_path):
    "The loss is Σ_i w_i ℓ_i / |M| (ℓ_i each example's token-mean NLL), not / Σ w, on batches of 4 and 3 examples."
    ds = toy(4, [0.3, 2.5, 1.7, 0.9])                        # mean 1.35; answers of 17 to 41 supervised tokens
    tr = trainer(tiny, ds, tmp_path, per_device_train_batch_size=4, max_steps=1)
    for rows in ([0, 1, 2, 3], [1, 2, 3]):
        batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in rows]))
        with torch.no_grad():
            logits = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        labels = batch["labels"][:, 1:]
        supervised = labels != -100
        token_lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        ell = -(token_lp * supervised).sum(1) / supervised.sum(1)
        w = torch.tensor([ds["weight"][i] for i in rows], dtype=torch.float64)
        assert len(set(supervised.sum(1).tolist())) == len(rows)   # unequal lengths: a token mean would differ
        want = float((w * ell).sum() / len(rows))
        assert tr.compute_loss(tr.model, dict(batch)).item() == pytest.approx(want, rel=1e-5), rows


def _accumulated_grads(tiny, tmp_path, bs, ga):
    "Gradients after one optimiser step's worth of micro-batches, through the Trainer's own training_step (GA scaling)."
    tr = trainer(tiny, toy(4), tmp_path / f"{bs}x{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                 max_steps=1)
    tr.current_gradient_accumulation_steps = ga
    model = tr.model.train()
    model.zero_grad()
    examples = [tr.train_dataset[i] for i in range(4)]
    for s in range(0, 4, bs):
        tr.training_step(model, tr.data_collator(examples[s:s + bs]))
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def test_gradients_invariant_to_accumulation(tiny, tmp_path):
    a, b = _accumulated_grads(tiny, tmp_path, 4, 1), _accumulated_grads(tiny, tmp_path, 2, 2)
    assert max(float(v.abs().max()) for v in a.values()) > 1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_weights_stay_fp32_under_bf16(tiny, tmp_path, monkeypatch):
    "Under bf16 the weights reach the loss in fp32 though the Trainer casts floating inputs (as DeepSpeed bf16 does)."
    tr = trainer(tiny, toy(4, [0.3, 1.37, 2.01, 0.33]), tmp_path, per_device_train_batch_size=2, max_steps=1, bf16=True)

    def cast_floats(data):   # the Trainer's input preparation under a DeepSpeed bf16 config
        return {k: v.to(torch.bfloat16) if torch.is_floating_point(v) else v for k, v in data.items()}

    monkeypatch.setattr(tr, "_prepare_input", cast_floats)
    tr.train()
    assert tr.state.global_step == 1 and tr.last_weight_dtype == torch.float32
    assert {p.dtype for p in tr.model.parameters()} == {torch.float32}   # autocast, never bf16 storage


def test_resume_continues_at_the_right_step(tiny, tmp_path):
    kw = dict(per_device_train_batch_size=1, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1)
    tr = trainer(tiny, toy(4), tmp_path, **kw)
    tr.train()
    full = [h["loss"] for h in tr.state.log_history if "loss" in h]
    tr2 = trainer(tiny, toy(4), tmp_path, **kw)
    tr2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    resumed = [(h["step"], h["loss"]) for h in tr2.state.log_history if "loss" in h]
    # the checkpoint's history (steps 1-2) is restored, then steps 3-4 continue exactly as the uninterrupted run
    assert [s for s, _ in resumed] == [1, 2, 3, 4] and tr2.state.global_step == 4
    assert [l for _, l in resumed] == pytest.approx(full, rel=1e-4)


def test_unsupervised_examples_are_counted(tiny, tmp_path):
    ds = toy(3)
    long_prompt = [{"role": "user", "content": "很长的问题 " * 200}]
    ds = ds.add_item({"id": "long", "weight": 1.0, "prompt": long_prompt,
                      "completion": [{"role": "assistant", "content": "x"}]})
    tr = trainer(tiny, ds, tmp_path, per_device_train_batch_size=2, max_steps=1, max_length=48)
    assert tr.skipped_unsupervised == 1 and len(tr.train_dataset) == 3


def _records():
    base = dict(language="en", track="single", family="qa", style_bucket="", length_bin="short", dialogue_history=[],
                meta={})
    long_ctx = " ".join(f"sentence{i} of the passage." for i in range(300))
    return [{**base, "id": "long", "bucket_id": "en|single|qa|short", "question": "What is said last?",
             "context": long_ctx,
             "human_answer": "The passage ends with sentence299."},
            {**base, "id": "short", "bucket_id": "en|single|qa|medium", "question": "Why?", "context": "Because.",
             "human_answer": "Because it is so."}]


def test_long_context_is_cut_so_the_answer_is_trained(tiny, tmp_path):
    from polyalign.data import render_messages
    from polyalign.generate import answer_suffix
    from polyalign.core import DataConfig
    d, tok = tiny
    render = lambda r: render_messages(r, DataConfig())
    recs = _records()
    fitted, n_cut = fit_train_records(recs, tok, render, max_length=256)
    assert n_cut == 1 and fitted[1] == recs[1]                       # only the long one is cut
    kept = fitted[0]["context"]
    assert recs[0]["context"].endswith(kept) and 0 < len(kept) < len(recs[0]["context"])   # cut from the left
    assert kept.endswith("sentence299 of the passage.") and fitted[0]["question"] == recs[0]["question"]
    sft = SFTStageConfig(max_length=256, per_device_batch_size=2, examples_per_step=2)
    for method in methods_for("sft"):
        objective = asdict(SFT_OBJECTIVE[method])
        raw = make_sft_trainer(d, sft_dataset(recs, render), sft, tmp_path / f"raw-{method}", seed=0, **objective)
        cut = make_sft_trainer(d, sft_dataset(fitted, render), sft, tmp_path / f"cut-{method}", seed=0, **objective)
        # uncut, the answer lies past max_length and the example is dropped (and counted, by every trainer alike)
        assert (raw.skipped_unsupervised, cut.skipped_unsupervised) == (1, 0), method
        # fitted, the whole example fits: the template's end of turn and newline after the answer are not cut
        ids = cut.train_dataset[0]["input_ids"]
        end = tok(answer_suffix(tok), add_special_tokens=False)["input_ids"]
        assert len(ids) <= 256 and ids[-len(end):] == end and len(end) == 2, (method, len(ids))
    with pytest.raises(ValueError, match="answer_share"):
        fit_train_records(recs, tok, render, max_length=128, answer_share=1.5)


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        trainer(tiny, toy(4).select([]), tmp_path, per_device_train_batch_size=2, max_steps=1)
    with pytest.raises(ValueError, match="no 'weight' column"):
        trainer(tiny, toy(4).remove_columns("weight"), tmp_path, per_device_train_batch_size=2, max_steps=1)
    with pytest.raises(ValueError, match="finite and > 0"):
        trainer(tiny, toy(4, [1.0, float("nan"), 1.0, 1.0]), tmp_path, per_device_train_batch_size=2, max_steps=1)
    with pytest.raises(ValueError, match=r"finite and > 0 \(bad rows: \[2\]\)"):
        trainer(tiny, toy(4, [1.0, 1.0, 0.0, 1.0]), tmp_path, per_device_train_batch_size=2, max_steps=1)
    with pytest.raises(KeyError, match="missing from the weight table"):
        example_weights(["en|single|qa|short", "zh|multi|chat|long"], {"en|single|qa|short": 1.0})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("abcde"), min_size=1, max_size=300), st.data())
def test_theorem1_properties(buckets, data):
    losses = data.draw(st.lists(st.floats(0, 20, allow_nan=False), min_size=len(buckets), max_size=len(buckets)))
    table = bucket_weights(buckets)
    assert example_weights(buckets, table).mean() == pytest.approx(1.0, rel=1e-6)
    for mass in bucket_masses(buckets, table).values():
        assert mass == pytest.approx(1 / len(set(buckets)), rel=1e-6)
    # fp32 weights
    assert weighted_risk(losses, buckets, table) == pytest.approx(macro_risk(losses, buckets), rel=1e-6, abs=1e-6)


def test_bucket_weights_clip_then_renormalise_by_hand():
    "w_b = N / (|B| n_b); with a clip: clip, then rescale so the per-example weights average exactly 1."
    buckets = ["a"] * 6 + ["b"] * 3 + ["c"]                   # N = 10, |B| = 3
    plain = {"a": 10 / 18, "b": 10 / 9, "c": 10 / 3}
    assert bucket_weights(buckets) == pytest.approx(plain, rel=1e-12)
    clipped = {"a": 0.6, "b": 10 / 9, "c": 2.0}               # clip to [0.6, 2.0]
    c = 10 / (6 * 0.6 + 3 * 10 / 9 + 1 * 2.0)                  # N / Σ_b n_b w_b = 1.1194...: not 1
    table = bucket_weights(buckets, clip=(0.6, 2.0))
    assert table == pytest.approx({b: v * c for b, v in clipped.items()}, rel=1e-12)
    w = example_weights(buckets, table)
    assert w.dtype == np.float32 and w.tolist() == pytest.approx([table[b] for b in buckets])
    assert float(np.mean(w)) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ConfigError, match="0 < lo <= hi"):
        bucket_weights(buckets, clip=(2.0, 0.6))


@pytest.mark.parametrize("option", [{"packing": True}, {"padding_free": True}, {"loss_type": "dft"},
                                    {"label_smoothing_factor": 0.1}, {"weight_column": ""}])
def test_config_rejects_options_the_weighted_loss_ignores(tmp_path, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        BucketSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **option)


def test_custom_weight_column_reaches_the_loss(tiny, tmp_path):
    ds = toy(4).rename_column("weight", "w_b")
    tr = trainer(tiny, ds, tmp_path, per_device_train_batch_size=4, max_steps=1, weight_column="w_b")
    batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(4)]))
    assert "w_b" in batch and batch["w_b"].dtype == torch.float32 and "weight" not in batch
    assert tr.compute_loss(tr.model, dict(batch)).item() > 0


def test_extra_columns_collator_strips_and_casts():
    seen = []
    base = lambda ex: seen.extend(ex) or {"n": torch.tensor([len(e) for e in ex])}
    b = ExtraColumnsCollator(base, ("weight", "s_plus"))([{"a": 1, "weight": 2, "s_plus": -1}])
    assert seen == [{"a": 1}] and b["weight"].dtype == b["s_plus"].dtype == torch.float32
    assert b["s_plus"].tolist() == [-1.0]


def test_one_argument_builder_and_one_lora_builder_for_both_stages(tmp_path):
    from polyalign.hdpo import preference_arguments
    sft = SFTStageConfig(per_device_batch_size=2, examples_per_step=8, learning_rate=3e-4, max_length=77)
    pref = PreferenceConfig(per_device_batch_size=2, examples_per_step=8, learning_rate=3e-4, max_length=77)
    a = sft_arguments(sft, tmp_path, seed=5, weighted=True).to_dict()
    b = preference_arguments(pref, tmp_path, seed=5, hdpo=True).to_dict()
    for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "max_length", "seed",
              "data_seed", "save_strategy", "lr_scheduler_type", "warmup_steps", "use_cpu", "report_to"):
        assert a[k] == b[k], k
    assert a["gradient_accumulation_steps"] == 4
    assert lora_config(sft) is None and lora_config(pref) is None
    ls = lora_config(SFTStageConfig(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1,
                                    lora_target_modules="all-linear"))
    lp = lora_config(PreferenceConfig(lora=True, lora_r=4, lora_alpha=8))
    assert (ls.r, ls.lora_alpha, ls.lora_dropout) == (4, 8, 0.1)
    assert (lp.r, lp.lora_alpha, lp.lora_dropout) == (4, 8, 0.0)
    assert ls.target_modules == lp.target_modules == "all-linear" and ls.task_type == lp.task_type


def test_sft_objective_covers_exactly_the_sft_methods():
    assert tuple(sorted(SFT_OBJECTIVE)) == tuple(sorted(methods_for("sft")))
    assert SFT_OBJECTIVE["full_sft"] == SFTObjective("per_example", weighted=False)
    assert SFT_OBJECTIVE["bucket_sft"] == SFTObjective("per_example", weighted=True)
    assert SFT_OBJECTIVE["full_sft_trl"] == SFTObjective("trl", weighted=False)
    with pytest.raises(ValueError, match="no per-example weights"):
        SFTObjective("trl", weighted=True)
    with pytest.raises(ConfigError, match="not an SFT method"):
        sft_trainer(load_config("tiny"), TrainJob("sft", "tiny", "dpo", "en", init="-", output_dir="-"), toy(2))


# The three SFT objectives, each built as the `sft` stage builds it (`sft_trainer` from the method's name), on one
# micro-batch holding the whole set, checked by value against NLLs computed here from the model's logits. The model has
# learnt the long answers' pattern, so a short unfamiliar answer has a much higher token-mean NLL than the long ones and
# the two reductions differ by far more than the tolerances (an untrained model's NLL is ~log V on every token).

@pytest.fixture(scope="module")
def taught(tiny, tmp_path_factory):
    "The tiny model after 15 Adam steps on '答 answer' repeated, saved with its tokenizer."
    d, tok = tiny
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = tok("答 answer " * 24, return_tensors="pt")["input_ids"]
    for _ in range(15):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("taught")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, tok


UNEVEN = [0.3, 2.5, 1.7, 0.9]   # bucket weights far from 1: Full-SFT must ignore them


def mixed(weights=UNEVEN):
    "A short unfamiliar answer and three long familiar ones."
    answers = ["问题很难，不知道。", *(("答 answer " * k).strip() for k in (2, 4, 7))]
    return Dataset.from_list([{"id": f"t{i}", "weight": float(weights[i]),
                               "prompt": [{"role": "system", "content": "zh|multi|chat"},
                                          {"role": "user", "content": f"问题 {i}：what is {i}?"}],
                               "completion": [{"role": "assistant", "content": a}]} for i, a in enumerate(answers)])


def method_trainer(tiny, method, ds, out, per_device=None):
    "The trainer the `sft` stage builds for `method`; one optimiser step covers the whole of `ds`."
    d, _ = tiny
    n = per_device or len(ds)
    cfg = load_config("tiny", [f"run_dir={out}", f"sft.per_device_batch_size={n}", f"sft.examples_per_step={len(ds)}",
                               "sft.max_length=160", "sft.lora=false", "sft.bf16=false"])
    return sft_trainer(cfg, TrainJob("sft", "tiny", method, "en", init=str(d), output_dir=str(out / method)), ds)


def collate(tr, rows):
    return tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in rows]))


def token_nll(model, batch):
    "Per-example summed answer-token NLL and answer-token count T_i, from the full logits (float64, with autograd)."
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"][:, 1:]
    supervised = labels != -100
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return -(lp * supervised).sum(1), supervised.sum(1)


def reductions(tr) -> tuple[float, float, float]:
    "(the trainer's loss, the per-example mean, the token mean) on the 4 mixed-length answers, computed from logits."
    batch = collate(tr, range(4))
    with torch.no_grad():
        nll, T = token_nll(tr.model, batch)
    assert len(set(T.tolist())) == 4                                  # answers of 4 different lengths
    per_example, token_mean = float((nll / T).mean()), float(nll.sum() / T.sum())
    assert abs(per_example - token_mean) > 0.05 * per_example         # the two reductions differ here
    return tr.compute_loss(tr.model, dict(batch)).item(), per_example, token_mean


def test_full_sft_loss_is_the_mean_of_per_example_token_means(taught, tmp_path):
    "(a) Full-SFT: (1/|M|) Σ_i ℓ_i with ℓ_i each answer's token mean, not TRL's token mean over the batch."
    tr = method_trainer(taught, "full_sft", mixed(), tmp_path)
    assert isinstance(tr, BucketSFTTrainer) and tr.train_dataset["weight"] == [1.0] * 4
    loss, per_example, token_mean = reductions(tr)
    assert loss == pytest.approx(per_example, rel=1e-5)
    assert loss != pytest.approx(token_mean, rel=1e-3)


def test_full_sft_trl_loss_is_the_token_mean_over_the_batch(taught, tmp_path):
    "(b) Full-SFT (TRL loss): TRL's stock loss, Σ_i T_i ℓ_i / Σ_i T_i, so a long answer counts once per token."
    tr = method_trainer(taught, "full_sft_trl", mixed(), tmp_path)
    assert type(tr).__name__ == "SFTTrainer" and "weight" not in tr.train_dataset.column_names
    loss, per_example, token_mean = reductions(tr)
    assert loss == pytest.approx(token_mean, rel=1e-5)
    assert loss != pytest.approx(per_example, rel=1e-3)


def test_bucket_sft_with_unit_weights_is_full_sft(taught, tmp_path):
    "(c) Bucket-SFT and Full-SFT differ only in w: with every weight 1 the losses agree; with the weights they don't."
    full = method_trainer(taught, "full_sft", mixed(), tmp_path)
    unit = method_trainer(taught, "bucket_sft", mixed([1.0] * 4), tmp_path / "unit")
    weighted = method_trainer(taught, "bucket_sft", mixed(), tmp_path / "weighted")
    losses = [tr.compute_loss(tr.model, dict(collate(tr, range(4)))).item() for tr in (full, unit, weighted)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)
    args = [{k: v for k, v in tr.args.to_dict().items() if not k.endswith("_dir")} for tr in (full, unit)]
    assert type(full) is type(unit) and args[0] == args[1]          # the same trainer and arguments


@pytest.mark.parametrize("method", ["full_sft", "bucket_sft", "full_sft_trl"])
def test_an_accumulated_step_follows_the_objective(taught, tmp_path, method):
    """One optimiser step of 2 micro-batches x 2 examples, through the Trainer's own training_step (its accumulation
    scaling and TRL's `num_items_in_batch`), has the gradient of the method's objective over all 4 examples."""
    tr = method_trainer(taught, method, mixed(), tmp_path, per_device=2)
    assert tr.args.gradient_accumulation_steps == 2
    model = tr.model.train()
    micro = [collate(tr, [0, 1]), collate(tr, [2, 3])]
    n_items = tr._get_num_items_in_batch(micro, tr.args.device)
    tr.current_gradient_accumulation_steps = 2
    model.zero_grad()
    for b in micro:
        tr.training_step(model, dict(b), n_items)
    step = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad()
    nll, T = token_nll(model, collate(tr, range(4)))
    w = torch.tensor(UNEVEN if method == "bucket_sft" else [1.0] * 4, dtype=torch.float64)
    objective = (w * nll / T).mean() if method != "full_sft_trl" else nll.sum() / T.sum()
    objective.backward()
    assert max(float(v.abs().max()) for v in step.values()) > 1e-3
    for k, p in model.named_parameters():
        torch.testing.assert_close(step[k], p.grad.to(step[k].dtype), rtol=1e-4, atol=1e-6, msg=k)


def test_training_summary_reads_training_parts_only():
    recs = {"sft/tiny/full_sft/en": {"rows": {"in": 5}, "global_step": 2, "train_loss": 1.5},
            "preference/pairs/tiny/dpo/en": {"rows": {"in": 5}}}
    df = training_summary(recs)
    assert df.values.tolist() == [["tiny", "Full-SFT", "en", 5, 2, 1.5]]
