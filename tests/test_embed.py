"""Answer embeddings, embedding-space distances and Figure 4 (polyalign.embed) beyond the notebook's examples: the
distances against hand-computed values and their tests, the stage on a small synthetic run (table, both figure
formats, manifest record, cache reuse, paper-compatible refits with a clamped UMAP), and manifest-linked prediction
files (a mislabelled one is an error)."""
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyalign import embed as E
from polyalign.core import EmbedConfig, load_config, read_manifest, write_json, write_jsonl

METHODS = ("base_lm", "dpo", "hdpo")
EN = "river stone answer light paper garden window music table morning quiet story water simple".split()
ZH = list("山水人天地花鸟风雨月日星云海书字心年家国学生")


def _record(i: int, lang: str, answer: str) -> dict:
    return {"id": f"{lang}-{i:03d}", "dataset": "synthetic", "split": "test", "language": lang, "track": "single",
            "family": "qa", "style_bucket": "qa_search", "length_bin": "short", "bucket_id": f"{lang}|single|qa|short",
            "question": f"question {i}", "context": "", "dialogue_history": [], "human_answer": answer,
            "answer_tokens": len(answer), "group_id": f"g{i}", "meta": json.dumps({"i": i})}


def make_run(root: Path, n_per_language: int = 12, seed: int = 0) -> Path:
    """A run directory with a test split of `n_per_language` rows per language, one prediction file per method
    (hdpo: the human answer with its last word changed; dpo: unrelated text; base_lm: a shuffled human answer) and the
    manifest parts of the generation stage that wrote them."""
    import pyarrow.parquet as pq
    from polyalign.data import records_to_table
    rng = random.Random(seed)
    recs = []
    for lang, vocab, sep in (("en", EN, " "), ("zh", ZH, "")):
        for i in range(n_per_language):
            recs.append(_record(i, lang, sep.join(rng.choice(vocab) for _ in range(rng.randint(4, 12)))))
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(records_to_table(recs), root / "data" / "test.parquet")
    parts = {}
    for method in METHODS:
        rows = []
        for r in recs:
            words = r["human_answer"].split(" ") if r["language"] == "en" else list(r["human_answer"])
            sep = " " if r["language"] == "en" else ""
            if method == "hdpo": words[-1] = rng.choice(EN if r["language"] == "en" else ZH)
            elif method == "dpo": words = ["zzz", "qqq", "0101"] * 3
            else: rng.shuffle(words)
            rows.append({"id": r["id"], "method": method, "model": "tiny", "prediction": sep.join(words)})
        rng.shuffle(rows)   # files need not follow the test split's order: rows join on id
        rel = f"predictions/tiny/{method}.jsonl"
        write_jsonl(root / rel, rows)
        parts[f"generate/test/tiny/{method}"] = {"status": "done", "outputs": {rel: "x"}}
    write_json(root / "manifest.json", {"stages": parts})
    return root


def tiny_cfg(run_dir, *overrides):
    return load_config("tiny", [f"run_dir={run_dir}", "models.tiny.corpus_sentences=60", "embed.bootstrap_samples=50",
                                "embed.permutations=50", *overrides])


# --- distances ---------------------------------------------------------------------------------------------------

