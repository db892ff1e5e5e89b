"""Linguistic features and bucket references: properties over arbitrary text, hand-checked values, Λ_b fit on train only."""
import math
from collections import Counter

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


# ---------------------------------------------------------------- every feature against hand values
# Each case lists the primitives read off the text by hand (words, sentences, syllables, lexicon entries) and the
# catalogue formula applied to them; `test_hand_values_cover_every_feature` checks that every feature of each language
# has a hand value in some case.

def _bits(counts):
    "Shannon entropy in bits of a frequency table."
    n = sum(counts)
    return -sum(c / n * math.log2(c / n) for c in counts)


def _pstdev(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


CHARS = "Hey Zo\u00eb,\n \nI paid 42 \u20ac.\n北京 ok"
# 29 characters: 6 spaces + 3 newlines (the second line is blank); letters H e y Z o ë I p a i d 北 京 o k
# (15; 13 Latin incl. ë, 2 Han); upper H Z I; digits 4 2; punctuation , € . ; non-ASCII ë € 北 京;
# lines "Hey Zoë," "I paid 42 €." "北京 ok", two paragraphs
CHARS_WANT = dict(
    char_count=29, char_no_space_count=20, whitespace_count=9, newline_count=3, line_count=3, paragraph_count=2,
    letter_char_count=15, latin_letter_count=13, han_char_count=2, digit_char_count=2, uppercase_char_count=3,
    lowercase_char_count=10, punctuation_char_count=3, non_ascii_char_count=4, han_char_ratio=2 / 20,
    latin_letter_ratio=13 / 20, digit_char_ratio=2 / 20, punctuation_char_ratio=3 / 20, uppercase_char_ratio=3 / 13,
    whitespace_ratio=9 / 29, non_ascii_ratio=4 / 29)

PROSE = "The cat sat on the mat. It was a magnificent, sunny afternoon!\nwhy did NASA call?"
# words: the cat sat on the mat | it was a magnificent sunny afternoon | why did nasa call (6 + 6 + 4 = 16, "the"
# twice, 15 types, no repeated bigram); letters 17 + 31 + 14 = 62; 4 punctuation marks; 81 characters, 15 whitespace.
# sentences of 23, 38 and 18 characters; syllables (vowel groups): 11 words of <= 3 letters 1 each, magnificent 4
# (a-i-i-e), sunny 2, afternoon 3, nasa 2, call 1 -> 23; polysyllables: magnificent, afternoon
W, S, SYL, POLY, LETTERS = 16, 3, 23, 2, 62
PROSE_WANT = dict(
    token_count=20, word_count=16, unique_word_count=15, avg_word_length=62 / 16, chars_per_word=66 / 16,
    sentence_count=3, avg_words_per_sentence=16 / 3, std_words_per_sentence=_pstdev([6, 6, 4]),
    min_words_per_sentence=4, max_words_per_sentence=6, avg_sentence_chars=79 / 3,
    std_sentence_chars=_pstdev([23, 38, 18]), min_sentence_chars=18, max_sentence_chars=38,
    short_word_ratio=11 / 16, medium_word_ratio=3 / 16, long_word_ratio=2 / 16, very_long_word_ratio=1 / 16,
    long_word_count=2,                                  # medium: sunny nasa call; long: magnificent afternoon
    type_token_ratio=15 / 16, root_ttr=15 / 4, corrected_ttr=15 / math.sqrt(32), hapax_ratio=14 / 16,
    dislegomena_ratio=1 / 16, distinct_2=15 / 15, distinct_3=14 / 14, repeated_word_ratio=1 / 16,
    repeated_bigram_ratio=0, adjacent_repeat_count=0, max_word_frequency=2, max_word_frequency_ratio=2 / 16,
    word_entropy=_bits([2] + [1] * 14), char_entropy=_bits(Counter(c for c in PROSE if not c.isspace()).values()),
    syllable_count=SYL, avg_syllables_per_word=SYL / W, polysyllable_count=POLY, polysyllable_ratio=POLY / W,
    flesch_reading_ease=206.835 - 1.015 * W / S - 84.6 * SYL / W,
    flesch_kincaid_grade=0.39 * W / S + 11.8 * SYL / W - 15.59,
    gunning_fog=0.4 * (W / S + 100 * POLY / W), smog_index=1.043 * math.sqrt(30 * POLY / S) + 3.1291,
    coleman_liau_index=0.0588 * (100 * LETTERS / W) - 0.296 * (100 * S / W) - 15.8,
    automated_readability_index=4.71 * LETTERS / W + 0.5 * W / S - 21.43,
    all_caps_word_count=1, all_caps_word_ratio=1 / 16,     # NASA
    title_case_word_ratio=2 / 16, lowercase_word_ratio=13 / 16,   # The, It; "why" starts the third sentence
    sentence_initial_capital_ratio=2 / 3)

REPEATS = "the cat the cat the dog dog"
# the x3, cat x2, dog x2; bigrams the-cat cat-the the-cat cat-the the-dog dog-dog (4 distinct of 6);
# trigrams the-cat-the cat-the-cat the-cat-the cat-the-dog the-dog-dog (4 of 5); characters t5 h3 e3 c2 a2 d2 o2 g2
REPEATS_WANT = dict(
    type_token_ratio=3 / 7, root_ttr=3 / math.sqrt(7), corrected_ttr=3 / math.sqrt(14), hapax_ratio=0,
    dislegomena_ratio=2 / 7, distinct_2=4 / 6, distinct_3=4 / 5, repeated_word_ratio=4 / 7,
    repeated_bigram_ratio=2 / 6, adjacent_repeat_count=1, max_word_frequency=3, max_word_frequency_ratio=3 / 7,
    word_entropy=_bits([3, 2, 2]), char_entropy=_bits([5, 3, 3, 2, 2, 2, 2, 2]))

FUNCTION = "You and I can't stay with them, but we should not go to the 2 parks."
# 16 words (the number 2 is neither a function nor a content word); pronouns you i them we; first i we; second you;
# modals can't should; negators can't not; prepositions with to; conjunctions and but; determiner the; scikit-learn
# stop words you and i with them but we should not go to the (12); function words = those 12 + can't; content words
# stay parks
FUNCTION_WANT = dict(
    function_word_ratio=13 / 16, content_word_ratio=2 / 16, lexical_density=2 / 15, pronoun_ratio=4 / 16,
    first_person_ratio=2 / 16, second_person_ratio=1 / 16, negation_ratio=2 / 16, question_word_ratio=0,
    stopword_ratio=12 / 16, modal_ratio=2 / 16, preposition_ratio=2 / 16, conjunction_ratio=2 / 16,
    determiner_ratio=1 / 16, contraction_count=1, contraction_ratio=1 / 16)
# PROSE: stop words the on the it was a why call (8, all function words; "did" is in no list), pronoun it,
# preposition on, determiners the the an, question word why
PROSE_FUNCTION_WANT = dict(stopword_ratio=8 / 16, function_word_ratio=8 / 16, content_word_ratio=8 / 16,
                           pronoun_ratio=1 / 16, preposition_ratio=1 / 16, determiner_ratio=3 / 16,
                           question_word_ratio=1 / 16, modal_ratio=0, conjunction_ratio=0, negation_ratio=0)

SENTIMENT = "I love this, but the ending was not at all good."
# 11 words; VADER lexicon: love +3.2, good +1.9; "not" is the third word before "good" -> 1.9 * -0.74
POS, NEG = 3.2, 0.74 * 1.9
SENTIMENT_WANT = dict(sentiment_positive_ratio=1 / 11, sentiment_negative_ratio=1 / 11,
                      sentiment_polarity=(POS - NEG) / (POS + NEG), sentiment_strength=(POS + NEG) / (4 * 11))

PUNCT = "Wait... \"Really?\" she asked; yes: it's A/B (mostly) [ok] - fine! Why? Done\u2026"
# 17 ASCII punctuation characters and the ellipsis character; words wait really she asked yes it's a b mostly ok fine
# why done (13); sentences "Wait..." / "\"Really?\" she asked; ... fine!" / "Why?" / "Done…" (a lower-case word after
# ?" continues the sentence)
PUNCT_WANT = dict(
    question_mark_count=2, exclamation_mark_count=1, comma_count=0, enumeration_comma_count=0, semicolon_count=1,
    colon_count=1, period_count=3, ellipsis_count=2, quote_count=2, apostrophe_count=1, dash_count=1, slash_count=1,
    parenthesis_count=2, bracket_count=2, book_title_mark_count=0, ascii_punct_count=17, cjk_punct_count=0,
    cjk_punct_ratio=0, punctuation_density=18 / 31, question_sentence_ratio=1 / 4, exclamation_sentence_ratio=1 / 4,
    terminal_punctuation_ratio=1)

NUMBERS = "In 1999 I won 3 of 12,000 votes, 50% of 1500000 and the 2nd prize. Not 1499."
# digit runs 1999 3 12 000 50 1500000 2 1499: one year (1500000 is a longer run, 1499 before 1500); 50% ; 2nd
NUMBERS_WANT = dict(year_count=1, percent_count=1, ordinal_count=1)
# English words: in 1999 i won 3 of 12,000 votes 50 of 1500000 and the 2 nd prize not 1499 (18), seven numbers
LINKS = "See www.a.io or https://b.org/x and mail j.doe@c.org now."
LINKS_WANT = dict(url_count=2, email_count=1)

LAYOUT = "# Plan\n- one\n* two\n1. first\n(一) x\n| a | b |\n```\ncode\n```\n**bold** and `tick` 🙂🚀 soooo!!!"
# runs of 3+: ``` ``` oooo !!! ; backticks 8 = 2 fences x 3 + 2 inline
LAYOUT_WANT = dict(bullet_line_count=2, enumerated_line_count=2, heading_line_count=1, table_row_count=1,
                   code_fence_count=2, inline_code_count=2, bold_marker_count=2, emoji_count=2,
                   repeated_char_run_count=4)

# Chinese words are jieba's (`test_jieba_segments_the_hand_cases_as_assumed` pins them); tags by their first letter
ZH_QUESTION = "你们为什么没有来呢？我在北京等了两个小时。"
# 你们/r 为什么/r 没有/v 来/v 呢/y ？ | 我/r 在/p 北京/ns 等/u 了/ul 两个/m 小时/n 。  (12 words, 2 punctuation tokens,
# 21 characters); word lengths 2 3 2 1 1 1 1 2 1 1 2 2; content n v a d: 没有 来 北京 小时; function r p c u y e o q:
# 你们 为什么 我 在 等 了 呢; HowNet: 没有 -1, no negator in the 2 words before it
ZH_QUESTION_WANT = dict(
    token_count=14, word_count=12, unique_word_count=12, avg_word_length=19 / 12, chars_per_word=21 / 12,
    sentence_count=2, avg_words_per_sentence=6, std_words_per_sentence=1, min_words_per_sentence=5,
    max_words_per_sentence=7, avg_sentence_chars=10.5, std_sentence_chars=0.5, min_sentence_chars=10,
    max_sentence_chars=11,
    zh_word_len1_ratio=6 / 12, zh_word_len2_ratio=5 / 12, zh_word_len3_ratio=1 / 12, zh_word_len4plus_ratio=0,
    function_word_ratio=7 / 12, content_word_ratio=4 / 12, lexical_density=4 / 11, pronoun_ratio=3 / 12,
    first_person_ratio=1 / 12, second_person_ratio=1 / 12, negation_ratio=1 / 12, question_word_ratio=2 / 12,
    zh_noun_ratio=2 / 12, zh_proper_noun_ratio=1 / 12, zh_verb_ratio=2 / 12, zh_adj_ratio=0, zh_adv_ratio=0,
    zh_preposition_ratio=1 / 12, zh_conjunction_ratio=0, zh_particle_ratio=2 / 12, zh_modal_particle_ratio=1 / 12,
    zh_classifier_ratio=0, zh_numeral_ratio=1 / 12, zh_idiom_count=0, zh_latin_word_ratio=0,
    number_count=0, number_ratio=0,
    sentiment_positive_ratio=0, sentiment_negative_ratio=1 / 12, sentiment_polarity=-1.0, sentiment_strength=1 / 12)

ZH_REPEATS = "我们喜欢北京。你呢？我们也喜欢！"
# 我们 喜欢 北京 。 你 呢 ？ 我们 也 喜欢 ！: 8 words, 我们 and 喜欢 twice; 16 characters, 我 们 喜 欢 twice each
ZH_REPEATS_WANT = dict(
    type_token_ratio=6 / 8, root_ttr=6 / math.sqrt(8), corrected_ttr=6 / 4, hapax_ratio=4 / 8,
    dislegomena_ratio=2 / 8, distinct_2=7 / 7, distinct_3=6 / 6, repeated_word_ratio=2 / 8, repeated_bigram_ratio=0,
    adjacent_repeat_count=0, max_word_frequency=2, max_word_frequency_ratio=2 / 8,
    word_entropy=_bits([2, 2, 1, 1, 1, 1]), char_entropy=_bits([2, 2, 2, 2] + [1] * 8))

ZH_IDIOM = "这个办法一举两得，非常好！他跑了三公里。"
# 这个/r 办法/n 一举两得/i ， 非常/d 好/a ！ 他/r 跑/v 了/ul 三/m 公里/q 。 (10 words); content 办法 非常 好 跑;
# function 这个 他 了 公里; HowNet: 好 +1
ZH_IDIOM_WANT = dict(
    zh_word_len1_ratio=5 / 10, zh_word_len2_ratio=4 / 10, zh_word_len3_ratio=0, zh_word_len4plus_ratio=1 / 10,
    function_word_ratio=4 / 10, content_word_ratio=4 / 10, lexical_density=4 / 8, pronoun_ratio=2 / 10,
    zh_noun_ratio=1 / 10, zh_verb_ratio=1 / 10, zh_adj_ratio=1 / 10, zh_adv_ratio=1 / 10, zh_particle_ratio=1 / 10,
    zh_classifier_ratio=1 / 10, zh_numeral_ratio=1 / 10, zh_idiom_count=1, zh_latin_word_ratio=0,
    sentiment_positive_ratio=1 / 10, sentiment_negative_ratio=0, sentiment_polarity=1.0, sentiment_strength=1 / 10)

ZH_LATIN = "他在2023年买了三本书和一个iPhone。"
# 他/r 在/p 2023/m 年/m 买/v 了/ul 三/m 本书/r 和/c 一个/m iPhone/eng 。 (11 words; 2023 the only digit word)
ZH_LATIN_WANT = dict(zh_latin_word_ratio=1 / 11, zh_conjunction_ratio=1 / 11, zh_numeral_ratio=4 / 11,
                     zh_preposition_ratio=1 / 11, number_count=1, number_ratio=1 / 11, year_count=1,
                     function_word_ratio=5 / 11, lexical_density=1 / 6)   # iPhone/eng is neither content nor function

ZH_SENTIMENT = "他很聪明，但是不太努力。"
# 他 很 聪明 ， 但是 不 太 努力 。 (7 words); HowNet: 聪明 +1, 努力 +1 negated by 不 two words before -> -0.74
ZH_SENTIMENT_WANT = dict(sentiment_positive_ratio=1 / 7, sentiment_negative_ratio=1 / 7,
                         sentiment_polarity=(1 - 0.74) / (1 + 0.74), sentiment_strength=(1 + 0.74) / 7)

ZH_PUNCT = "老师说：“学生们应该认真学习、好好休息。”《红楼梦》（第一版）……真的吗？！"
# 13 punctuation characters, all in non-word jieba tokens; 9 full-width (： 、 。 《 》 （ ） ？ ！; “ ” … are general
# punctuation); words 老师 说 学生 们 应该 认真学习 好好 休息 红楼梦 第一版 真的 吗 (12); sentences end 。” and ？！
ZH_PUNCT_WANT = dict(
    question_mark_count=1, exclamation_mark_count=1, comma_count=0, enumeration_comma_count=1, semicolon_count=0,
    colon_count=1, period_count=1, ellipsis_count=1, quote_count=2, apostrophe_count=0, dash_count=0, slash_count=0,
    parenthesis_count=2, bracket_count=0, book_title_mark_count=2, ascii_punct_count=0, cjk_punct_count=9,
    cjk_punct_ratio=9 / 13, punctuation_density=13 / 25, question_sentence_ratio=0, exclamation_sentence_ratio=1 / 2,
    terminal_punctuation_ratio=1, ordinal_count=1)

HAND_CASES = [
    *[pytest.param(CHARS, lang, CHARS_WANT, id=f"characters-{lang}") for lang in LANGUAGES],
    pytest.param(CHARS, "en", dict(word_count=8, token_count=11), id="han-in-english"),  # hey zoë i paid 42 北 京 ok
    pytest.param(PROSE, "en", PROSE_WANT, id="prose-en"),
    pytest.param(PROSE, "en", PROSE_FUNCTION_WANT, id="prose-function-words-en"),
    pytest.param(REPEATS, "en", REPEATS_WANT, id="repeats-en"),
    pytest.param(FUNCTION, "en", FUNCTION_WANT, id="function-words-en"),
    pytest.param(SENTIMENT, "en", SENTIMENT_WANT, id="sentiment-en"),
    pytest.param(PUNCT, "en", PUNCT_WANT, id="punctuation-en"),
    pytest.param(NUMBERS, "en", dict(NUMBERS_WANT, number_count=7, number_ratio=7 / 18), id="number-words-en"),
    *[pytest.param(NUMBERS, lang, NUMBERS_WANT, id=f"numbers-{lang}") for lang in LANGUAGES],
    *[pytest.param(LINKS, lang, LINKS_WANT, id=f"links-{lang}") for lang in LANGUAGES],
    *[pytest.param(LAYOUT, lang, LAYOUT_WANT, id=f"layout-{lang}") for lang in LANGUAGES],
    pytest.param(ZH_QUESTION, "zh", ZH_QUESTION_WANT, id="question-zh"),
    pytest.param(ZH_REPEATS, "zh", ZH_REPEATS_WANT, id="repeats-zh"),
    pytest.param(ZH_IDIOM, "zh", ZH_IDIOM_WANT, id="idiom-zh"),
    pytest.param(ZH_LATIN, "zh", ZH_LATIN_WANT, id="latin-zh"),
    pytest.param(ZH_SENTIMENT, "zh", ZH_SENTIMENT_WANT, id="sentiment-zh"),
    pytest.param(ZH_PUNCT, "zh", ZH_PUNCT_WANT, id="punctuation-zh"),
]


@pytest.mark.parametrize("text, lang, want", HAND_CASES)
def test_hand_values(text, lang, want):
    "Each feature equals its catalogue formula applied to primitives counted by hand on a short text."
    got = text_features(text, lang)
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != pytest.approx(v, rel=1e-12, abs=1e-12)}
    assert not wrong


