"""The source adapters on hand-written raw rows: field mapping, multi-turn expansion, filters, malformed rows."""
import gzip
import json
import zipfile
import io

import pytest

from polyalign.core import DataConfig
from polyalign.data import render_messages
from polyalign.sources import (SOURCES, RawRow, RowError, adapt_rows, read_dailydialog_zip, read_dureader_zip,
                               read_jsonl_rows, split_eou)


def run(name, rows, split=None, policy=None, cfg=None, index=None):
    spec = SOURCES[name]
    split = split or spec.splits[0][0]
    policy = policy or dict(spec.splits)[split]
    raws = [r if isinstance(r, RawRow) else RawRow(split, f"{name}/raw", i, row=r) for i, r in enumerate(rows)]
    idx = spec.prepare([r.row for r in raws if r.error is None]) if spec.prepare else index
    return adapt_rows(spec, cfg or DataConfig(), [(split, policy, iter(raws), idx)])


def reasons(res):
    return [(r["row_index"], r["field"], r["reason"]) for r in res.rejected]


def test_dolly_mapping_and_malformed():
    res = run("dolly", [{"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
                        {"instruction": "Summarise", "context": "Long  text\r\nhere", "response": "Short.", "category": "summarization"},
                        {"instruction": "No answer", "context": "", "category": "open_qa"},
                        {"instruction": "Number", "response": 7},
                        {"instruction": "  ", "response": "x"}])
    a, b = res.records
    assert (a["id"], a["question"], a["human_answer"], a["bucket_id"]) == ("dolly-train-000000", "Name a colour.", "Blue.", "en|single|assistant|short")
    assert b["context"] == "Long text\nhere" and json.loads(b["meta"])["category"] == "summarization"
    assert reasons(res) == [(2, "response", "missing field"), (3, "response", "wrong type: expected str, got int"), (4, "instruction", "empty text")]
    assert res.rows_in == 5 and a["split"] in ("train", "val", "test")


def test_eli5_best_answer_filter_and_malformed():
    row = {"q_id": "q1", "title": "Why?", "selftext": "Body text", "answers": {"text": ["low", "", "high"], "score": [1, 99, 5]}}
    res = run("eli5_category", [row, {"q_id": "q2", "title": "T", "answers": {"text": [" "], "score": [1]}},
                                {"q_id": "q3", "title": "T", "answers": {"text": "oops", "score": [1]}},
                                {"q_id": "q4", "title": "T", "answers": {"text": ["a"], "score": ["high"]}}], split="test")
    (r,) = res.records
    assert (r["question"], r["human_answer"], r["split"], r["id"]) == ("Why?\n\nBody text", "high", "test", "eli5-test-000000")
    assert res.filtered == {"no_answer": 1}
    assert [x[1] for x in reasons(res)] == ["answers.text", "answers.score[0]"]


@pytest.mark.parametrize("where, expect", [("test", "test"), ("val", "val")])
def test_eli5_validation2_policy(where, expect):
    res = run("eli5_category", [{"q_id": "v", "title": "T", "answers": {"text": ["a"], "score": [1]}}], split="validation2",
              policy=where)
    assert res.records[0]["split"] == expect


def test_split_eou_keeps_letters():
    line = "ok, sure __eou__ use it __eou__ oh you __eou__"
    assert split_eou(line) == ["ok, sure", "use it", "oh you"]
    assert line.strip().strip("__eou__").split("__eou__")[0].strip() == "k, sure"   # the authors' bug, for the record


def test_dailydialog_expansion_and_malformed():
    res = run("dailydialog", [{"dialogue": "oh hi __eou__ Hello! __eou__ How are you? __eou__ Fine. __eou__ ", "act": "1 2 3 4", "emotion": "0 0 0 1"},
                              {"dialogue": "a __eou__ b __eou__", "act": "1", "emotion": "0 0"},
                              {"dialogue": "a __eou__  __eou__ c __eou__", "act": "1 1 1", "emotion": "0 0 0"},
                              RawRow("train", "dailydialog/train.zip", 3, error=RowError("dialogue", "bad encoding: invalid UTF-8 at byte 3"))])
    a, b = res.records
    assert (a["question"], a["human_answer"], a["dialogue_history"]) == ("oh hi", "Hello!", [])
    assert (b["question"], b["human_answer"]) == ("How are you?", "Fine.")
    assert b["dialogue_history"] == [{"role": "user", "text": "oh hi"}, {"role": "assistant", "text": "Hello!"}]
    assert json.loads(b["meta"])["target_act"] == "4" and a["group_id"] == b["group_id"] and a["id"].endswith("turn-001")
    assert [x[1:] for x in reasons(res)] == [("act", "1 labels for 2 utterances"), ("dialogue", "empty utterance at turn 1"),
                                            ("dialogue", "bad encoding: invalid UTF-8 at byte 3")]
    assert [m["role"] for m in render_messages(b)] == ["system", "user", "assistant", "user"]


def test_dailydialog_zip_reader():
    files = {"x/dialogues_test.txt": "a __eou__ b __eou__\nc __eou__ d __eou__\n", "x/dialogues_act_test.txt": "1 2\n3 4\n",
             "x/dialogues_emotion_test.txt": "0 0\n"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in files.items(): z.writestr(k, v)
    rows = list(read_dailydialog_zip(buf.getvalue(), "test", "dd/test.zip"))
    assert rows[0].row == {"dialogue": "a __eou__ b __eou__", "act": "1 2", "emotion": "0 0"}
    assert rows[1].error.field == "emotion" and "missing line" in rows[1].error.reason


def _marco(**kw):
    row = {"query": "what is x", "query_id": 1, "query_type": "DESCRIPTION", "answers": ["An answer."], "wellFormedAnswers": [],
           "passages": {"is_selected": [0, 1, 0], "passage_text": ["p0", "p1", "p2"], "url": ["a", "b", "c"]}}
    row.update(kw)
    return row


def test_ms_marco_mapping_filters_and_malformed():
    res = run("ms_marco", [_marco(), _marco(query_id=2, wellFormedAnswers=["Well formed."]),
                           _marco(query_id=3, passages={"is_selected": [0, 0, 0, 0], "passage_text": ["a", "b", "c", "d"]}),
                           _marco(query_id=4, answers=["No Answer Present."]), _marco(query_id=5, answers=[]),
                           {"query": "q", "query_id": 6, "answers": ["a"]}], split="validation")
    a, b, c = res.records
    assert (a["context"], a["human_answer"], a["split"], a["id"]) == ("p1", "An answer.", "val", "ms-marco-validation-1")
    assert b["human_answer"] == "Well formed." and json.loads(b["meta"])["used_well_formed_answer"]
    assert c["context"] == "a\n\nb\n\nc"
    assert res.filtered == {"unanswerable": 1, "no_answer": 1}
    assert reasons(res) == [(5, "passages", "missing field")]
    kept = run("ms_marco", [_marco(answers=["No Answer Present."])], cfg=DataConfig(paper_compat_keep_unanswerable=True))
    assert kept.records[0]["human_answer"] == "No Answer Present."


def test_coqa_turns_unknown_and_malformed():
    row = {"source": "race", "story": "Ann went home.", "questions": ["Who?", "Where?", "Why?"],
           "answers": {"input_text": ["Ann", "home", "unknown"]}}
    res = run("coqa", [row, {"story": "s", "questions": "Who?", "answers": {"input_text": ["x"]}},
                       {"story": "s", "questions": ["a", "b"], "answers": {"input_text": ["x"]}}], split="validation")
    a, b = res.records
    assert (a["split"], b["question"], b["context"]) == ("test", "Where?", "Ann went home.")
    assert b["dialogue_history"] == [{"role": "user", "text": "Who?"}, {"role": "assistant", "text": "Ann"}]
    assert res.filtered == {"unanswerable": 1}
    assert [x[1] for x in reasons(res)] == ["questions", "answers.input_text"]
    both = run("coqa", [row, dict(row)], split="train")
    assert len({r["split"] for r in both.records}) == 1   # split by story: one story, one split


def test_squad_v2_unanswerable_and_paragraph_split():
    rows = [{"id": f"q{i}", "title": "T", "context": "Paris is the capital.", "question": "What?", "answers": {"text": ["Paris"] if i < 3 else [], "answer_start": [0]}}
            for i in range(4)]
    rows.append({"id": "bad", "title": "T", "context": "c", "question": "q", "answers": {"answer_start": [0]}})
    res = run("squad_v2", rows, split="train")
    assert len(res.records) == 3 and len({r["split"] for r in res.records}) == 1 and res.filtered == {"unanswerable": 1}
    assert reasons(res) == [(4, "answers.text", "missing field")]
    compat = run("squad_v2", rows[3:4], split="validation", cfg=DataConfig(paper_compat_keep_unanswerable=True))
    assert compat.records[0]["human_answer"] == "" and compat.records[0]["length_bin"] == "short"


def test_natural_questions():
    res = run("natural_questions", [{"query": "who wrote hamlet", "answer": "Hamlet is a tragedy by William Shakespeare."},
                                    {"query": "", "answer": "x"}, {"query": "q"}])
    assert res.records[0]["id"] == "natural-questions-train-000000" and res.records[0]["context"] == ""
    assert [x[1:] for x in reasons(res)] == [("query", "empty text"), ("answer", "missing field")]


def test_multiwoz_turns_acts_and_malformed():
    d = {"dialogue_id": "PMUL1.json", "services": ["hotel"], "turns": [
        {"turn_id": "0", "speaker": "USER", "utterance": "I need a hotel.", "frames": [{"state": {"active_intent": "find_hotel"}}]},
        {"turn_id": "1", "speaker": "SYSTEM", "utterance": "Which area?", "frames": []},
        {"turn_id": "2", "speaker": "USER", "utterance": "North.", "frames": []},
        {"turn_id": "3", "speaker": "SYSTEM", "utterance": "", "frames": []}]}
    acts = {"PMUL1.json": {"1": {"dialog_act": {"Hotel-Request": [["area", "?"]]}}}}
    bad = {"dialogue_id": "X.json", "turns": [{"turn_id": "0", "utterance": "hi"}]}
    res = run("multiwoz", [d, bad], split="test", index=acts)
    (r,) = res.records
    meta = json.loads(r["meta"])
    assert (r["question"], r["human_answer"], r["split"], meta["dialogue_act_types"], meta["active_intents"]) == \
        ("I need a hotel.", "Which area?", "test", ["Hotel-Request"], ["find_hotel"])
    assert res.filtered == {"empty_turn": 1}
    assert reasons(res) == [(1, "turns[0].speaker", "missing field")]


def test_coig_cqia_filters():
    base = {"instruction": "问题？", "input": "", "output": "回答。", "answer_from": "human", "human_verified": True}
    res = run("coig_cqia", [base, dict(base, output="另一个回答。", answer_from="llm"), dict(base, output="三。", human_verified="no"),
                            dict(base, output=""), dict(base, output=["x"])], split="zhihu")
    (r,) = res.records
    assert (r["id"], r["language"], r["bucket_id"]) == ("coig-cqia-zhihu-000000", "zh", "zh|single|assistant|short")
    assert res.filtered == {"not_human_answer": 1, "not_human_verified": 1, "empty_answer": 1}
    assert reasons(res) == [(4, "output", "wrong type: expected str, got list")]


def test_hc3_one_example_per_human_answer():
    res = run("hc3_chinese", [{"id": 7, "question": "为什么？", "human_answers": ["因为。", "", "所以。"], "chatgpt_answers": ["AI"], "source": "baike"},
                              {"id": 8, "human_answers": ["x"], "source": "baike"}])
    a, b = res.records
    assert (a["id"], b["id"], a["split"] == b["split"]) == ("hc3-chinese-baike-7-answer-00", "hc3-chinese-baike-7-answer-02", True)
    assert reasons(res) == [(1, "question", "missing field")]


def test_jsonl_reader_bad_lines():
    data = b'{"a": 1}\n\n\xff\xfe\n{"a": \n'
    rows = list(read_jsonl_rows(data, "train", "f.jsonl"))
    assert [r.row for r in rows] == [{"a": 1}, None, None]
    assert rows[1].error.reason.startswith("bad encoding") and rows[2].error.reason.startswith("invalid JSON")
    assert [r.index for r in rows] == [0, 2, 3]


def _msg(mid, parent, role, text, tree="t1", **kw):
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": text, "lang": "zh",
            "deleted": False, "review_result": True, "tree_state": "ready_for_export", "rank": 0, **kw}


def test_oasst2_threads_siblings_and_filters():
    rows = [_msg("p0", None, "prompter", "你好？"), _msg("a1", "p0", "assistant", "你好！"), _msg("a2", "p0", "assistant", "嗨。", rank=1),
            _msg("p3", "a1", "prompter", "再说一次？"), _msg("a4", "p3", "assistant", "好的。"),
            _msg("a5", "p9", "assistant", "孤儿。"), _msg("e1", None, "prompter", "hi", tree="t2", lang="en"),
            _msg("d1", "p0", "assistant", "删除。", deleted=True), _msg("x1", "p0", "assistant", 5)]
    res = run("oasst2_zh", rows, split="validation")
    ids = [r["id"] for r in res.records]
    assert ids == ["oasst2-zh-validation-a1", "oasst2-zh-validation-a2", "oasst2-zh-validation-a4"]
    last = res.records[2]
    assert last["question"] == "再说一次？" and [t["role"] for t in last["dialogue_history"]] == ["user", "assistant"]
    assert {r["split"] for r in res.records} == {"test"}
    assert res.filtered == {"prompter_message": 2, "broken_thread": 1, "not_chinese": 1, "deleted": 1}
    assert reasons(res) == [(8, "text", "wrong type: expected str, got int")]
    train = run("oasst2_zh", rows[:5], split="train")
    assert len({r["split"] for r in train.records}) == 1    # one message tree, one split


def test_cmrc2018():
    res = run("cmrc2018", [{"id": "A_1", "context": "北京是首都。", "question": "首都？", "answers": {"text": ["北京"], "answer_start": [0]}},
                           {"id": "A_2", "context": "c", "question": "q", "answers": {"text": [""], "answer_start": [0]}},
                           {"id": "A_3", "context": "c", "question": "q"}], split="test")
    assert res.records[0]["id"] == "cmrc2018-test-A_1" and res.records[0]["split"] == "test"
    assert res.filtered == {"no_answer": 1} and reasons(res) == [(2, "answers", "missing field")]


def test_drcd_nested_articles():
    art = {"id": "1", "title": "史", "paragraphs": [{"id": "1-1", "context": "台北是城市。", "qas": [
        {"id": "1-1-1", "question": "哪里？", "answers": [{"text": "台北", "answer_start": 0}]},
        {"id": "1-1-2", "question": "无？", "answers": [{"text": "", "answer_start": 0}]}]}]}
    res = run("drcd", [art, {"id": "2", "paragraphs": [{"id": "2-1", "context": "c"}]}], split="dev")
    (r,) = res.records
    assert (r["id"], r["split"], r["context"]) == ("drcd-dev-1-1-1", "val", "台北是城市。")
    assert res.filtered == {"no_answer": 1} and reasons(res) == [(1, "paragraphs[0].qas", "missing field")]


def test_dureader_subsets_and_zip_reader():
    rows = [{"id": 1, "question": "问？", "context": "答在这里。", "answers": {"text": ["答"]}},
            {"id": 2, "question": "问？", "context": "c", "answers": {"text": ["x"]}, "is_impossible": True},
            {"id": 3, "context": "c", "answers": {"text": ["x"]}}]
    res = run("dureader", rows, split="checklist/train")
    assert res.records[0]["id"] == "dureader-checklist-train-1" and res.filtered == {"unanswerable": 1}
    assert reasons(res) == [(2, "question", "missing field")]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("r/dev.json", json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "上下文", "qas": [{"id": "9", "question": "q", "answers": [{"text": "上"}]}]}]}]}))
    (raw,) = read_dureader_zip(buf.getvalue(), "robust/validation", "d.zip", "validation")
    res = run("dureader", [raw.row], split="robust/validation")
    assert (res.records[0]["id"], res.records[0]["split"], res.records[0]["context"]) == ("dureader-robust-validation-9", "val", "上下文")


def test_duplicate_ids_rejected():
    rows = [{"id": "A_1", "context": "c", "question": "q", "answers": {"text": ["a"]}}] * 2
    res = run("cmrc2018", rows, split="train")
    assert len(res.records) == 1 and reasons(res) == [(1, "id", "duplicate example id cmrc2018-train-A_1")]


def test_every_adapter_is_tested():
    import inspect, sys
    src = inspect.getsource(sys.modules[__name__])
    assert all(f'"{name}"' in src for name in SOURCES)
