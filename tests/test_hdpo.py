"""HDPO: the loss by value in every p mode and Theorem 5's pair weights by hand; the trainer equals TRL's sigmoid DPO
at λ=0, w=1, its weighted loss by hand in every p mode, pair columns survive, the reference each variant names; pairs
fit whole by SFT's rule and TRL receives them uncut, drops counted by reason, weights of mean 1 over the pairs kept, and
the p mode of each preference method."""
import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from polyalign.core import ConfigError, TinyModelSpec, methods_for, write_jsonl
from polyalign.hdpo import (HDPO_OBJECTIVE, IGNORED_DPO_OPTIONS, HDPOConfig, HDPOTrainer, PairDPOTrainer,
                            PairWeightConfig, answer_policies, check_prediction_ids, fit_pair_prompts, fit_pair_weights,
                            hdpo_loss, pair_method, pair_path, pair_tokens, preference_arguments, preference_part,
                            preference_trainer, prepare_pairs, rarity)
from polyalign.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = build_tiny(tmp_path_factory.mktemp("hdpo") / "m", TinyModelSpec(corpus_sentences=80, vocab_size=600), seed=4)
    return d, AutoTokenizer.from_pretrained(d)


def pairs(n=4, weights=(1.0, 1.0, 1.0, 1.0)):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"问题 {i}: what is {i}?"}],
                               "chosen": [{"role": "assistant", "content": f"It is {i}. 是{i}。"}],
                               "rejected": [{"role": "assistant", "content": "I do not know, sorry " * (1 + i % 2)}],
                               "weight": float(weights[i % len(weights)]), "s_plus": 0.1 * i, "s_minus": 1.0 + 0.2 * i}
                              for i in range(n)])


COMMON = dict(per_device_train_batch_size=4, max_steps=1, report_to=[], use_cpu=True, save_strategy="no",
              disable_tqdm=True, beta=0.1, max_length=96, seed=0)


def _batch(tr, n=4):
    return tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(n)]))


def test_lambda0_unit_weights_equals_trl_sigmoid(tiny, tmp_path):
    d, tok = tiny
    ds = pairs()
    h = HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                    args=HDPOConfig(output_dir=str(tmp_path / "h"), hdpo_lambda=0.0, **COMMON), train_dataset=ds,
                    processing_class=tok)
    t = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                   args=DPOConfig(output_dir=str(tmp_path / "t"), loss_type=["sigmoid"], **COMMON),
                   train_dataset=ds.remove_columns(["weight", "s_plus", "s_minus"]), processing_class=tok)
    # perturb the policy so the margin is not zero, identically in both
    for m in (h.model, t.model):
        torch.manual_seed(0)
        with torch.no_grad():
            for p in m.parameters(): p.add_(0.02 * torch.randn_like(p))
    hb, tb = _batch(h), _batch(t)
    # the pair columns survive collation, as fp32
    assert {"weight", "s_plus", "s_minus"} <= set(hb) and hb["weight"].dtype == torch.float32
    lh = h.compute_loss(h.model, dict(hb)).item()
    lt = t.compute_loss(t.model, dict(tb)).item()
    assert lh == pytest.approx(lt, abs=1e-5) and abs(lh - 0.6931) > 1e-4


def seq_logps(model, b):
    "Summed log-probs of each sequence's completion tokens, from the full logits."
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    return (lp * b["completion_mask"][:, 1:]).sum(1).double()


def hdpo_by_hand(pc, pr, rc, rr, sp, sm, w, lc, lr, *, p_mode, beta, lam):
    "Eqs. 6-10 in float64: the per-pair DPO term, p, R, the margin, and the loss (1/K) Σ_i w_i (L_DPO + λ R)."
    pc, pr, rc, rr, sp, sm, w, lc, lr = (np.asarray(x, np.float64) for x in (pc, pr, rc, rr, sp, sm, w, lc, lr))
    margin = (pc - rc) - (pr - rr)
    dpo = np.log1p(np.exp(-beta * margin))                   # −log σ(β margin)
    delta = {"summed": pc - pr, "length_normalized": pc / lc - pr / lr, "margin": margin}[p_mode]
    p = 1 / (1 + np.exp(-beta * delta))
    reg = p * sp + (1 - p) * sm
    return float(np.mean(w * (dpo + lam * reg))), {"dpo": dpo, "reg": reg, "p": p, "margin": margin}


