"""polyalign.critic: D_b hand cases, the Theorem 4 loss, bundle round trip, collapse guard, unknown buckets, pair scoring."""
import numpy as np
import pandas as pd
import pytest
import torch

from polyalign.core import CriticConfig
from polyalign.critic import (UNKNOWN_BUCKET, Critic, CriticCollapseError, CriticData, collapse_guard, critic_data,
                              critic_loss, evaluate_critic, new_critic, score_pairs, support_distance, train_critic)
from polyalign.features import FeatureMatrix, References, fit_references


def refs_by_hand():
    lower = np.array([[0.0, 1.0, 5.0], [0.0, 0.0, 0.0]]); upper = np.array([[10.0, 2.0, 5.0], [1.0, 1.0, 1.0]])
    std = np.array([[3.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
    stats = {"lower": lower, "upper": upper, "std": std, "scale": np.fmax(np.fmax(upper - lower, std), 1e-6),
             "count": np.full((2, 3), 30.0), "constant": np.array([[False, False, True], [False] * 3])}
    return References(["a", "b"], ["f1", "f2", "f3"], stats, np.array([30, 5]), np.array([True, False]))


@pytest.mark.parametrize("z,expected", [
    ([5.0, 1.5, 5.0], 0.0),                 # inside
    ([0.0, 1.0, 5.0], 0.0),                 # on the boundary
    ([-5.0, 1.5, 5.0], 0.25),               # below l: 5/10 over |J| = 2 (f3 constant, excluded)
    ([5.0, 6.0, 5.0], 1.0),                 # above u: 4/2 over 2
    ([5.0, 1.5, 1e9], 0.0),                 # constant feature excluded (no 1e-6 blow-up)
    ([np.nan, 6.0, 5.0], 2.0),              # missing feature leaves J_b
])
def test_support_distance_hand(z, expected):
    assert support_distance(z, refs_by_hand(), "a") == pytest.approx(expected)


def test_support_distance_needs_a_usable_feature():
    "Eq. 4 requires J_b(z) to be non-empty: with no usable feature D_b is undefined (NaN), not a perfect 0."
    R = refs_by_hand()
    assert np.isnan(support_distance([np.nan, np.nan, np.nan], R, "a"))
    assert np.isnan(support_distance([np.nan, np.nan, 5.0], R, "a", require_eligible=False))   # f3 is constant


def test_support_distance_vectorised_cap_eligibility_unknown():
    R = refs_by_hand()
    Z = np.array([[5.0, 1.5, 5.0], [-5.0, 6.0, 5.0], [105.0, 1.5, 5.0]])
    np.testing.assert_allclose(support_distance(Z, R, "a"), [0.0, (0.5 + 2.0) / 2, 9.5 / 2])
    np.testing.assert_allclose(support_distance(Z, R, "a", cap=1.0), [0.0, (0.5 + 1.0) / 2, 0.5])
    assert np.isnan(support_distance(Z[:1], R, ["b"])[0])
    assert support_distance([2.0, 0.5, 0.5], R, "b", require_eligible=False) == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="nowhere"):
        support_distance(Z, R, ["a", "a", "nowhere"])
    with pytest.raises(ValueError, match="3 reference features"):
        support_distance(np.zeros((2, 2)), R, "a")


def test_support_distance_on_fitted_references():
    # 40 train rows, f in 0..39: linear q10 = 3.9, q90 = 35.1, scale 31.2; g constant
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(40)], "bucket_id": "b", "split": "train"})
    fm = FeatureMatrix(np.stack([np.arange(40.0), np.full(40, 7.0)], 1), ["f", "g"], frame.id.tolist())
    R = fit_references(frame, fm)
    z = FeatureMatrix(np.array([[3.9 - 31.2, 100.0], [20.0, 7.0]], np.float32), ["f", "g"])
    np.testing.assert_allclose(support_distance(z, R, "b"), [1.0, 0.0], rtol=1e-5)


def test_loss_against_hand_computation():
    p, t = torch.tensor([0.5, 2.0, 1.0]), torch.tensor([1.0, 2.0, 0.0])
    pp, pm = torch.tensor([0.2, 0.3]), torch.tensor([0.25, 1.0])
    total, reg, rank = critic_loss(p, t, pp, pm)                         # paper defaults λ = 1, κ = 0.1
    assert reg.item() == pytest.approx(0.5)
    assert rank.item() == pytest.approx((0.1 - 0.25 + 0.2) / 2)
    assert total.item() == pytest.approx(0.5 + 0.025)
    assert critic_loss(t, t, pp, pp + 0.1 + 1e-3)[0].item() == 0.0      # Theorem 4: calibrated and ordered -> 0
    assert critic_loss(p, t, None, None)[2].item() == 0.0