def test_mmd2_and_centroid_distance_by_hand():
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([[3.0], [5.0], [2.0]])
    # σ = 2: k(a, b) = exp(-(a-b)²/8); h_ij = k(x_i,x_j) + k(y_i,y_j) − k(x_i,y_j) − k(x_j,y_i), mean over i ≠ j
    k = lambda a, b: np.exp(-(a - b) ** 2 / 8)
    xs, ys = [0.0, 1.0, 2.0], [3.0, 5.0, 2.0]
    h = [k(xs[i], xs[j]) + k(ys[i], ys[j]) - k(xs[i], ys[j]) - k(xs[j], ys[i])
         for i in range(3) for j in range(3) if i != j]
    assert E.mmd2(x, y, sigma=2.0) == pytest.approx(sum(h) / 6, abs=1e-12)
    # the median heuristic: the median of the pooled pairwise distances, the zero one (x_2 = y_2) left out
    z = np.array([0.0, 1, 2, 3, 5, 2])
    d = np.abs(z[:, None] - z[None, :])[np.triu_indices(6, 1)]
    assert E.median_bandwidth(np.vstack([x, y])) == pytest.approx(np.median(d[d > 0]))
    assert E.mmd2(x, y) == pytest.approx(E.mmd2(x, y, sigma=np.median(d[d > 0])))
    # centroids (1, 1) and (1, 0): cos 45°
    a, b = np.array([[1.0, 0.0], [1.0, 2.0]]), np.array([[2.0, 0.0], [0.0, 0.0]])
    assert E.centroid_cosine_distance(a, b) == pytest.approx(1 - 2 ** -0.5)
    # the count-vector form (bootstrap replicates) agrees with the direct one for all-ones counts
    assert E._ustat_counts(E.mmd_h(x, y, 2.0), np.ones(3))[0] == pytest.approx(sum(h) / 6, abs=1e-12)
    # and a replicate that drew row 0 twice and row 2 once uses the pairs (0, 2) and (2, 0) twice each, never (0, 0)
    hm = E.mmd_h(x, y, 2.0)
    assert E._ustat_counts(hm, np.array([2.0, 0.0, 1.0]))[0] == pytest.approx(4 * hm[0, 2] / (9 - 5))


def test_mmd2_permutation_test_separates_same_from_shifted():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    same = E.embedding_distances(x, y, EmbedConfig(bootstrap_samples=100, permutations=200), seed=2)
    assert abs(same["mmd2"]) < 0.03 and same["mmd2_p"] > 0.2
    far = E.embedding_distances(x, y + 0.8, EmbedConfig(bootstrap_samples=100, permutations=200), seed=2)
    assert far["mmd2"] > 0.05 and far["mmd2_p"] < 0.01
    assert far["centroid_cos_dist"] > same["centroid_cos_dist"]


def test_bootstrap_intervals_contain_the_estimates():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)) + 1
    y = x + rng.normal(scale=0.7, size=x.shape)
    d = E.embedding_distances(x, y, EmbedConfig(bootstrap_samples=300, permutations=20, ci_level=0.9), seed=4)
    for s in ("centroid_cos_dist", "mmd2", "paired_cos"):
        assert d[f"{s}_low"] <= d[s] <= d[f"{s}_high"], s
        assert d[f"{s}_low"] < d[f"{s}_high"], s
    # a replicate that drew one row n times has no pair of distinct prompts: no division by zero
    c = np.zeros((1, 40)); c[0, 0] = 40
    assert np.isfinite(E._ustat_counts(E.mmd_h(x, y, 1.0), c)).all()


# --- the stage ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    "The embed stage run once on a synthetic run (12 rows per language, three methods)."
    run = make_run(tmp_path_factory.mktemp("embed-run"))
    cfg = tiny_cfg(run)
    res = E.embed_stage(cfg)
    return cfg, res