def test_weighted_loss_by_hand(tiny, tmp_path):
    "The trainer's loss (1/K) Σ w_i (L_DPO + λ R) from full logits in every p mode (the default, summed, first)."
    d, tok = tiny
    ds = pairs(weights=(0.5, 2.5, 1.0, 0.75))                 # mean 1.1875: a Σw normaliser would show
    h = HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                    args=HDPOConfig(output_dir=str(tmp_path / "h"), hdpo_lambda=0.3, **COMMON), train_dataset=ds,
                    processing_class=tok)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in h.model.parameters(): p.add_(0.02 * torch.randn_like(p))
    b = _batch(h)
    (pc, pr), (rc, rr) = seq_logps(h.model, b).chunk(2), seq_logps(h.ref_model, b).chunk(2)
    lc, lr = b["completion_mask"].sum(1).chunk(2)
    assert (lc != lr).all() and ((rc - rr) - (pc - pr)).abs().min() > 0.05   # unequal lengths; reference ≠ policy
    losses = {}
    for mode in ("summed", "margin", "length_normalized"):
        if mode != "summed": h.args.p_mode = mode
        want, _ = hdpo_by_hand(pc, pr, rc, rr, b["s_plus"], b["s_minus"], b["weight"], lc, lr, p_mode=mode, beta=0.1,
                               lam=0.3)
        losses[mode] = h.compute_loss(h.model, dict(b)).item()
        assert losses[mode] == pytest.approx(want, rel=1e-4), mode
    assert len({round(v, 4) for v in losses.values()}) == 3   # the modes give different losses on this batch


@pytest.mark.parametrize("variant", ["precompute", "lora"])
def test_reference_variants_train(tiny, tmp_path, variant):
    "A training step scores the policy against the initial model, its reference (precomputed, or the adapter off)."
    d, tok = tiny
    kw = dict(COMMON, logging_steps=1, p_mode="margin")       # one step of 4 pairs: every pair, in some order
    extra = {}
    if variant == "precompute":
        kw["precompute_ref_log_probs"] = True
    else:
        from peft import LoraConfig
        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    h = HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), args=HDPOConfig(output_dir=str(tmp_path), **kw),
                    train_dataset=pairs(weights=(0.5, 2.5, 1.0, 0.75)), processing_class=tok, **extra)
    torch.manual_seed(0)
    with torch.no_grad():   # move the policy away from the initial model (the adapter only, with LoRA)
        for p in h.model.parameters():
            if p.requires_grad: p.add_((0.02 if variant == "precompute" else 0.1) * torch.randn_like(p))
    b = _batch(h)
    (pc, pr), (rc, rr) = seq_logps(h.model, b).chunk(2), seq_logps(AutoModelForCausalLM.from_pretrained(d), b).chunk(2)
    want, parts = hdpo_by_hand(pc, pr, rc, rr, b["s_plus"], b["s_minus"], b["weight"], 1, 1, p_mode="margin",
                               beta=0.1, lam=0.1)                   # lengths: unused in margin mode
    assert np.abs(parts["margin"]).min() > 0.05               # a policy used as its own reference would give 0
    h.train()
    (log,) = [x for x in h.state.log_history if "loss" in x]
    # float32 sums of ~100-nat log-probs in another batch order differ by ~1e-3: absolute tolerances, far below the
    # gap to a policy scored against itself (margin 0, DPO term log 2)
    assert log["rewards/margins"] == pytest.approx(0.1 * parts["margin"].mean(), abs=2e-3)
    assert log["hdpo/dpo_loss"] == pytest.approx(parts["dpo"].mean(), abs=2e-3)
    assert log["hdpo/p_mean"] == pytest.approx(parts["p"].mean(), abs=2e-3)
    assert log["loss"] == pytest.approx(want, abs=2e-3)
    assert log["hdpo/regularizer"] == pytest.approx(parts["reg"].mean(), abs=2e-3)
    assert log["rewards/accuracies"] == np.mean(parts["margin"] > 0)
    gap = float((b["s_plus"] - b["s_minus"]).mean())
    assert (log["hdpo/weight_mean"], log["hdpo/s_gap"]) == pytest.approx((1.1875, gap))


