"""The tiny model factory: offline round trip, determinism, chat template, training-step size."""
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from polyalign.core import TinyModelSpec, file_hash
from polyalign.tiny import build_model, build_tiny

SPEC = TinyModelSpec(corpus_sentences=200)
MIXED = ["Who wrote 'Dream of the Red Chamber'? 曹雪芹写了《红楼梦》。", "第3章 costs $4.50, i.e. ¥32.",
         "  spaces\tand\nnewlines 全角，标点！ emoji 🙂 ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "混合 code: `x = f(y)` 结束"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "m"
    build_tiny(d, SPEC, seed=3)
    return d


def test_offline_round_trip_ids_and_logits(built):
    from polyalign.tiny import build_tokenizer, default_corpus
    fresh = build_tokenizer(default_corpus(3, SPEC.corpus_sentences), SPEC.vocab_size)
    tok = AutoTokenizer.from_pretrained(built)
    for s in MIXED:
        assert tok(s)["input_ids"] == fresh(s)["input_ids"], s
        assert tok.decode(tok(s)["input_ids"]) == fresh.decode(fresh(s)["input_ids"])
    m1 = AutoModelForCausalLM.from_pretrained(built)
    m2 = AutoModelForCausalLM.from_pretrained(built)
    batch = tok(MIXED, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(m1(**batch).logits, m2(**batch).logits)
    ref = build_model(fresh, SPEC, seed=3)
    with torch.no_grad():
        assert torch.equal(ref(**batch).logits, m1(**batch).logits)


def test_deterministic_for_seed(tmp_path):
    a, b, c = (build_tiny(tmp_path / n, SPEC, seed=s) for n, s in (("a", 7), ("b", 7), ("c", 8)))
    assert file_hash(a) == file_hash(b)
    assert file_hash(a / "model.safetensors") != file_hash(c / "model.safetensors")


def test_chat_template_marks_assistant_only(built):
    tok = AutoTokenizer.from_pretrained(built)
    msgs = [{"role": "system", "content": "zh|qa"}, {"role": "user", "content": "你好？"},
            {"role": "assistant", "content": "早上好"}, {"role": "user", "content": "再见"},
            {"role": "assistant", "content": "Bye 再见"}]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    picked = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert picked == "早上好<|im_end|>Bye 再见<|im_end|>"
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_generate_and_aux_kinds(built):
    "Greedy generate equals an argmax loop; the encoder and classifier load as the seed's models, shapes and fp32."
    tok = AutoTokenizer.from_pretrained(built)
    m = AutoModelForCausalLM.from_pretrained(built)
    ids = tok("Hello 你好", return_tensors="pt")
    n = ids["input_ids"].shape[1]
    out = m.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    seq = ids["input_ids"]
    with torch.no_grad():
        for _ in range(5): seq = torch.cat([seq, m(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out.shape == (1, n + 5) and torch.equal(out, seq)
    for kind, auto, field, shape in (("encoder", AutoModel, "last_hidden_state", (1, n, SPEC.hidden_size)),
                                     ("classifier", AutoModelForSequenceClassification, "logits", (1, 2))):
        d = build_tiny(built.parent / kind, SPEC, seed=3, kind=kind)
        with torch.no_grad():
            got = getattr(auto.from_pretrained(d)(**ids), field)
            fresh = getattr(build_model(tok, SPEC, seed=3, kind=kind)(**ids), field)
            other = getattr(build_model(tok, SPEC, seed=4, kind=kind)(**ids), field)
        assert got.shape == shape and got.dtype == torch.float32 and torch.isfinite(got).all(), kind
        assert torch.equal(got, fresh) and not torch.equal(got, other), kind   # the seed's model of that kind
    with pytest.raises(ValueError, match="unknown tiny model kind"):
        build_model(tok, SPEC, kind="vision")


def test_tiny_model_is_small_and_learns(built):
    "Sizing check: under a million parameters; three optimiser steps on 8 x 128 tokens lower the loss."
    tok = AutoTokenizer.from_pretrained(built)
    m = AutoModelForCausalLM.from_pretrained(built).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, len(tok), (8, 128))
    losses = []
    for _ in range(3):
        loss = m(input_ids=x, labels=x).loss
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]          # the model learns: a real gradient path
    assert sum(p.numel() for p in m.parameters()) < 1_000_000