def test_stage_writes_table_figures_and_record(stage_run):
    cfg, res = stage_run
    run = Path(cfg.run_dir)
    for suffix in ("csv", "md", "tex"): assert (run / "tables" / f"embedding_distances.{suffix}").stat().st_size > 0
    for stem in ("fig4_embeddings", "fig4_embeddings_pca"):
        assert (run / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (run / "figures" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    table = pd.read_csv(run / "tables" / "embedding_distances.csv")
    assert list(table[["language", "method"]].itertuples(index=False, name=None)) == [
        (l, m) for l in ("en", "zh") for m in ("BaseLM", "DPO", "HDPO")]
    assert (table["n"] == 12).all()
    by = table.set_index(["language", "method"])
    for lang in ("en", "zh"):   # one changed word is closer to the human answer than unrelated text
        assert by.loc[(lang, "HDPO"), "paired_cos"] > by.loc[(lang, "DPO"), "paired_cos"]
        assert by.loc[(lang, "HDPO"), "mmd2"] < by.loc[(lang, "DPO"), "mmd2"]
    rec = read_manifest(run)["stages"]["embed"]
    assert rec["sections"] == ["profile", "seed", "models", "embed"]
    assert set(rec["inputs"]) == {"data/test.parquet", *(f"predictions/tiny/{m}.jsonl" for m in METHODS)}
    assert rec["encoded_texts"] == 2 * 12 * (1 + len(METHODS)) and rec["cache_hits"] == 0
    assert rec["umap_n_neighbors"] == {"en": 30, "zh": 30}
    assert "embedding_distances.md" in "".join(rec["outputs"])
    assert res.rows_out == 6


def test_stage_reuses_the_cache_and_refits_per_pair(stage_run, monkeypatch):
    "A rerun with other plot settings reads every embedding from the cache; paper_compat fits a clamped UMAP per pair."
    cfg, _ = stage_run
    assert E.embed_stage(cfg).records["embed"]["last_action"] == "skipped"
    def no_encoder(*a, **k): raise AssertionError("the encoder was loaded: an embedding was not read from the cache")
    monkeypatch.setattr(E, "load_encoder", no_encoder)
    cfg2 = tiny_cfg(cfg.run_dir, "embed.paper_compat=true", "embed.shift_lines=3")
    rec = E.embed_stage(cfg2).records["embed"]
    assert rec["last_action"] == "ran" and rec["encoded_texts"] == 0 and rec["cache_hits"] == 2 * (1 + len(METHODS))
    assert rec["umap_n_neighbors"] == {"en": 23, "zh": 23}   # 2 × 12 points per pair: clamped from 30
    md = (Path(cfg.run_dir) / "tables" / "embedding_distances.md").read_text()
    assert "HDPO" in md and "mmd2" in md


def test_small_rehearsal_sizes_run(tmp_path):
    "The rehearsal profile's sizes: 8 rows per language, 5 neighbours, a few bootstrap replicates."
    run = make_run(tmp_path / "r", n_per_language=9, seed=5)
    cfg = tiny_cfg(run, "embed.rows_per_language=8", "embed.umap_n_neighbors=5", "embed.shift_lines=8",
                   "embed.pooling=mean")
    rec = E.embed_stage(cfg).records["embed"]
    assert rec["rows_per_language"] == {"en": 8, "zh": 8} and rec["umap_n_neighbors"] == {"en": 5, "zh": 5}
    assert (run / "figures" / "fig4_embeddings.pdf").exists()


def test_a_mislabelled_prediction_file_is_an_error(tmp_path):
    "A file the manifest records for hdpo whose rows say dpo is never plotted as HDPO."
    run = make_run(tmp_path / "r")
    path = run / "predictions/tiny/hdpo.jsonl"
    rows = [{**r, "method": "dpo"} for r in map(json.loads, path.read_text().splitlines())]
    write_jsonl(path, rows)
    with pytest.raises(ValueError, match=r"hdpo.jsonl, row 1: model/method \('tiny', 'dpo'\) but the manifest part "
                                         r"generate/test/tiny/hdpo produced this file for \('tiny', 'hdpo'\)"):
        E.embed_stage(tiny_cfg(run))
    assert not (run / "tables" / "embedding_distances.csv").exists()


def test_embed_models_restricts_and_checks(tmp_path):
    run = make_run(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match=r"embed.models names \['Qwen__Qwen2.5-1.5B'\]"):
        E.linked_predictions(tiny_cfg(run, "embed.models=[Qwen/Qwen2.5-1.5B]"))
    assert set(E.linked_predictions(tiny_cfg(run, "embed.models=[tiny]"))) == {("tiny", m) for m in METHODS}


def test_answers_join_the_human_rows_on_id(tmp_path):
    "With a sample of the rows and files in another order, every model answer is the one its file gives that id."
    from polyalign.core import read_jsonl
    from polyalign.data import read_split
    run = make_run(tmp_path / "r", n_per_language=9, seed=7)
    cfg = tiny_cfg(run, "embed.rows_per_language=4")
    test = read_split(run / "data" / "test.parquet")
    rows = E.embedded_rows(test, cfg.embed, cfg.seed)
    assert rows.groupby("language").size().to_dict() == {"en": 4, "zh": 4}
    for (model, method), s in E.answer_sets(test, rows, E.linked_predictions(cfg)).items():
        by_id = {r["id"]: r["prediction"] for r in read_jsonl(run / "predictions" / model / f"{method}.jsonl")}
        assert s["id"].tolist() == rows["id"].tolist()
        assert s["prediction"].tolist() == [by_id[i] for i in rows["id"]], method