def test_hand_values_cover_every_feature():
    "Every text feature of each language has a hand value in some case above."
    for lang in LANGUAGES:
        covered = set().union(*(p.values[2] for p in HAND_CASES if p.values[1] == lang))
        assert covered == {f.name for f in TEXT_FEATURES if lang in f.languages}, lang


@pytest.mark.parametrize("word, n", [
    ("cat", 1), ("ox", 1), ("make", 1), ("table", 2), ("free", 1), ("jumped", 1), ("wanted", 2), ("faded", 2),
    ("likes", 1), ("boxes", 2), ("wishes", 2), ("pages", 2), ("rhythm", 1), ("banana", 3), ("yellow", 2),
    ("extraordinary", 5), ("Beautiful", 3), ("don't", 1)])
def test_syllable_rule_hand_values(word, n):
    "Vowel groups of a-z (y a vowel); <= 3 letters: 1; silent -e (not -le/-ye/-ee), -ed (not -ted/-ded), -es drop one."
    assert F.syllables(word) == n


def test_jieba_segments_the_hand_cases_as_assumed():
    "The Chinese hand values assume these jieba words and tags (punctuation tokens left out)."
    import jieba.posseg
    seg = lambda t: [(p.word, p.flag) for p in jieba.posseg.lcut(t) if any(c.isalnum() for c in p.word)]
    assert seg(ZH_QUESTION) == [("你们", "r"), ("为什么", "r"), ("没有", "v"), ("来", "v"), ("呢", "y"), ("我", "r"),
                                ("在", "p"), ("北京", "ns"), ("等", "u"), ("了", "ul"), ("两个", "m"), ("小时", "n")]
    assert seg(ZH_REPEATS) == [("我们", "r"), ("喜欢", "v"), ("北京", "ns"), ("你", "r"), ("呢", "y"), ("我们", "r"),
                               ("也", "d"), ("喜欢", "v")]
    assert seg(ZH_IDIOM) == [("这个", "r"), ("办法", "n"), ("一举两得", "i"), ("非常", "d"), ("好", "a"), ("他", "r"),
                             ("跑", "v"), ("了", "ul"), ("三", "m"), ("公里", "q")]
    assert seg(ZH_LATIN) == [("他", "r"), ("在", "p"), ("2023", "m"), ("年", "m"), ("买", "v"), ("了", "ul"),
                             ("三", "m"), ("本书", "r"), ("和", "c"), ("一个", "m"), ("iPhone", "eng")]
    assert [w for w, _ in seg(ZH_SENTIMENT)] == ["他", "很", "聪明", "但是", "不", "太", "努力"]
    assert [w for w, _ in seg(ZH_PUNCT)] == ["老师", "说", "学生", "们", "应该", "认真学习", "好好", "休息", "红楼梦",
                                              "第一版", "真的", "吗"]


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