def synthetic(rng, R, n):
    b = rng.choice(R.buckets, n); bi = np.searchsorted(R.buckets, b)
    lo, hi = R.stats["lower"][bi], R.stats["upper"][bi]
    mid, w = (lo + hi) / 2, hi - lo
    Xh, Xm = mid + w * rng.normal(0, 0.5, lo.shape), mid + w * rng.normal(0.6, 1.2, lo.shape)
    ids = [f"r{i}" for i in range(n)]
    frame = pd.DataFrame({"id": ids, "bucket_id": b, "human_answer": [f"h{i}" for i in range(n)]})
    fm = lambda X: FeatureMatrix(X.astype(np.float32), list(R.features), ids)
    answers = [f"m{i}" for i in range(n)]
    answers[0] = "H0 "                                                  # identical after folding: no pair
    return critic_data(frame, fm(Xh), answers, fm(Xm), R, cap=10.0)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    F = 6
    lo = rng.normal(0, 1, (2, F)); hi = lo + rng.uniform(0.5, 2, (2, F))
    stats = {"lower": lo, "upper": hi, "scale": hi - lo, "count": np.full((2, F), 50.0), "constant": np.zeros((2, F), bool)}
    R = References(["x", "y"], [f"f{j}" for j in range(F)], stats, np.array([50, 50]), np.array([True, True]))
    tr, va = synthetic(rng, R, 800), synthetic(rng, R, 200)
    cc = CriticConfig(max_epochs=8, patience=2, batch_size=64, pair_batch_size=32)
    critic = new_critic(cc, R.buckets, features=R.features, seed=3)
    fit = train_critic(critic, tr, va, cc, seed=3, progress=False)
    return R, tr, va, cc, critic, fit


def test_critic_data_counts(trained):
    _, tr, _, _, _, _ = trained
    assert len(tr) == 1600 and tr.counts["pairs_dropped_identical"] == 1 and len(tr.pairs) == 799
    assert set(tr.source) == {"human", "model"}
    assert (tr.source[tr.pairs[:, 0]] == "human").all() and (tr.source[tr.pairs[:, 1]] == "model").all()


def test_training_learns_and_is_seeded(trained):
    R, tr, va, cc, critic, fit = trained
    ev = evaluate_critic(critic, va)
    assert ev["spearman"] > 0.5 and ev["ranking_accuracy"] > 0.7
    assert (critic.score(va.features, va.buckets) >= 0).all()
    runs = []
    for _ in range(2):                                                   # same seed, same scores, bit for bit
        c = new_critic(cc, R.buckets, features=R.features, seed=5)
        train_critic(c, tr, va, cc, seed=5, max_epochs=1, progress=False)
        runs.append(c.score(va.features, va.buckets))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert fit["best_epoch"] <= fit["epochs_run"]


def test_bundle_round_trip(trained, tmp_path):
    _, _, va, _, critic, _ = trained
    path = critic.save(tmp_path / "critic")
    assert {p.name for p in path.iterdir()} >= {"critic.safetensors", "critic_config.json", "bucket_vocab.json"}
    back = Critic.load(path)
    assert back.buckets == critic.buckets and back.buckets[-1] == UNKNOWN_BUCKET and back.features == critic.features
    np.testing.assert_array_equal(back.score(va.features, va.buckets), critic.score(va.features, va.buckets))


def test_unknown_bucket(trained):
    _, _, va, _, critic, _ = trained
    with pytest.raises(KeyError, match="never-seen"):
        critic.score(va.features[:3], ["x", "never-seen", "y"])
    s = critic.score(va.features[:3], ["x", "never-seen", "y"], unknown_bucket="fallback")
    assert np.isfinite(s).all() and (s >= 0).all()


def test_collapse_guard_fires_on_constant_critic(trained):
    R, _, va, cc, _, _ = trained
    collapse_guard(np.linspace(0, 1, 10), va.features[:10])               # spread: passes
    with pytest.raises(CriticCollapseError, match="collapsed"):
        collapse_guard(np.full(10, 0.0313), va.features[:10])
    assert collapse_guard(np.full(10, 0.0313), np.ones((10, 3)))["distinct"] == 1    # identical inputs may tie
    constant = new_critic(cc, R.buckets, features=R.features, seed=0)
    with torch.no_grad():                                                 # a critic that ignores its input
        last = constant.module.head.mlp[-1]; last.weight.zero_(); last.bias.fill_(-3.4)
    with pytest.raises(CriticCollapseError):
        score_pairs(constant, va.features[va.pairs[:, 0]], va.features[va.pairs[:, 1]], [va.buckets[i] for i in va.pairs[:, 0]])
    with pytest.raises(CriticCollapseError, match="pairs"):               # varies by bucket only
        collapse_guard(np.r_[np.zeros(5), np.ones(5)], None, pairs=(np.arange(5.0), np.arange(5.0), np.ones(5)))


