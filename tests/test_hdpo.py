"""HDPO trainer: equals TRL's sigmoid DPO at λ=0, w=1; weighted loss by hand; pair columns survive; ref variants."""
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from polyalign.core import ConfigError, TinyModelSpec, methods_for, write_jsonl
from polyalign.hdpo import (HDPO_OBJECTIVE, IGNORED_DPO_OPTIONS, HDPOConfig, HDPOTrainer, answer_policies,
                            check_prediction_ids, hdpo_loss, preference_arguments)
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


def test_weighted_loss_by_hand(tiny, tmp_path):
    d, tok = tiny
    ds = pairs(weights=(0.5, 2.0, 1.0, 0.5))
    h = HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                    args=HDPOConfig(output_dir=str(tmp_path / "h"), hdpo_lambda=0.3, p_mode="summed", **COMMON),
                    train_dataset=ds, processing_class=tok)
    with torch.no_grad():
        for p in h.model.parameters(): p.add_(0.01)
    b = _batch(h)
    loss = h.compute_loss(h.model, dict(b)).item()
    # by hand from full logits
    with torch.no_grad():
        def seq_logps(model):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
            return (lp * b["completion_mask"][:, 1:]).sum(1)
        pc, pr = seq_logps(h.model).chunk(2); rc, rr = seq_logps(h.ref_model).chunk(2)
    margin = (pc - rc) - (pr - rr)
    p = torch.sigmoid(0.1 * (pc - pr))
    reg = p * b["s_plus"] + (1 - p) * b["s_minus"]
    by_hand = (b["weight"] * (-F.logsigmoid(0.1 * margin) + 0.3 * reg)).mean().item()
    assert loss == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("variant", ["precompute", "lora"])
def test_reference_variants_train(tiny, tmp_path, variant):
    d, tok = tiny
    kw = dict(COMMON, max_steps=2, per_device_train_batch_size=2, logging_steps=1)
    extra = {}
    if variant == "precompute":
        kw["precompute_ref_log_probs"] = True
    else:
        from peft import LoraConfig
        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    h = HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), args=HDPOConfig(output_dir=str(tmp_path), **kw),
                    train_dataset=pairs(), processing_class=tok, **extra)
    h.train()
    logs = [x for x in h.state.log_history if "loss" in x]
    assert logs and all(k in logs[0] for k in ("hdpo/dpo_loss", "hdpo/regularizer", "hdpo/p_mean", "hdpo/weight_mean",
                                                "hdpo/s_gap", "rewards/accuracies"))
    if variant == "lora":
        # reference = the adapter disabled: margin 0 at the start
        assert logs[0]["hdpo/dpo_loss"] == pytest.approx(0.6931, abs=1e-3)


def test_missing_pair_columns(tiny, tmp_path):
    d, tok = tiny
    with pytest.raises(ValueError, match="no 's_plus' column"):
        HDPOTrainer(model=AutoModelForCausalLM.from_pretrained(d), ref_model=AutoModelForCausalLM.from_pretrained(d),
                    args=HDPOConfig(output_dir=str(tmp_path), **COMMON), train_dataset=pairs().remove_columns("s_plus"),
                    processing_class=tok)


def test_hdpo_loss_modes():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown p_mode"):
        hdpo_loss(z, z, z, z, z, z, z + 1, p_mode="nope")
    loss, parts = hdpo_loss(chosen_logps=torch.tensor([-10.0, -5]), rejected_logps=torch.tensor([-20.0, -5]),
                            ref_chosen_logps=z, ref_rejected_logps=z, chosen_scores=z, rejected_scores=z + 1,
                            weights=z + 1, p_mode="length_normalized", chosen_lengths=torch.tensor([5.0, 5]),
                            rejected_lengths=torch.tensor([10.0, 5]))
    assert torch.allclose(parts["p"], torch.sigmoid(torch.tensor([0.0, 0.1 * (-1 + 1)])))
    # λ scales the regulariser only; the weights scale each pair's whole term
    base, _ = hdpo_loss(z - 1, z - 2, z, z, z + 0.2, z + 0.8, z + 1, hdpo_lambda=0.0)
    lam, parts = hdpo_loss(z - 1, z - 2, z, z, z + 0.2, z + 0.8, z + 1, hdpo_lambda=0.5)
    assert lam.item() == pytest.approx(base.item() + 0.5 * parts["reg"].mean().item())
    w2, _ = hdpo_loss(z - 1, z - 2, z, z, z + 0.2, z + 0.8, z + 2, hdpo_lambda=0.5)
    assert w2.item() == pytest.approx(2 * lam.item())


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
    assert args.loss_type == ["sigmoid"] and (args.hdpo_lambda, args.p_mode) == (0.1, "margin")


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
    assert set(HDPO_OBJECTIVE) == set(methods_for("preference")) and sum(HDPO_OBJECTIVE.values()) == 1
    assert answer_policies(["dpo", "hdpo"]) == ["full_sft", "bucket_sft"] and answer_policies(["dpo"]) == ["full_sft"]
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
