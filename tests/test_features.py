"""Linguistic features and bucket references: properties over arbitrary text, hand-checked values, Λ_b fit on train only."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polyalign.features as F
from polyalign.core import LANGUAGES
from polyalign.features import (FEATURE_CATALOGUE, LM_FEATURE_NAMES, TEXT_FEATURE_NAMES, TEXT_FEATURES, FeatureMatrix,
                                FeatureResourceError, References, extract_features, fit_references, text_features)

KIND = {f.name: f.kind for f in FEATURE_CATALOGUE}
EDGE = ["", " ", "   \n\t \n ", "\n\n\n", "🙂🙂🙂 👍🏽 🚀", "Mixed 中英 text: 我们 use Python 3.11 每天！ OK?",
        "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３，。！", "\u0301\u0301 ́combining", "_ __ ___ ____", "'''\"\"\"’’’",
        "a" * 5000, "。" * 300, "Ⅻ ² ½ ٣ ๓", "\x00\x01\x1c\x1d control", "𠀀𠀁 𪜀 Ext-B 汉字", "İstanbul ǅ ß ﬁ"]


def check_row(d: dict, lang: str):
    applicable = {f.name for f in TEXT_FEATURES if lang in f.languages}
    assert set(d) == applicable
    for k, v in d.items():
        assert math.isfinite(v), (k, v)
        kind = KIND[k]
        if kind == "count": assert v >= 0 and v == int(v), (k, v)
        elif kind == "ratio": assert 0.0 <= v <= 1.0 + 1e-12, (k, v)
        elif kind == "nonneg": assert v >= 0.0, (k, v)
        elif kind == "signed": assert -1.0 - 1e-12 <= v <= 1.0 + 1e-12, (k, v)
        elif kind == "flag": assert v in (0.0, 1.0), (k, v)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("text", EDGE)
def test_edge_cases_finite_and_in_range(text, lang):
    check_row(text_features(text, lang), lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_empty_text_is_all_zero(lang):
    assert all(v == 0.0 for v in text_features("", lang).values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_arbitrary_unicode_en(text):
    check_row(text_features(text, "en"), "en")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_unicode_zh(text):
    check_row(text_features(text, "zh"), "zh")


_MIXED_ALPHABET = st.sampled_from(list("abcXYZ 012,.!?'\"-\n\t。，！？；：、“”《》（）…的了我你不是好天中国人说🙂#*|`%@第年"))


@settings(max_examples=200, deadline=None)
@given(st.lists(_MIXED_ALPHABET, max_size=300).map("".join), st.sampled_from(LANGUAGES))
def test_mixed_en_zh_punctuation_heavy(text, lang):
    check_row(text_features(text, lang), lang)


def test_one_megabyte_string():
    unit = "The committee met on 3 May 2024, and I can't say it's over! 委员会于2024年5月3日开会，我们不能说结束了。🙂\n"
    text = (unit * (1_000_000 // len(unit) + 1))[:1_000_000]
    for lang in LANGUAGES:
        d = text_features(text, lang)
        check_row(d, lang)
        assert d["char_count"] == 1_000_000


def test_not_applicable_is_nan_never_zero():
    fm = extract_features(["Short English answer.", "简短的中文回答。"], ["en", "zh"])
    en_only = [f.name for f in TEXT_FEATURES if f.languages == ("en",)]
    zh_only = [f.name for f in TEXT_FEATURES if f.languages == ("zh",)]
    assert en_only and zh_only
    for name in en_only: assert not np.isnan(fm.column(name)[0]) and np.isnan(fm.column(name)[1]), name
    for name in zh_only: assert np.isnan(fm.column(name)[0]) and not np.isnan(fm.column(name)[1]), name
    both = [i for i, f in enumerate(TEXT_FEATURES) if len(f.languages) == 2]
    assert not np.isnan(fm.values[:, both]).any()


def test_catalogue_covers_the_issue_families():
    fams = {f.family for f in TEXT_FEATURES}
    assert {"characters", "tokens", "sentences", "word_length", "diversity", "readability", "punctuation", "casing",
            "numbers", "function_words", "sentiment", "layout"} <= fams
    assert all(f.definition and f.kind in F.KINDS for f in FEATURE_CATALOGUE)
    assert TEXT_FEATURE_NAMES == [f.name for f in TEXT_FEATURES] and len(LM_FEATURE_NAMES) == len(F.LM_FEATURES)
    # the English-only tools are not applied to Chinese
    for name in ("flesch_reading_ease", "syllable_count", "stopword_ratio", "all_caps_word_ratio", "modal_ratio"):
        assert F.FEATURE_INDEX[name].languages == ("en",)


# ---------------------------------------------------------------- hand-checked values, per family

def test_hand_checked_english():
    d = text_features("Dr. Smith wasn't late!! Was he? Visit https://x.org or mail a@b.co in 1999; it's 50% done…", "en")
    assert d["sentence_count"] == 3                       # "Dr." is an abbreviation
    assert d["question_sentence_ratio"] == pytest.approx(1 / 3) and d["exclamation_sentence_ratio"] == pytest.approx(1 / 3)
    assert (d["url_count"], d["email_count"], d["year_count"], d["percent_count"], d["ellipsis_count"]) == (1, 1, 1, 1, 1)
    assert d["exclamation_mark_count"] == 2 and d["apostrophe_count"] == 2 and d["contraction_count"] == 2
    d = text_features("I love this. I HATE that. NASA is great", "en")
    assert d["all_caps_word_count"] == 2                  # HATE, NASA ("I" is one letter)
    assert d["title_case_word_ratio"] == pytest.approx(0 / 9)
    assert d["first_person_ratio"] == pytest.approx(2 / 9)
    assert d["sentiment_positive_ratio"] == pytest.approx(2 / 9) and d["sentiment_negative_ratio"] == pytest.approx(1 / 9)
    d = text_features("Beautiful extraordinary communication.", "en")   # 9 + 13 + 13 letters
    assert d["long_word_ratio"] == 1.0 and d["very_long_word_ratio"] == pytest.approx(2 / 3)
    assert d["avg_word_length"] == pytest.approx(35 / 3)
    assert d["polysyllable_count"] == 3
    d = text_features("# Title\n\n| a | b |\n|---|---|\n* item\n2) step\n**bold** `x` wooow", "en")
    assert (d["heading_line_count"], d["table_row_count"], d["bullet_line_count"], d["enumerated_line_count"]) == (1, 2, 1, 1)
    assert (d["bold_marker_count"], d["inline_code_count"], d["paragraph_count"]) == (2, 2, 2)
    assert d["repeated_char_run_count"] == 3              # ---, ---, ooo


def test_hand_checked_chinese():
    d = text_features("我不喜欢这个方法。你们觉得怎么样？第一，它很贵；第二，它很慢……", "zh")
    assert d["sentence_count"] == 4                        # 。 ？ ； and the trailing clause
    assert d["ordinal_count"] == 2 and d["ellipsis_count"] == 1 and d["semicolon_count"] == 1
    assert d["negation_ratio"] > 0 and d["second_person_ratio"] > 0 and d["question_word_ratio"] > 0
    assert d["han_char_ratio"] == pytest.approx(d["han_char_count"] / d["char_no_space_count"])
    assert d["cjk_punct_ratio"] == pytest.approx(5 / 7)               # the two … (U+2026) are general punctuation
    d = text_features("他说：“百分之五十的人在2023年去了北京。”", "zh")
    assert d["percent_count"] == 1 and d["year_count"] == 1 and d["quote_count"] == 2 and d["colon_count"] == 1
    assert d["zh_proper_noun_ratio"] > 0                   # 北京/ns
    d = text_features("一举两得", "zh")
    assert d["zh_idiom_count"] == 1 and d["zh_word_len4plus_ratio"] == 1.0
    pos, neg = text_features("这个很好。", "zh"), text_features("这个不好。", "zh")
    assert pos["sentiment_polarity"] == 1.0 and neg["sentiment_polarity"] == -1.0   # 不 negates 好


def test_num_proc_matches_single_process():
    texts = [f"Answer number {i}. It is {'very ' * (i % 7)}good!" if i % 3 else f"第{i}个回答，很好。" for i in range(60)]
    langs = ["en" if i % 3 else "zh" for i in range(60)]
    a = extract_features(texts, langs, batch_size=16)
    b = extract_features(texts, langs, batch_size=16, num_proc=2)
    np.testing.assert_array_equal(a.values, b.values)


def test_missing_resource_fails_loudly(monkeypatch):
    real = F.resources.files

    def files(pkg):
        if pkg == "vaderSentiment": raise ModuleNotFoundError(pkg)
        return real(pkg)
    monkeypatch.setattr(F.resources, "files", files)
    F.vader_lexicon.cache_clear()
    try:
        with pytest.raises(FeatureResourceError, match="vaderSentiment"):
            extract_features(["Hello there."], "en")
    finally:
        monkeypatch.undo(); F.vader_lexicon.cache_clear()
    assert len(F.vader_lexicon()) > 7000


def test_bad_inputs():
    with pytest.raises(ValueError, match="unsupported language"): extract_features(["x"], ["de"])
    with pytest.raises(ValueError, match="2 languages"): extract_features(["x"], ["en", "zh"])
    with pytest.raises(TypeError, match="not str"): extract_features([1.5], "en")


# ---------------------------------------------------------------- references Λ_b

def _corpus(seed=0, n_train=120, n_other=60):
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_train), ("val", n_other), ("test", n_other)):
        for i in range(n):
            lang = "en" if i % 2 else "zh"
            b = f"{lang}|single|qa|{'short' if i % 4 < 2 else 'long'}"
            k = int(rng.integers(1, 30))
            text = " ".join(["word"] * k) + "." if lang == "en" else "好" * k + "。"
            rows.append({"id": f"{split}-{i}", "split": split, "language": lang, "bucket_id": b, "human_answer": text})
    rows.append({"id": "tiny-bucket", "split": "train", "language": "en", "bucket_id": "en|multi|chat|short", "human_answer": "Hi."})
    return pd.DataFrame(rows)


def test_references_ignore_test_and_val_rows():
    df = _corpus()
    fm = extract_features(df.human_answer.tolist(), df.language.tolist(), ids=df.id.tolist())
    refs = fit_references(df, fm)
    df2 = df.copy()
    df2.loc[df2.split == "test", "human_answer"] = "Completely different TEST answer!!! 完全不同。" * 5
    df2.loc[df2.split == "val", "human_answer"] = ""
    fm2 = extract_features(df2.human_answer.tolist(), df2.language.tolist(), ids=df2.id.tolist())
    refs2 = fit_references(df2, fm2)
    for s in F.STAT_NAMES:
        np.testing.assert_array_equal(refs.stats[s], refs2.stats[s], err_msg=s)
    assert refs.meta["rows"] == (df.split == "train").sum()
    with pytest.raises(ValueError, match="test split"):
        fit_references(df, fm, splits=("train", "test"))


def test_references_match_numpy_and_join_on_id():
    df = _corpus(1)
    fm = extract_features(df.human_answer.tolist(), df.language.tolist(), ids=df.id.tolist())
    shuffled = df.sample(frac=1.0, random_state=0).reset_index(drop=True)      # rows in another order: joined on id
    refs = fit_references(shuffled, fm, support=(0.25, 0.75))
    b = "en|single|qa|short"
    sel = ((df.split == "train") & (df.bucket_id == b)).to_numpy()
    for name in ("word_count", "char_count", "type_token_ratio"):
        x = fm.column(name)[sel].astype(np.float64)
        t = refs.bucket(b).loc[name]
        assert t["count"] == len(x)
        assert t["mean"] == pytest.approx(x.mean()) and t["std"] == pytest.approx(x.std(ddof=0))
        for q, p in F.QUANTILES.items(): assert t[q] == pytest.approx(np.quantile(x, p)), q
        assert (t["lower"], t["upper"]) == (pytest.approx(np.quantile(x, .25)), pytest.approx(np.quantile(x, .75)))
        assert t["scale"] == pytest.approx(max(t["upper"] - t["lower"], t["std"], 1e-6))
    # the authors' nearest-rank rule: sorted[round((n - 1) p)], round half to even
    near = fit_references(df, fm, quantile_method="nearest")
    x = np.sort(fm.column("word_count")[sel].astype(np.float64))
    for q, p in F.QUANTILES.items():
        assert near.bucket(b).loc["word_count", q] == x[round((len(x) - 1) * p)]


def test_eligibility_constant_and_missing_features(tmp_path):
    df = _corpus(2)
    fm = extract_features(df.human_answer.tolist(), df.language.tolist(), ids=df.id.tolist())
    refs = fit_references(df, fm, min_count=20)
    elig = dict(zip(refs.buckets, refs.eligible))
    assert elig["en|multi|chat|short"] is np.False_ and elig["en|single|qa|short"] is np.True_
    t = refs.bucket("en|single|qa|short")
    assert t.loc["sentence_count", "constant"] and t.loc["sentence_count", "scale"] == pytest.approx(1e-6)
    assert not t.loc["word_count", "constant"]
    z = refs.bucket("zh|single|qa|short")
    assert z.loc["flesch_reading_ease", "count"] == 0 and np.isnan(z.loc["flesch_reading_ease", "mean"])
    j = refs.features.index("flesch_reading_ease"); bz = refs.buckets.index("zh|single|qa|short")
    assert not refs.usable[bz, j] and not refs.usable[refs.buckets.index("en|single|qa|short"), refs.features.index("sentence_count")]
    p = refs.save(tmp_path / "references.parquet")
    back = References.load(p)
    assert back.buckets == refs.buckets and back.features == refs.features and back.meta == refs.meta
    for s in F.STAT_NAMES:
        np.testing.assert_array_equal(back.stats[s], refs.stats[s], err_msg=s)
    np.testing.assert_array_equal(back.eligible, refs.eligible)
    assert [x.name for x in tmp_path.iterdir()] == ["references.parquet"]        # atomic: no temporary left


def test_feature_matrix_roundtrip_and_checks():
    fm = extract_features(["One.", "二。"], ["en", "zh"], ids=["a", "b"])
    back = FeatureMatrix.from_frame(fm.to_frame())
    np.testing.assert_array_equal(back.values, fm.values); assert back.ids == ["a", "b"]
    with pytest.raises(ValueError, match="do not match"): FeatureMatrix(np.zeros((2, 3)), ["a"])
    df = pd.DataFrame({"id": ["a", "zz"], "split": ["train"] * 2, "bucket_id": ["x"] * 2})
    with pytest.raises(ValueError, match="no features"): fit_references(df, fm)