def test_score_pairs(trained):
    _, _, va, _, critic, _ = trained
    b = [va.buckets[i] for i in va.pairs[:, 0]]
    s_plus, s_minus = score_pairs(critic, va.features[va.pairs[:, 0]], va.features[va.pairs[:, 1]], b)
    assert s_plus.shape == s_minus.shape == (len(va.pairs),) and np.mean(s_plus < s_minus) > 0.7
    fm = FeatureMatrix(va.features[va.pairs[:, 0]][:, ::-1].copy(), critic.features[::-1])   # matched by feature name
    np.testing.assert_allclose(score_pairs(critic, fm, va.features[va.pairs[:, 1]], b)[0], s_plus, rtol=1e-6)


def test_feature_critic_scores_texts():
    from polyalign.features import TEXT_FEATURE_NAMES
    cc = CriticConfig()
    critic = new_critic(cc, ["en|a"], features=list(TEXT_FEATURE_NAMES), seed=0)
    s = critic.score(["A short answer.", "A much longer answer, with two clauses. And a second sentence!"], "en|a", languages="en")
    assert s.shape == (2,) and s[0] != s[1]
    with pytest.raises(ValueError, match="languages"):
        critic.score(["x"], "en|a")
    lm = new_critic(cc, ["en|a"], features=list(TEXT_FEATURE_NAMES) + ["lm_answer_tokens"], seed=0)
    with pytest.raises(ValueError, match="scorer"):
        lm.score(["x"], "en|a", languages="en")


def test_bad_inputs():
    with pytest.raises(ValueError, match="no regression rows"):
        train_critic(new_critic(CriticConfig(), ["a"], features=["f"]), CriticData(np.zeros((0, 1), np.float32), [], [], np.zeros(0),
                                                                                  np.array([])), None, CriticConfig())
    with pytest.raises(Exception, match="unknown critic.kind"):
        new_critic(CriticConfig(kind="svm"), ["a"], features=["f"])


@pytest.fixture(scope="module")
def critic_run(tmp_path_factory):
    """A tiny run from plain Python up to the critic: core, data (a tenth of each fixture) and features stages, and
    copies of the tiny base model standing in for the Bucket-SFT checkpoints (the critic only generates with them)."""
    import shutil
    from polyalign.core import core_stage, load_config, run_path
    from polyalign.features import features_stage
    from polyalign.sources import data_stage
    cfg = load_config("tiny", {"run_dir": str(tmp_path_factory.mktemp("criticrun") / "tiny"), "data.tiny_scale": 0.1,
                               "features.lm_features": False, "features.min_bucket_count": 3,
                               "critic.max_train_prompts": 40, "critic.max_epochs": 3})
    core_stage(cfg); data_stage(cfg); features_stage(cfg)
    for lang in cfg.sft.languages:
        shutil.copytree(run_path(cfg, "models", "tiny"), run_path(cfg, "checkpoints", "tiny", f"bucket_sft-{lang}", "final"))
    return cfg


def test_critic_stage_from_plain_python(critic_run):
    from pathlib import Path
    from polyalign.core import file_hash, read_jsonl, read_manifest
    from polyalign.critic import critic_dir, critic_stage, load_critic
    cfg, run = critic_run, Path(critic_run.run_dir)
    res = critic_stage(cfg)
    rec = read_manifest(run)["stages"]["critic/tiny"]
    assert list(res.records) == ["critic/tiny"] and rec["status"] == "done" and rec["last_action"] == "ran"
    assert rec["sections"] == ["seed", "models", "data", "features", "sft", "generate", "critic"]
    assert set(rec["inputs"]) == {"features/references.parquet", "data/train.parquet", "data/val.parquet",
                                  "features/train.parquet", "features/val.parquet",
                                  "checkpoints/tiny/bucket_sft-en/final", "checkpoints/tiny/bucket_sft-zh/final"}
    assert set(rec["outputs"]) == {"generations/train/tiny/bucket_sft.jsonl", "generations/val/tiny/bucket_sft.jsonl",
                                   "critic/tiny", "critic/tiny/training_summary.json"}
    for rel, h in rec["outputs"].items(): assert h == file_hash(run / rel), rel
    counts = rec["critic"]["counts"]
    assert counts["train"]["records"] == 40                                  # critic.max_train_prompts
    assert rec["rows"]["in"] == counts["train"]["records"] + counts["val"]["records"]
    assert rec["rows"]["in"] - rec["rows"]["out"] == rec["rows"]["rejected"]
    answered = {r["id"] for r in read_jsonl(run / "generations" / "val" / "tiny" / "bucket_sft.jsonl")}
    assert len(answered) == counts["val"]["records"]
    critic = load_critic(cfg, "tiny")
    assert critic_dir(cfg, "tiny") == run / "critic" / "tiny" and critic.kind == "mlp"
    assert res.records["critic/tiny"]["critic"]["best_epoch"] <= 3
    assert critic_stage(cfg).records["critic/tiny"]["last_action"] == "skipped"