def test_missing_pair_columns(tiny, tmp_path):
    d, tok = tiny
    with pytest.raises(ValueError, match="no 's_plus' column"):
        HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                    args=HDPOConfig(output_dir=str(tmp_path), **COMMON), train_dataset=pairs().remove_columns("s_plus"),
                    processing_class=tok)


# three pairs: reference log-probs unlike the policy's, answers of unequal lengths, weights of mean 1.4 (not 1)
CASE = dict(pc=[-12.0, -30.0, -8.0], pr=[-20.0, -14.0, -9.5], rc=[-13.5, -26.0, -7.0], rr=[-17.0, -15.0, -12.0],
            sp=[0.2, 0.9, -0.3], sm=[1.1, 0.4, 0.6], w=[0.5, 2.5, 1.2], lc=[6.0, 20.0, 4.0], lr=[16.0, 7.0, 5.0])


def _loss_of_case(**kw):
    t = {k: torch.tensor(v) for k, v in CASE.items()}
    return hdpo_loss(t["pc"], t["pr"], t["rc"], t["rr"], t["sp"], t["sm"], t["w"], chosen_lengths=t["lc"],
                     rejected_lengths=t["lr"], **kw)


@pytest.mark.parametrize("p_mode", ["summed", "length_normalized", "margin"])
def test_hdpo_loss_by_value_in_every_p_mode(p_mode):
    "Loss and per-pair parts (DPO term, p, R, margin) equal Eqs. 6-10 by hand in each p mode."
    loss, parts = _loss_of_case(beta=0.2, hdpo_lambda=0.7, p_mode=p_mode)
    want, want_parts = hdpo_by_hand(**CASE, p_mode=p_mode, beta=0.2, lam=0.7)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    for k, v in want_parts.items():
        np.testing.assert_allclose(parts[k].numpy(), v, rtol=1e-5, err_msg=k)


def test_hdpo_loss_defaults_and_bad_mode():
    "Without options the loss is Eq. 9's summed mode at β = 0.1, λ = 0.1 (the config defaults); a bad mode fails."
    loss, _ = _loss_of_case()
    assert loss.item() == pytest.approx(hdpo_by_hand(**CASE, p_mode="summed", beta=0.1, lam=0.1)[0], rel=1e-6)
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown p_mode"):
        hdpo_loss(z, z, z, z, z, z, z + 1, p_mode="nope")


