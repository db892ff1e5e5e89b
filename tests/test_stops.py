"""Where answers end and where prompts begin, for tiny models shaped like the paper's three chat families.

Each family's tiny model is fitted to one conversation that goes on after the answer (answer, end of turn, an invented
next user turn), the way a fine-tuned base model does when nothing stops it. Generation must end at the end-of-turn
token, although the checkpoint's eos is the base model's (Qwen2.5 base: <|endoftext|>, not <|im_end|>)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyalign.core import GenerateConfig, TinyModelSpec, read_jsonl
from polyalign.data import template_messages
from polyalign.generate import (PLAIN_STOPS, HFGenerator, encode_prompt, encode_prompts, end_of_turn_token, generate,
                                plain_prompt, stop_token_ids)
from polyalign.tiny import build_tiny

ANSWER = "The tower is in Paris."
TURNS = [{"role": "user", "content": "Where is the tower?"}, {"role": "assistant", "content": ANSWER},
         {"role": "user", "content": "And the bridge?"}]
GREEDY = GenerateConfig(temperature=0.0, repetition_penalty=1.0, frequency_penalty=0.0, max_new_tokens=40)
BASE_EOS = {"chatml": "<|endoftext|>", "llama3": "<|end_of_text|>", "gemma2": "<eos>"}


def _fit(model, ids, steps=150):
    "Fit the model to one token sequence (greedy decoding then replays it)."
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.tensor([ids])
    model.train()
    for _ in range(steps):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(); loss.backward(); opt.step()
        if loss.item() < 0.01: break
    return model.eval()


@pytest.fixture(scope="module", params=["chatml", "llama3", "gemma2"])
def fitted(request, tmp_path_factory):
    "(family, checkpoint dir, prompt ids): a checkpoint with its base model's eos that learned to run on after a turn."
    family = request.param
    d = build_tiny(tmp_path_factory.mktemp(family) / "m", TinyModelSpec(corpus_sentences=100, vocab_size=700), seed=3,
                   family=family)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    tok.eos_token = BASE_EOS[family]                                       # as the base checkpoints are
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    msgs = template_messages(TURNS, tok)
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert full.startswith(prompt)
    prompt_ids = encode_prompt(tok, prompt)
    _fit(model, prompt_ids + tok(full[len(prompt):], add_special_tokens=False)["input_ids"])
    model.save_pretrained(d); tok.save_pretrained(d)
    return family, d, prompt_ids


def test_chat_answers_stop_at_the_end_of_turn(fitted):
    family, d, prompt_ids = fitted
    g = HFGenerator(d, GREEDY, seed=0)
    eot = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma2": "<end_of_turn>"}[family]
    assert end_of_turn_token(g.tok) == eot and g.tok.convert_tokens_to_ids(eot) in g.stop_ids
    [p] = encode_prompts(g, [{"id": "a", "question": "q"}], lambda r: g.chat_text(TURNS[:1]), 100)
    assert p.ids == prompt_ids
    [row] = g([p])
    assert (row["prediction"], row["finish_reason"]) == (ANSWER, "stop")
    g.stop_ids = [g.tok.eos_token_id]                                      # stopping at the base eos alone
    [runs_on] = g([p])
    assert runs_on["prediction"] != ANSWER and runs_on["completion_tokens"] > row["completion_tokens"]


def test_bos_exactly_once(fitted):
    family, d, prompt_ids = fitted
    tok = AutoTokenizer.from_pretrained(d)
    bos = tok.bos_token_id
    n_bos = lambda ids: ids.count(bos) if bos is not None else 0
    rec = {"id": "x", "question": "Where?", "context": "", "dialogue_history": [], "language": "en",
           "style_bucket": "qa_search"}
    expect = 0 if family == "chatml" else 1
    assert n_bos(prompt_ids) == expect and prompt_ids[:1] == ([bos] if expect else prompt_ids[:1])
    for text in (plain_prompt(rec), plain_prompt(rec, cot=True)):
        ids = encode_prompt(tok, text)
        assert n_bos(ids) == expect and (not expect or ids[0] == bos)


def test_plain_prompts_stop_at_the_stop_strings(tmp_path):
    "A base model that writes an answer and then invents the next block stops before the block."
    d = build_tiny(tmp_path / "m", TinyModelSpec(corpus_sentences=100, vocab_size=700), seed=4)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    rec = {"id": "p", "question": "Where is the tower?", "context": "", "dialogue_history": [], "language": "en",
           "style_bucket": "qa_search"}
    prompt = plain_prompt(rec)
    tail = " Paris.\nQuestion:\nAnd the bridge?\n\nAnswer: London."
    _fit(model, encode_prompt(tok, prompt) + tok(tail, add_special_tokens=False)["input_ids"])
    model.save_pretrained(d)
    g = HFGenerator(d, GREEDY, seed=0)
    generate(g, [rec], "base_lm", tmp_path / "p.jsonl", model_name="tiny", progress=False)
    [row] = read_jsonl(tmp_path / "p.jsonl")
    assert (row["prediction"], row["finish_reason"]) == ("Paris.", "stop")
    [p] = encode_prompts(g, [rec], plain_prompt, 100)
    assert "Question:" in g([p])[0]["prediction"]                         # no stop strings: it runs on
    assert "\nQuestion:" in PLAIN_STOPS and stop_token_ids(tok) == sorted({tok.eos_token_id,
                                                                           tok.convert_tokens_to_ids("<|im_end|>")})
