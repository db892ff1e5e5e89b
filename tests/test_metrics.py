"""polyalign.metrics: agreement with independent implementations, Chinese hand-computed values, contract errors."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from polyalign.core import MetricsConfig
from polyalign.metrics import (PredictionError, aggregate, align_predictions, answer_tokens, bng, evaluate, hypervolume_2d,
                               lcs_length, mauve_by_bucket, mauve_sample, nuf, token_f1, utility_scores, w1)

EN_PAIRS = [("The Eiffel Tower", "eiffel tower"), ("in 1889, in Paris.", "Paris, France in 1889"), ("", "something"), ("", ""),
            ("a an the", "the"), ("U.S. Army's 3rd division", "the US Army 3rd Division"), ("Well-known fact!", "well known fact"),
            ("cats and dogs and cats", "dogs cats"), ("Nothing in common", "zzz yyy"), ("  spaced\n\tout  ", "spaced out")]


def test_en_em_f1_match_torchmetrics_squad():
    from torchmetrics.functional.text import squad
    u = utility_scores([p for p, _ in EN_PAIRS], [r for _, r in EN_PAIRS], ["en"] * len(EN_PAIRS))
    for i, (p, r) in enumerate(EN_PAIRS):
        ref = squad([{"prediction_text": p, "id": str(i)}], [{"answers": {"answer_start": [0], "text": [r]}, "id": str(i)}])
        assert u.em[i] * 100 == pytest.approx(float(ref["exact_match"]), abs=1e-6), (p, r)
        assert u.f1[i] * 100 == pytest.approx(float(ref["f1"]), abs=1e-4), (p, r)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["the", "cat", "dog", "Sat", "on", "mat", "a", "red", "x-y", "7"]), max_size=30),
       st.lists(st.sampled_from(["the", "cat", "dog", "sat", "on", "mat", "an", "blue", "xy", "7"]), max_size=30))
def test_rouge_l_matches_rouge_score_on_english(p, r):
    from rouge_score import rouge_scorer

    class Tok:
        def tokenize(self, text): return answer_tokens(text, "en")
    pred, ref = " ".join(p), " ".join(r)
    ours = utility_scores([pred], [ref], ["en"]).rouge_l[0]
    tp, tr = answer_tokens(pred, "en"), answer_tokens(ref, "en")
    if not tp or not tr:
        assert ours == float(not tp and not tr)
    else:
        theirs = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Tok()).score(ref, pred)["rougeL"].fmeasure
        assert ours == pytest.approx(theirs, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60), st.lists(st.integers(0, 5), max_size=60))
def test_lcs_matches_dynamic_programming(a, b):
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)): d[i + 1][j + 1] = d[i][j] + 1 if a[i] == b[j] else max(d[i][j + 1], d[i + 1][j])
    assert lcs_length(a, b) == d[-1][-1]


def test_chinese_character_level_f1_hand_computed():
    # pred 北京大学 vs ref 北京的大学: 4 common chars, P = 4/4, R = 4/5 -> F1 = 8/9
    u = utility_scores(["北京大学", "他在2008年去了北京。", "“你好！”", "中国", "Apple公司"],
                       ["北京的大学", "2008年，他去北京", "你好", "美国", "apple 公司"], ["zh"] * 5)
    assert u.f1[0] == pytest.approx(8 / 9)
    # 他 在 2008 年 去 了 北 京 (8) vs 2008 年 他 去 北 京 (6): common 6 -> P 6/8, R 1 -> F1 = 2*0.75/1.75
    assert answer_tokens("他在2008年去了北京。", "zh") == ["他", "在", "2008", "年", "去", "了", "北", "京"]
    assert u.f1[1] == pytest.approx(2 * 0.75 / 1.75)
    assert u.rouge_l[1] == pytest.approx(2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6))  # LCS 他 去 北 京 + 2008 年? -> 5
    assert (u.em[2], u.f1[2]) == (1.0, 1.0)          # full-width quotes and punctuation removed
    assert u.f1[3] == pytest.approx(0.5)              # 国 shared: P = R = 1/2
    assert (u.em[4], u.f1[4]) == (1.0, 1.0)           # Latin word lowercased, spacing irrelevant


def test_zh_is_not_whitespace_chunk_match():
    # the authors' normaliser makes an unspaced answer one token; character level gives partial credit
    assert token_f1(answer_tokens("北京大学", "zh"), answer_tokens("北京的大学", "zh")) > 0.8


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40))
def test_w1_matches_scipy(u, v):
    from scipy.stats import wasserstein_distance
    assert w1(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=12))
def test_hypervolume_matches_grid_area(points):
    u = [a / 20 for a, _ in points]; n = [b / 20 for _, b in points]
    # every rectangle edge is a multiple of 1/20, so counting 1/40-cells by their centres is exact
    c = (np.arange(40) + 0.5) / 40
    gu, gn = np.meshgrid(c, c, indexing="ij")
    covered = np.zeros_like(gu, dtype=bool)
    for a, b in zip(u, n): covered |= (gu <= a) & (gn <= b)
    assert hypervolume_2d(u, n) == pytest.approx(covered.sum() / 1600, abs=1e-12)


def test_hypervolume_with_reference_point():
    assert hypervolume_2d([0.5, 0.8], [0.8, 0.3], reference=(0.2, 0.1)) == pytest.approx((0.8 - 0.5) * 0.2 + (0.5 - 0.2) * 0.7)
    assert hypervolume_2d([0.1], [0.9], reference=(0.2, 0.0)) == 0.0


def test_g_mauve_equals_direct_mauve_call():
    import mauve
    rng = np.random.default_rng(0)
    n = 260
    He = rng.standard_normal((n, 12)).astype(np.float32); Ge = (rng.standard_normal((n, 12)) + 0.3).astype(np.float32)
    buckets = np.array(["a"] * 200 + ["b"] * 60, dtype=object)
    cfg = MetricsConfig(mauve_max_texts=150)
    summ, scopes = mauve_by_bucket(Ge, He, buckets, cfg, seed=5)
    rows = scopes["__global__"].rows
    assert len(rows) == 150 and np.array_equal(rows, mauve_sample(n, 150, __import__("polyalign.core", fromlist=["derive_seed"]).derive_seed(5, "mauve-sample", "__global__")))
    direct = mauve.compute_mauve(p_features=He[rows], q_features=Ge[rows], num_buckets=15, seed=25, device_id=-1, verbose=False).mauve
    assert summ["global"] == direct
    rows_b = scopes["b"].rows
    assert len(rows_b) == 60
    direct_b = mauve.compute_mauve(p_features=He[rows_b], q_features=Ge[rows_b], num_buckets=6, seed=25, device_id=-1, verbose=False).mauve
    assert [r["c_mauve"] for r in summ["by_bucket"] if r["bucket_id"] == "b"] == [direct_b]
    # with bootstrap labels the point estimate comes from one quantisation: the same value
    summ2, scopes2 = mauve_by_bucket(Ge, He, buckets, cfg, seed=5, labels=True)
    assert summ2["global"] == pytest.approx(direct, abs=1e-12) and scopes2["b"].value == pytest.approx(direct_b, abs=1e-12)


TEST = pd.DataFrame({"id": ["e1", "e2", "z1"], "human_answer": ["a", "b", "中"], "language": ["en", "en", "zh"]})


@pytest.mark.parametrize("preds,msg", [
    ([{"id": "e1", "prediction": "x"}], "2 test ids without a prediction (of 3) (e2, z1)"),
    ([{"id": i, "prediction": "x"} for i in ["e1", "e2", "z1", "e2", "z1"]], "2 duplicate ids (e2, z1)"),
    ([{"id": i, "prediction": "x"} for i in ["e1", "e2", "z1", "q9"]], "1 ids not in the evaluated test rows (q9)"),
    ([{"id": "e1", "prediction": None}, {"id": "e2", "prediction": float("nan")}, {"id": "z1", "prediction": 3}],
     "3 predictions that are not strings"),
    ([{"id": "e1", "text": "x"}], "no 'prediction' field"),
])
def test_contract_errors_list_ids(preds, msg):
    with pytest.raises(PredictionError, match="nothing was scored|no 'prediction'") as e:
        align_predictions(TEST, preds)
    assert msg in str(e.value)


def test_empty_predictions_are_scored_and_counted():
    u = utility_scores(["", "  \n", "b"], ["b", "", "b"], ["en", "en", "en"])
    assert u.is_empty.tolist() == [1.0, 1.0, 0.0]
    assert u.f1.tolist() == [0.0, 1.0, 1.0]   # whitespace vs empty reference: both have no tokens


def test_bng_rejects_nan_gaps_and_infinities():
    H = np.random.default_rng(0).standard_normal((40, 3)); G = H + 1
    G2 = G.copy(); G2[5, 1] = np.nan
    with pytest.raises(ValueError, match="feature coverage differs"):
        bng(G2, H, ["b"] * 40, list("abc"))
    G3 = G.copy(); G3[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        bng(G3, H, ["b"] * 40, list("abc"))
    with pytest.raises(ValueError, match="must both be 40 rows"):
        bng(G[:30], H[:30], ["b"] * 40, list("abc"))


def test_bng_eps_floor_and_robust_scale():
    H = np.zeros((30, 1)); H[0, 0] = 1e-9       # sigma ~ 1.8e-10: the authors would divide by it
    G = H + 0.01
    r = bng(G, H, ["b"] * 30, ["f"], eps=1e-3, held_out_constant="eps")
    assert r.overall_macro == pytest.approx(0.01 / 1e-3)
    assert bng(G, H, ["b"] * 30, ["f"]).by_bucket.reason[0] == "no features"   # no train scale: left out
    assert bng(G, H, ["b"] * 30, ["f"], references={"constant": {"b": ["f"]}}).by_bucket.reason[0] == "no features"
    rb = bng(G, H, ["b"] * 30, ["f"], scale="robust", held_out_constant="eps")
    assert rb.overall_macro == pytest.approx(10.0)


def test_bng_macro_is_the_plain_mean_over_buckets_of_different_sizes():
    "BNG-macro is the unweighted bucket mean of App. D's BNG(b): W1/max(sigma, eps), constant and NaN features out."
    from scipy.stats import wasserstein_distance
    rng = np.random.default_rng(7)
    sizes = {"a": 20, "b": 50, "c": 19}                  # c has fewer than min_bucket_size held-out answers
    buckets = np.repeat(list(sizes), list(sizes.values()))
    H = rng.normal(size=(len(buckets), 5)) * [1.0, 3.0, 1.0, 2.0, 1.0]
    G = H + rng.normal(size=H.shape) + np.where(buckets == "b", 2.0, 0.3)[:, None]
    G[buckets == "c"] += 50.0                            # a skipped bucket with a huge gap: it must not count
    a_rows = np.flatnonzero(buckets == "a")
    H[a_rows, 2] = 4.0; H[a_rows[0], 2] = 4.0 + 1e-6     # sigma ~ 2e-7 in a: divided by eps = 1e-3 instead
    G[a_rows, 2] = 4.002
    H[buckets == "b", 4] = G[buckets == "b", 4] = np.nan  # f4 does not apply in b
    refs = {"constant": {"b": ["f3"]}}
    used = {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2]}        # b: f3 constant in the references, f4 not applicable
    want = {}
    for b, cols in used.items():
        sel = buckets == b
        gaps = [wasserstein_distance(G[sel, k], H[sel, k]) / max(np.std(H[sel, k]), 1e-3) for k in cols]
        want[b] = sum(gaps) / len(gaps)
    r = bng(G, H, buckets, ["f0", "f1", "f2", "f3", "f4"], references=refs, eps=1e-3, min_bucket_size=20,
            held_out_constant="eps")
    bb = r.by_bucket.set_index("bucket_id")
    assert bb["eligible"].to_dict() == {"a": True, "b": True, "c": False}
    assert bb["n_features"].to_dict() == {"a": 5, "b": 3, "c": 5}
    assert bb.loc["a", "bng"] == pytest.approx(want["a"], rel=1e-9)
    assert bb.loc["b", "bng"] == pytest.approx(want["b"], rel=1e-9)
    assert r.overall_macro == pytest.approx((want["a"] + want["b"]) / 2, rel=1e-9)
    assert r.overall_weighted == pytest.approx((20 * want["a"] + 50 * want["b"]) / 70, rel=1e-9)
    assert abs(r.overall_macro - r.overall_weighted) > 0.1   # the bucket sizes make the two means differ


# NUF example (App. D): bng_t = 1/(1+max(BNG,0)), cm = clip(C-MAUVE), n_b = sqrt(bng_t*cm), u_b = clip(F1)
NUF_TABLE = pd.DataFrame({
    "bucket_id": ["b1", "b2", "b3", "b4", "b5", "b6"],
    "f1": [0.9, 0.5, 0.3, 1.2, 0.7, -0.1],            # u: 0.9, 0.5, 0.3, 1 (clipped), 0.7, 0 (clipped)
    "bng": [1.0, 0.25, 3.0, -1.5, np.nan, 0.0],       # bng_t: 0.5, 0.8, 0.25, 1 (max(., 0)), -, 1
    "c_mauve": [0.98, 0.8, 0.64, 0.09, 0.5, 1.3],     # cm: 0.98, 0.8, 0.64, 0.09, 0.5, 1 (clipped)
    "tdm": [0.5, np.nan, 0.2, 1.0, 0.9, np.nan]})
NUF_N = {"b1": 0.7, "b2": 0.8, "b3": 0.4, "b4": 0.3, "b6": 1.0}   # sqrt(0.49), sqrt(0.64), sqrt(0.16), sqrt(0.09), 1
NUF_U = {"b1": 0.9, "b2": 0.5, "b3": 0.3, "b4": 1.0, "b6": 0.0}


def test_nuf_hand_computed_naturalness_frontier_and_hypervolume():
    "NUF on six buckets by hand: geometric-mean naturalness, clipping, NaN dropped, frontier, HV and macro."
    out = nuf(NUF_TABLE)
    pts = {p["bucket_id"]: (p["u"], p["n"]) for p in out["by_bucket"]}
    for b, n in NUF_N.items():
        assert pts[b] == (pytest.approx(NUF_U[b]), pytest.approx(n, abs=1e-12)), b
    assert math.isnan(pts["b5"][1]) and (out["n_points"], out["n_dropped"]) == (5, 1)
    # non-dominated (maximising u and n): b4 (1, .3), b1 (.9, .7), b2 (.5, .8), b6 (0, 1); b3 (.3, .4) < b2
    assert [p["bucket_id"] for p in out["frontier_points"]] == ["b4", "b1", "b2", "b6"]
    # staircase above (0, 0), u ascending over points with u > 0: b2, b1, b4
    assert out["hypervolume"] == pytest.approx(0.5 * 0.8 + (0.9 - 0.5) * 0.7 + (1.0 - 0.9) * 0.3, abs=1e-12)
    assert out["macro"] == pytest.approx((0.9 * 0.7 + 0.5 * 0.8 + 0.3 * 0.4 + 1.0 * 0.3 + 0.0 * 1.0) / 5, abs=1e-12)
    shifted = nuf(NUF_TABLE, reference=(0.4, 0.5))    # only b2 and b1 lie above the reference point
    assert shifted["hypervolume"] == pytest.approx((0.5 - 0.4) * (0.8 - 0.5) + (0.9 - 0.5) * (0.7 - 0.5), abs=1e-12)


def test_nuf_multi_turn_uses_the_cube_root_with_tdm():
    "Multi-turn NUF (eq. 16): n_b = (bng_t * cm * clip(TDM))^(1/3) over the buckets that have a TDM."
    out = nuf(NUF_TABLE, multi_turn=True)
    n = {"b1": (0.5 * 0.98 * 0.5) ** (1 / 3), "b3": (0.25 * 0.64 * 0.2) ** (1 / 3), "b4": (1.0 * 0.09 * 1.0) ** (1 / 3)}
    pts = {p["bucket_id"]: p["n"] for p in out["by_bucket"]}
    assert set(pts) == {"b1", "b3", "b4", "b5"} and math.isnan(pts["b5"])
    for b, v in n.items(): assert pts[b] == pytest.approx(v, abs=1e-12), b
    # b4 (u 1) and b1 (u .9) are non-dominated, b3 (.3, .317) is below b1 (.9, .397)
    assert out["hypervolume"] == pytest.approx(0.9 * n["b1"] + (1.0 - 0.9) * n["b4"], abs=1e-12)
    assert out["macro"] == pytest.approx((0.9 * n["b1"] + 0.3 * n["b3"] + 1.0 * n["b4"]) / 3, abs=1e-12)


def test_agg_matches_reported_recomputations():
    "Agg recomputed from the authors' raw metrics gives the numbers the paper prints."
    assert aggregate(0.2487, 6.3444, 0.5313, 0.1704) == pytest.approx(0.23529, abs=5e-5)
    assert aggregate(0.4500, 0.4282, 0.7073, 0.8777) == pytest.approx(0.6650, abs=5e-4)   # Llama zh HDPO JSON
    assert math.isnan(aggregate(float("nan"), float("nan"), float("nan"), 0.5))


def test_agg_hand_computed_geometric_mean_and_clipping():
    "Agg = (clip(F1) * 1/(1+max(BNG,0)) * clip(G-MAUVE) * clip(NUF))^(1/4); non-finite parts dropped, 0 absorbs."
    assert aggregate(0.5, 1.0, 0.8, 0.4) == pytest.approx((0.5 * 0.5 * 0.8 * 0.4) ** 0.25, abs=1e-12)
    assert aggregate(1.7, -2.0, 1.2, 0.25) == pytest.approx(0.25 ** 0.25, abs=1e-12)    # 1 * 1 * 1 * 0.25
    assert aggregate(0.5, float("nan"), 0.8, 0.4) == pytest.approx((0.5 * 0.8 * 0.4) ** (1 / 3), abs=1e-12)
    assert aggregate(0.9, 3.0, float("inf"), float("nan")) == pytest.approx((0.9 * 0.25) ** 0.5, abs=1e-12)
    assert aggregate(0.0, 1.0, 0.8, 0.4) == 0.0 and aggregate(0.5, 1.0, -0.3, 0.4) == 0.0


def _frame(n=60, seed=0):
    r = np.random.default_rng(seed)
    fr = pd.DataFrame({"id": [f"r{i}" for i in range(2 * n)], "language": "zh",
                       "bucket_id": ["zh|single|qa|short"] * n + ["zh|multi|dialogue|short"] * n,
                       "dataset": "d", "family": ["qa"] * n + ["dialogue"] * n, "track": ["single"] * n + ["multi"] * n,
                       "question": [f"问题{i}关于{i % 5}" for i in range(2 * n)],
                       "human_answer": [f"答案是第{i % 7}个，{'非常' * (i % 3)}好" for i in range(2 * n)]})
    fr["prediction"] = [a[:3] for a in fr["human_answer"]]
    H = r.standard_normal((2 * n, 4)); G = H + r.standard_normal((2 * n, 4))
    He = r.standard_normal((2 * n, 6)).astype(np.float32); Ge = He + 1
    return fr, G, H, Ge, He


def test_evaluate_is_deterministic_and_ci_brackets_point():
    fr, G, H, Ge, He = _frame()
    cfg = MetricsConfig(bootstrap_samples=40)
    a = evaluate(fr, G, H, list("abcd"), Ge, He, mcfg=cfg, seed=3)
    b = evaluate(fr, G, H, list("abcd"), Ge, He, mcfg=cfg, seed=3)
    assert a.table2_cells() == b.table2_cells() and a.summary["ci"] == b.summary["ci"]
    for k, v in a.table2_cells().items():
        ci = a.summary["ci"][k]
        assert ci["low"] - 1e-9 <= v <= ci["high"] + 1e-9, (k, v, ci)
    assert 0 < a.summary["tdm"]["overall_macro"] < 1
    assert a.summary["utility"]["overall"]["qa_f1"] > 0.3   # character-level partial credit in Chinese


def test_evaluate_wires_nuf_and_agg_to_their_components():
    "Table 2 NUF is the HV of the buckets' (clip(F1_b), n_b) points; Agg combines QA-F1, BNG-macro, G-MAUVE and NUF."
    fr, G, H, Ge, He = _frame()
    e = evaluate(fr, G, H, list("abcd"), Ge, He, mcfg=MetricsConfig(bootstrap_samples=0), seed=3)
    t = e.buckets
    assert len(t) == 2 and t[["f1", "bng", "c_mauve"]].notna().all().all()
    u = t["f1"].clip(0, 1).to_numpy()
    n = np.sqrt(1 / (1 + t["bng"]) * t["c_mauve"].clip(0, 1)).to_numpy()
    hv = u[0] * n[0] + u[1] * n[1] - min(u) * min(n)     # union of two rectangles anchored at (0, 0)
    cells = e.table2_cells()
    assert cells["nuf"] == pytest.approx(hv, abs=1e-12)
    assert cells["qa_f1"] == pytest.approx(e.rows["f1"].mean()) and cells["bng_macro"] == pytest.approx(t["bng"].mean())
    g_mauve = e.summary["mauve"]["global"]
    assert g_mauve != pytest.approx(e.summary["mauve"]["overall_macro"])   # G-MAUVE, not the C-MAUVE macro
    want = (cells["qa_f1"] * 1 / (1 + cells["bng_macro"]) * min(g_mauve, 1.0) * hv) ** 0.25
    assert cells["agg"] == pytest.approx(want, abs=1e-12)


def test_evaluate_refuses_mixed_languages():
    fr, G, H, Ge, He = _frame()
    fr.loc[0, "language"] = "en"
    with pytest.raises(ValueError, match="one language at a time"):
        evaluate(fr, G, H, list("abcd"), Ge, He, mcfg=MetricsConfig(bootstrap_samples=0))


def test_one_normalize_text_and_the_metrics_whitespace_rule():
    "The corpus normaliser is data's; metrics' rule keeps blank-line runs under its own name."
    import polyalign.metrics as metrics
    from polyalign.data import normalize_text
    assert not hasattr(metrics, "normalize_text")
    assert normalize_text("a\n\n\n\nb  c ") == "a\n\nb c"
    assert metrics.collapse_line_whitespace("a\n\n\n\nb  c ") == "a\n\n\n\nb c"
    assert metrics.collapse_line_whitespace(None) == "" and metrics.collapse_line_whitespace(" \r\n\t ") == ""


def test_vocabulary_comes_from_core():
    import polyalign.metrics as metrics
    from polyalign.core import LANGUAGES, METHODS
    assert metrics.LANGUAGES is LANGUAGES
    assert [metrics.method_label(m) for m in METHODS] == [m.label for m in METHODS.values()]
    assert metrics.method_label("FullSFT") == "Full-SFT" and metrics.method_label("my_method") == "my_method"
    for name in ("METHOD_ORDER", "_METHOD_KEYS", "_HAN", "_md_escape", "_tex_escape"):
        assert not hasattr(metrics, name), name
    assert answer_tokens("\U00030000\U00030001汉", "zh") == ["\U00030000", "\U00030001", "汉"]   # core.HAN (Ext. G)


def test_metrics_stage_records_one_part_and_skips_when_current(tmp_path, monkeypatch):
    "The stage plumbing without the metrics: part name, sections, inputs, outputs, and a skip on an unchanged rerun."
    import polyalign.metrics as metrics
    from polyalign.core import StageResult, load_config, read_manifest, write_jsonl, write_parquet
    write_parquet(tmp_path / "data" / "test.parquet", pd.DataFrame({"id": ["a"], "language": ["en"]}))
    write_parquet(tmp_path / "features" / "references.parquet", pd.DataFrame({"x": [1]}))
    write_jsonl(tmp_path / "predictions" / "tiny" / "cot.jsonl", [{"id": "a", "prediction": "x"}])
    calls = []

    def fake(cfg):
        calls.append(cfg.run_dir)
        out = tmp_path / "tables" / "table2_main.md"
        out.parent.mkdir(parents=True, exist_ok=True); out.write_text("| t |\n")
        return StageResult(outputs=[out], rows_in=3, rows_out=2, rows_rejected=0, extra={"evaluated": ["x"]})
    monkeypatch.setattr(metrics, "evaluate_and_write", fake)
    cfg = load_config("tiny", [f"run_dir={tmp_path}"])
    result = metrics.metrics_stage(cfg)
    rec = read_manifest(tmp_path)["stages"]["metrics"]
    assert list(result.records) == ["metrics"]
    assert rec["sections"] == ["profile", "seed", "models", "features", "metrics"]
    assert list(rec["inputs"]) == ["data/test.parquet", "features/references.parquet", "predictions/tiny/cot.jsonl"]
    assert (result.rows_in, result.rows_out) == (3, 2) and result.outputs == [tmp_path / "tables" / "table2_main.md"]
    assert metrics.metrics_stage(cfg).records["metrics"]["last_action"] == "skipped" and len(calls) == 1
    write_jsonl(tmp_path / "predictions" / "tiny" / "hdpo.jsonl", [{"id": "a", "prediction": "y"}])
    assert metrics.metrics_stage(cfg).records["metrics"]["last_action"] == "ran" and len(calls) == 2


# --- BNG's held-out-constant rule, the one eligibility rule, the noise floor, the generated answers' features ---

def _rare_feature_halves(n=40, seed=0):
    "Two halves of a human bucket: f2 (a rare count, e.g. ordinals) is 0 everywhere in half B and once 1 in half A."
    X = np.random.default_rng(seed).normal(size=(n, 3))
    X[:, 2] = 0.0; X[3, 2] = 1.0
    return X[: n // 2], X[n // 2:]


def test_bng_feature_constant_in_the_held_out_bucket_is_scaled_by_the_train_std():
    from scipy.stats import wasserstein_distance
    A, B = _rare_feature_halves()
    refs = {"std": {"b": {"f0": 1.0, "f1": 1.0, "f2": 0.2}}}
    run = lambda rule: bng(A, B, ["b"] * 20, ["f0", "f1", "f2"], references=refs, held_out_constant=rule,
                           held_out={"b": 40}).by_bucket.iloc[0]
    base = [wasserstein_distance(A[:, k], B[:, k]) / np.std(B[:, k]) for k in (0, 1)]
    assert run("train_std").bng == pytest.approx(np.mean(base + [(1 / 20) / 0.2]), rel=1e-9)
    assert run("exclude").bng == pytest.approx(np.mean(base), rel=1e-9)
    assert run("eps").bng == pytest.approx(np.mean(base + [(1 / 20) / 1e-3]), rel=1e-9)
    assert run("train_std").bng < 1 < 10 < run("eps").bng     # a human sample stays near the floor only with a scale
    assert (run("train_std").n_held_out_constant, run("exclude").n_features) == (1, 2)


def test_one_eligibility_rule_held_out_answers_for_bng_c_mauve_and_tdm():
    "A bucket is scored by BNG, C-MAUVE and TDM alike when it has min_bucket_size held-out answers, whatever train had."
    fr, G, H, Ge, He = _frame(n=30)
    sub = np.r_[0:12, 30:60]                          # 12 rows of the qa bucket scored, all 30 of the dialogue bucket
    f, g, h, ge, he = fr.iloc[sub].reset_index(drop=True), G[sub], H[sub], Ge[sub], He[sub]
    cfg = MetricsConfig(bootstrap_samples=0)
    qa, dia = "zh|single|qa|short", "zh|multi|dialogue|short"

    def scored(held):
        s = evaluate(f, g, h, list("abcd"), ge, he, mcfg=cfg, held_out=held).summary
        return ({r["bucket_id"] for r in s["bng"]["by_bucket"] if r["eligible"]},
                {r["bucket_id"] for r in s["mauve"]["by_bucket"]}, {r["bucket_id"] for r in s["tdm"]["by_bucket"]})
    assert scored(None) == ({dia}, {dia}, {dia})                        # 12 rows and no held-out counts: too few
    assert scored({qa: 30, dia: 30}) == ({qa, dia}, {qa, dia}, {dia})   # TDM: multi-turn buckets only
    assert scored({qa: 19, dia: 19}) == (set(), set(), set())


def test_noise_floor_halves_are_disjoint_seeded_and_stay_in_their_bucket():
    from polyalign.metrics import noise_floor_frame, noise_floor_pairs
    fr = _frame(n=31)[0]
    a, b = noise_floor_pairs(fr, seed=5)
    assert len(a) == len(b) == 30 and not set(a) & set(b)
    assert (fr["bucket_id"].to_numpy()[a] == fr["bucket_id"].to_numpy()[b]).all()
    assert noise_floor_pairs(fr, seed=5)[0].tolist() == a.tolist() != noise_floor_pairs(fr, seed=6)[0].tolist()
    nf, a2, b2 = noise_floor_frame(fr, seed=5)
    assert nf["prediction"].tolist() == fr["human_answer"].to_numpy()[a].tolist()
    assert nf["id"].tolist() == fr["id"].to_numpy()[b].tolist()


def test_noise_floor_tdm_pairs_each_answer_with_its_own_question(monkeypatch):
    "evaluate hands TDM the questions the predictions answer (`prediction_question`), and TDM uses them."
    import polyalign.metrics as metrics
    from polyalign.metrics import noise_floor_frame, tdm
    fr = _frame(n=40)[0]
    nf, a, b = noise_floor_frame(fr, seed=0)
    seen = {}
    real = metrics.tdm
    monkeypatch.setattr(metrics, "tdm", lambda *args, **kw: seen.setdefault("args", args) and real(*args, **kw))
    evaluate(nf, mcfg=MetricsConfig(bootstrap_samples=0), noise_floor=True)
    multi = (nf["track"] == "multi").to_numpy()
    assert seen["args"][0] == nf["question"][multi].tolist()                 # the reference side: half B's questions
    assert seen["args"][8] == nf["prediction_question"][multi].tolist()      # the predictions' own: half A's
    q, h = fr["question"].tolist(), fr["human_answer"].tolist()
    perm = np.random.default_rng(1).permutation(len(q))
    same = tdm(q, h, [h[i] for i in perm], ["x"] * len(q), "zh", gen_questions=[q[i] for i in perm])
    assert same["overall_macro"] == pytest.approx(1.0, abs=1e-9)         # the same pairs in another order


def test_noise_floor_has_no_qa_f1_and_uses_human_utility_for_nuf():
    fr, G, H, Ge, He = _frame()
    e = evaluate(fr, G, H, list("abcd"), Ge, He, mcfg=MetricsConfig(bootstrap_samples=20), noise_floor=True)
    assert math.isnan(e.table2_cells()["qa_f1"]) and e.summary["utility"]["overall"]["qa_f1"] == 1.0
    assert "ci" not in e.summary                      # no interval: the percentile bootstrap sits above a floor
    assert (e.buckets["f1"] == 1.0).all()
    from polyalign.metrics import table2_cells
    assert math.isnan(table2_cells([e]).loc[0, "qa_f1_low"])


def test_generated_answers_get_the_references_lm_features(monkeypatch):
    "default_extract runs the features stage's LM scorer with the same conditioning prefix as the human answers."
    import polyalign.features as features
    from polyalign.core import RunConfig
    from polyalign.metrics import default_extract
    seen = {}

    class FakeScorer:
        def score(self, texts, prompts=None, ids=None):
            seen["prompts"] = list(prompts)
            return features.FeatureMatrix(np.ones((len(texts), len(features.LM_FEATURE_NAMES)), np.float32),
                                          list(features.LM_FEATURE_NAMES), ids)
    monkeypatch.setattr(features, "feature_scorer", lambda cfg: FakeScorer() if cfg.features.lm_features else None)
    cfg = RunConfig(run_dir="unused"); cfg.features.lm_features = True
    fr = _frame(n=3)[0].assign(context=["ctx"] * 6, dialogue_history=[None] * 6)
    values, names = default_extract(cfg)(fr["prediction"].tolist(), fr)
    assert names == features.feature_names(cfg) and values.shape == (6, len(names))
    assert seen["prompts"] == features.lm_prompts(fr)
    cfg.features.lm_features = False
    assert default_extract(cfg)(fr["prediction"].tolist(), fr)[1] == features.TEXT_FEATURE_NAMES