def test_theorem5_pair_weights_by_hand():
    "Theorem 5 on 8 pairs with buckets and languages of 5, 2, 1: rarity, δ = [s⁻ − s⁺]₊, clip, then mean 1."
    buckets = ["a"] * 5 + ["b"] * 2 + ["c"]
    langs = ["en", "zh", "en", "en", "en", "ar", "zh", "en"]
    s_plus = [0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4, 0.2]
    s_minus = [0.6, 0.2, 0.2, 0.1, 1.9, 0.8, 0.1, 2.0]   # δ = 0.5, 0 (s⁺ > s⁻), 0, 0 (s⁺ > s⁻), 1.9, 0.5, 0, 1.8
    types = ["global", "local", "global", "distribution", "global", "global", "local", "global"]   # ρ = 0, 0.5, 1
    # N = 8 over 3 keys of 5, 2, 1: r = max(0, 8 / (3 n) − 1) = 0, 1/3, 5/3, divided by the largest, 5/3
    g, h = {"a": 0.0, "b": 0.2, "c": 1.0}, {"en": 0.0, "zh": 0.2, "ar": 1.0}
    # 1 + 0.5 g + 1.0 δ + 0.25 h + 0.25 ρ, pair by pair
    raw = np.array([1 + 0.5, 1 + 0.25 * 0.2 + 0.25 * 0.5, 1, 1 + 0.25 * 1, 1 + 1.9, 1 + 0.5 * 0.2 + 0.5 + 0.25 * 1,
                    1 + 0.5 * 0.2 + 0.25 * 0.2 + 0.25 * 0.5, 1 + 0.5 * 1 + 1.8])
    clipped = np.minimum(np.maximum(raw, 1.1), 2.5)          # 1.0 -> 1.1; 2.9, 3.3 -> 2.5
    cfg = PairWeightConfig(alpha=0.5, beta=1.0, gamma=0.25, eta=0.25, w_min=1.1, w_max=2.5)
    w, tables = fit_pair_weights(buckets, langs, s_plus, s_minus, types, cfg)
    assert tables.g == pytest.approx(g) and tables.h == pytest.approx(h)
    assert tables.mean_raw == pytest.approx(clipped.mean(), rel=1e-9) and clipped.mean() != pytest.approx(1.0)
    np.testing.assert_allclose(w, clipped / clipped.mean(), rtol=1e-6)
    assert w.dtype == np.float32 and float(w.mean()) == pytest.approx(1.0, rel=1e-6)
    assert rarity(["x", "y", "y", "x"]) == {"x": 0.0, "y": 0.0}   # every key at the average: all 0


REJECTED = [("loss_type", ["ipo"]), ("loss_type", ["sigmoid", "sft"]), ("loss_weights", [0.5]),
            ("label_smoothing", 0.1), ("ld_alpha", 0.5), ("f_divergence_type", "js_divergence"),
            ("f_alpha_divergence_coef", 0.3), ("use_weighting", True), ("discopop_tau", 0.1)]


@pytest.mark.parametrize("option,value", REJECTED)
def test_config_rejects_dpo_options_the_hdpo_loss_ignores(tmp_path, option, value):
    with pytest.raises(ConfigError, match=f"ignores {option}="):
        HDPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{option: value})


def test_every_ignored_option_is_tested_and_defaults_are_accepted(tmp_path):
    assert {o for o, _ in REJECTED} == set(IGNORED_DPO_OPTIONS)
    args = HDPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], loss_type="sigmoid", loss_weights=[1.0])
    assert args.loss_type == ["sigmoid"] and (args.hdpo_lambda, args.p_mode) == (0.1, "summed")


@pytest.mark.parametrize("field,value,msg", [("p_mode", "mean", "unknown p_mode"), ("hdpo_lambda", -1.0, "hdpo_lambda"),
                                             ("hdpo_lambda", float("inf"), "hdpo_lambda"), ("beta", 0.0, "beta"),
                                             ("beta", float("nan"), "beta")])
def test_config_validates_its_fields(tmp_path, field, value, msg):
    with pytest.raises(ConfigError, match=msg):
        HDPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{field: value})


def test_trainer_needs_an_hdpo_config(tiny, tmp_path):
    d, tok = tiny
    with pytest.raises(TypeError, match="needs an HDPOConfig"):
        HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                    args=DPOConfig(output_dir=str(tmp_path), **COMMON), train_dataset=pairs(), processing_class=tok)


def test_bad_pair_columns(tiny, tmp_path):
    d, tok = tiny
    for col, value, msg in [("weight", 0.0, "'weight' values must be finite and > 0"),
                            ("s_minus", float("nan"), "'s_minus' values must be finite")]:
        ds = pairs().map(lambda e, i: {col: value if i == 1 else e[col]}, with_indices=True)
        with pytest.raises(ValueError, match=msg):
            HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d),
                        ref_model=AutoModelForCausalLM.from_pretrained(d),
                        args=HDPOConfig(output_dir=str(tmp_path), **COMMON), train_dataset=ds, processing_class=tok)


def test_stage_vocabulary_comes_from_the_registry():
    assert set(HDPO_OBJECTIVE) == set(methods_for("preference")) and sum(HDPO_OBJECTIVE.values()) == 2
    assert answer_policies(["dpo", "hdpo"]) == ["full_sft", "bucket_sft"] and answer_policies(["dpo"]) == ["full_sft"]
    assert answer_policies(["dpo", "hdpo", "hdpo_margin"]) == ["full_sft", "bucket_sft"]
    from polyalign.core import PreferenceConfig
    a = preference_arguments(PreferenceConfig(per_device_batch_size=2, examples_per_step=2), "o", seed=0, hdpo=False)
    assert type(a) is DPOConfig and a.loss_type == ["sigmoid"]


def test_prediction_ids_must_match_the_test_split(tmp_path):
    from types import SimpleNamespace
    cfg = SimpleNamespace(run_dir=str(tmp_path))
    test = {"id": ["a", "b"]}
    with pytest.raises(FileNotFoundError):
        check_prediction_ids(cfg, test)
    write_jsonl(tmp_path / "predictions" / "tiny" / "dpo.jsonl", [{"id": "a"}, {"id": "b"}])
    write_jsonl(tmp_path / "predictions" / "tiny" / "hdpo.jsonl", [{"id": "b"}, {"id": "a"}])
    assert check_prediction_ids(cfg, test) == ["tiny/dpo", "tiny/hdpo"]
    write_jsonl(tmp_path / "predictions" / "m2" / "hdpo.jsonl", [{"id": "a"}])   # another model, one id short
    with pytest.raises(ValueError, match="m2/hdpo"):
        check_prediction_ids(cfg, test)


# ---- pairs that fit whole, drops by reason, weights over the pairs kept, p mode per method ----

def record(i, context="", history=(), question=None, answer=None, bucket="en|single|qa|short"):
    return {"id": f"r{i}", "dataset": "dolly", "split": "train", "language": "en", "track": "single", "family": "qa",
            "style_bucket": "qa_search", "length_bin": "short", "bucket_id": bucket,
            "question": question or f"What is {i}?", "context": context, "dialogue_history": list(history),
            "human_answer": answer or f"It is {i}.", "answer_tokens": 3, "group_id": f"r{i}", "meta": "{}"}


def built_pairs(recs, rejected, tok):
    "Pairs as the stage builds them: the human answer ≻ `rejected(i)`, prompts from the shared renderer."
    from polyalign.data import renderer
    from polyalign.hdpo import build_pairs
    render = renderer(None, tok)
    pairs, dropped = build_pairs(recs, [{"id": r["id"], "prediction": rejected(i)} for i, r in enumerate(recs)], render)
    assert not dropped
    return pairs, render


def test_pairs_are_cut_by_the_sft_rule_or_dropped_by_reason(tiny):
    "A prompt too long loses what SFT's `fit_train_records` cuts for the same room, then fits; the rest are counted."
    from polyalign.bucket_sft import fit_train_records
    d, tok = tiny
    L = 256
    hist = [{"role": "user", "text": "an old question " * 8}, {"role": "assistant", "text": "an old answer " * 8}]
    recs = [record(0, context="background words " * 10, history=hist), record(1),
            record(2, answer="word " * 100),               # the chosen (human) answer alone is longer than L
            record(3, question="Why is that so? " * 40)]   # the question is never cut, and too long with any answer
    pairs, render = built_pairs(recs, lambda i: "zero " * 10, tok)
    before = [pair_tokens(tok, p["prompt"], p) for p in pairs]
    assert before[0] > L >= before[1]                            # pair 0 needs a cut, pair 1 fits as it is
    kept, dropped, n_cut = fit_pair_prompts([dict(p) for p in pairs], recs, tok, render, L)
    assert [p["id"] for p in kept] == ["r0", "r1"] and n_cut == 1
    assert dict(dropped) == {"answer_too_long": 1, "question_and_answer_too_long": 1}
    assert kept[1]["prompt"] == pairs[1]["prompt"] and pair_tokens(tok, kept[0]["prompt"], kept[0]) <= L
    # SFT's rule with the same room for the answer: fit_train_records leaves the answer and the template's end of turn
    from polyalign.generate import answer_suffix
    count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])
    build = lambda r: tok.apply_chat_template(render(r), tokenize=False, add_generation_prompt=True)
    room, answer, suffix = before[0] - count(build(recs[0])), "zero " * 10, count(answer_suffix(tok))
    sft_len = L - room + count(answer) + suffix
    (sft,), sft_cut = fit_train_records(recs[:1], tok, render, sft_len, answer_share=0.5, answers=[answer])
    assert sft_cut == 1 and count(answer) + suffix <= 0.5 * sft_len
    assert kept[0]["prompt"] == render(sft)
    # oldest history first, then the start of the context: all history gone, a proper suffix of the context kept
    assert sft["dialogue_history"] == [] and 0 < len(sft["context"]) < len(recs[0]["context"])
    assert recs[0]["context"].endswith(sft["context"])


def test_weights_have_mean_one_over_the_pairs_kept(tiny):
    "Theorem 5 is fit after every filter: bucket b cannot fit, one pair is over the cap, one has no critic score."
    d, tok = tiny
    recs = [record(i, bucket="a" if i < 6 else "b", answer=None if i < 6 else "word " * 100) for i in range(9)]
    pairs, render = built_pairs(recs, lambda i: f"no idea {i}", tok)
    s_plus = lambda ps: np.array([0.1 * int(p["id"][1:]) if p["bucket_id"] == "a" else 0.0 for p in ps])
    scores = lambda ps: (np.where(np.arange(len(ps)) == 0, np.nan, s_plus(ps)), np.ones(len(ps)))
    out, dropped, _ = prepare_pairs([dict(p) for p in pairs], recs, tok, render, 256, cap=5, seed=3, scores=scores)
    assert dict(dropped) == {"answer_too_long": 3, "over_cap": 1, "no_critic_score": 1}
    w = np.array([p["weight"] for p in out])
    assert len(out) == 4 and {p["bucket_id"] for p in out} == {"a"}
    assert w.mean() == pytest.approx(1.0, abs=1e-6)
    want, _ = fit_pair_weights(["a"] * 4, ["en"] * 4, s_plus(out), np.ones(4), ["global"] * 4)
    np.testing.assert_allclose(w, want, rtol=1e-6)
    assert [p["s_plus"] for p in out] == pytest.approx(s_plus(out).tolist())
    # the weights fit on all 9 pairs built (scarce bucket b: g = 1) average below 1 over the pairs of bucket a
    every, _ = fit_pair_weights([p["bucket_id"] for p in pairs], ["en"] * 9, s_plus(pairs), np.ones(9), ["global"] * 9)
    assert every[:6].mean() < 0.9


def test_trl_receives_every_pair_whole(tiny, tmp_path):
    "Unfitted pairs: TRL drops and would truncate some, and both trainers refuse them; fitted, all arrive whole."
    from polyalign.core import PreferenceConfig
    from polyalign.hdpo import make_preference_trainer
    d, tok = tiny
    L = 256
    recs = [record(i, context="background words " * n) for i, n in enumerate((0, 4, 10, 10, 12, 30))]
    pairs, render = built_pairs(recs, lambda i: "I do not know, sorry " * (1 + i % 3), tok)
    for p in pairs: p.update(weight=1.0, s_plus=0.1, s_minus=0.9)
    kw = dict(COMMON, max_length=L)
    model = lambda: AutoModelForCausalLM.from_pretrained(d)
    stock = DPOTrainer(model=model(), ref_model=model(), args=DPOConfig(output_dir=str(tmp_path / "t"), **kw),
                       train_dataset=Dataset.from_list(pairs).remove_columns(["weight", "s_plus", "s_minus"]),
                       processing_class=tok)
    lengths = [len(x["prompt_ids"]) + max(len(x["chosen_ids"]), len(x["rejected_ids"])) for x in stock.train_dataset]
    assert len(stock.train_dataset) < len(pairs) and max(lengths) > L     # what TRL does to them silently
    with pytest.raises(ValueError, match="TRL dropped 2 of 6 pairs and 2 are longer than max_length=256"):
        HDPOTrainer(model=model(), ref_model=model(), args=HDPOConfig(output_dir=str(tmp_path / "h"), **kw),
                    train_dataset=Dataset.from_list(pairs), processing_class=tok)
    pref = PreferenceConfig(per_device_batch_size=2, examples_per_step=2)
    with pytest.raises(ValueError, match="TRL dropped"):
        make_preference_trainer(d, Dataset.from_list(pairs), pref, tmp_path / "d", hdpo=False, seed=0, max_length=L)
    kept, dropped, n_cut = fit_pair_prompts([dict(p) for p in pairs], recs, tok, render, L)
    assert (len(kept), dict(dropped), n_cut) == (6, {}, 4)
    for tr in (HDPOTrainer(model=model(), ref_model=model(), args=HDPOConfig(output_dir=str(tmp_path / "h"), **kw),
                           train_dataset=Dataset.from_list(kept), processing_class=tok),
               make_preference_trainer(d, Dataset.from_list(kept), pref, tmp_path / "d", hdpo=False, seed=0,
                                       max_length=L)):
        ds = tr.train_dataset
        assert len(ds) == 6
        b = tr.data_collator([ds[i] for i in range(6)])
        assert b["input_ids"].shape[1] <= L
        n_chosen, n_rejected = b["completion_mask"].sum(1).chunk(2)              # every answer token is trained on
        assert n_chosen.tolist() == [len(x["chosen_ids"]) for x in ds]
        assert n_rejected.tolist() == [len(x["rejected_ids"]) for x in ds]
        full = [len(x["prompt_ids"]) + len(x[k]) for k in ("chosen_ids", "rejected_ids") for x in ds]
        assert b["attention_mask"].sum(1).tolist() == full
    assert type(tr) is PairDPOTrainer


@pytest.mark.parametrize("p_mode", ["summed", "length_normalized"])
def test_each_method_trains_with_its_p_mode(tiny, tmp_path, p_mode):
    "hdpo takes `preference.p_mode` (summed, Eq. 9, by default); hdpo_margin always the margin, on hdpo's pairs."
    from polyalign.core import PreferenceConfig, stage_config
    from polyalign.train import TrainJob
    d, _ = tiny
    assert PreferenceConfig().p_mode == "summed"
    cfg = stage_config(None, [f"run_dir={tmp_path}", f"preference.p_mode={p_mode}",
                              "preference.per_device_batch_size=4", "preference.examples_per_step=4"])
    got = {}
    for m in methods_for("preference"):
        tr = preference_trainer(cfg, TrainJob("preference", "tiny", m, "en", init=str(d), output_dir=str(tmp_path / m)),
                                pairs())
        got[m] = (type(tr), getattr(tr.args, "p_mode", None))
    assert got == {"dpo": (PairDPOTrainer, None), "hdpo": (HDPOTrainer, p_mode),
                   "hdpo_margin": (HDPOTrainer, "margin")}
    # the same pair file as hdpo (same init, critic and weights); checkpoints of its own
    assert pair_method("hdpo_margin") == "hdpo" and pair_method("dpo") == "dpo"
    assert pair_path(cfg, "tiny", "hdpo_margin", "en") == pair_path(cfg, "tiny", "hdpo", "en")
    import shutil
    shutil.copytree(d, tmp_path / "checkpoints" / "tiny" / "bucket_sft-en" / "final")   # its init, Bucket-SFT
    part = preference_part(cfg, "tiny", "hdpo_margin", "en", pairs())
    assert part.part == "preference/train/tiny/hdpo_margin/en"
    assert part.job.output_dir.endswith("checkpoints/tiny/hdpo_margin-en")
    assert str(pair_path(cfg, "tiny", "hdpo", "en")) in map(str, part.inputs)
