"""Mutation check, run on demand (`make mutations`, not part of `make test`): apply small bugs to the library one at a
time in a scratch copy of the repository, run the tests that should catch each, and write a table of which did.

A mutation is (name, file, the exact text it replaces, the replacement, the test files or notebooks expected to catch
it). A generated module's bug is applied to its notebook's cell too, so the notebook's own tests run the mutated code.
Every test set first runs on the unmutated copy and must pass. The text must occur exactly once, so a refactor that
moves it makes the check fail loudly instead of silently testing nothing. Arguments select mutations by a part of their
name; none selects all. Writes `mutations.md` beside this file; the exit status is 1 when a mutation survived."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


M = Mutation
MUTATIONS = (
    # HDPO loss (Eqs. 6-10) and Theorem 5 weights
    M("hdpo margin p uses the summed difference", "polyalign/hdpo.py", 'elif p_mode == "margin": delta = margin',
      'elif p_mode == "margin": delta = chosen_logps - rejected_logps', ("tests/test_hdpo.py",)),
    M("hdpo regulariser with s+ and s- swapped", "polyalign/hdpo.py",
      "reg = p * chosen_scores + (1 - p) * rejected_scores", "reg = p * rejected_scores + (1 - p) * chosen_scores",
      ("tests/test_hdpo.py",)),
    M("hdpo loss divided by the weight sum", "polyalign/hdpo.py",
      "loss = (weights * (dpo + hdpo_lambda * reg)).mean()",
      "loss = (weights * (dpo + hdpo_lambda * reg)).sum() / weights.sum()", ("tests/test_hdpo.py",)),
    M("hdpo DPO term with the sign of the margin flipped", "polyalign/hdpo.py", "dpo = -F.logsigmoid(beta * margin)",
      "dpo = -F.logsigmoid(-beta * margin)", ("tests/test_hdpo.py",)),
    M("rarity without the number of keys", "polyalign/hdpo.py", "r = {k: max(0.0, N / (K * n) - 1.0)",
      "r = {k: max(0.0, N / n - 1.0)", ("tests/test_hdpo.py",)),
    # Bucket-SFT (Eq. 1-3, Theorem 1)
    M("bucket-sft loss divided by the weight sum", "polyalign/bucket_sft.py",
      "loss = (w * per_example).sum() / w.numel()", "loss = (w * per_example).sum() / w.sum()",
      ("tests/test_bucket_sft.py",)),
    M("bucket-sft loss ignores the weights", "polyalign/bucket_sft.py",
      "loss = (w * per_example).sum() / w.numel()", "loss = per_example.sum() / w.numel()",
      ("tests/test_bucket_sft.py",)),
    M("bucket weights not renormalised after clipping", "polyalign/bucket_sft.py",
      "c = N / sum(w[b] * n for b, n in counts.items())", "c = 1.0", ("tests/test_bucket_sft.py",)),
    M("bucket weights N/n_b without |B|", "polyalign/bucket_sft.py", "w = {b: N / (B * n) for b, n",
      "w = {b: N / n for b, n", ("tests/test_bucket_sft.py",)),
    # critic (Eq. 4, Theorem 2)
    M("support distance 0 on an empty J", "polyalign/critic.py",
      "D = np.where(J.any(1), d.sum(1) / np.maximum(J.sum(1), 1), np.nan)", "D = d.sum(1) / np.maximum(J.sum(1), 1)",
      ("tests/test_critic.py",)),
    M("support distance without the scale", "polyalign/critic.py",
      "d = (np.maximum(lo - X, 0.0) + np.maximum(X - hi, 0.0)) / s",
      "d = (np.maximum(lo - X, 0.0) + np.maximum(X - hi, 0.0))", ("tests/test_critic.py",)),
    # metrics (App. D)
    M("BNG-macro as a size-weighted mean", "polyalign/metrics.py",
      'macro = float(ok["bng"].mean()) if len(ok) else float("nan")',
      'macro = float(np.average(ok["bng"], weights=ok["n_examples"])) if len(ok) else float("nan")',
      ("tests/test_metrics.py",)),
    M("BNG keeps constant features", "polyalign/metrics.py", "use = present & ~is_const & ~undefined",
      "use = present & ~undefined", ("tests/test_metrics.py",)),
    M("BNG bucket size check off by one", "polyalign/metrics.py", "if counts[b] < min_bucket_size else",
      "if counts[b] <= min_bucket_size else", ("tests/test_metrics.py",)),
    M("BNG divides a feature constant in the held-out bucket by eps", "polyalign/metrics.py",
      "s = np.where(ok, train_sd, s)", "s = s", ("tests/test_metrics.py",)),
    M("eligibility by the rows scored, not the held-out answers", "polyalign/metrics.py",
      "return {b: int(held_out[b]) if held_out is not None else int(n) for b, n in counts.items()}",
      "return {b: int(n) for b, n in counts.items()}", ("tests/test_metrics.py",)),
    M("undefined generated features allowed in every row", "polyalign/metrics.py",
      "if undefined_ok is not None: gap &= ~(np.isnan(gen) & np.asarray(undefined_ok, dtype=bool)[:, None])",
      "gap &= ~np.isnan(gen)", ("tests/test_metrics.py",)),
    M("generated answers extracted without the LM scorer", "polyalign/metrics.py",
      "    scorer = feature_scorer(cfg)\n", "    scorer = None\n", ("tests/test_metrics.py",)),
    M("noise floor halves overlap", "polyalign/metrics.py", "a.append(p[:h]); b.append(p[h:2 * h])",
      "a.append(p[:h]); b.append(p[:h])", ("tests/test_metrics.py",)),
    M("noise floor TDM with the reference rows' questions", "polyalign/metrics.py",
      'gq = mt["prediction_question"].tolist() if "prediction_question" in mt.columns else None', "gq = None",
      ("tests/test_metrics.py",)),
    M("noise floor utility scored on its predictions", "polyalign/metrics.py",
      'scored = frame["human_answer" if noise_floor else "prediction"].tolist()',
      'scored = frame["prediction"].tolist()', ("tests/test_metrics.py",)),
    M("NUF naturalness as an arithmetic mean", "polyalign/metrics.py",
      "nb = np.array([bounded_geomean(*c) for c in zip(*comps)])",
      "nb = np.array([float(np.mean(c)) for c in zip(*comps)])", ("tests/test_metrics.py",)),
    M("NUF BNG not floored at 0", "polyalign/metrics.py",
      'bt = 1.0 / (1.0 + np.maximum(t["bng"].astype(float).values, 0))',
      'bt = 1.0 / (1.0 + t["bng"].astype(float).values)', ("tests/test_metrics.py",)),
    M("NUF macro without utility", "polyalign/metrics.py", '"macro": float(np.mean(u[ok] * nb[ok]))',
      '"macro": float(np.mean(nb[ok]))', ("tests/test_metrics.py",)),
    M("Agg as an arithmetic mean", "polyalign/metrics.py",
      "return 0.0 if (v == 0).any() else float(np.exp(np.log(v).mean()))\n\n# %%",
      "return float(v.mean())\n\n# %%", ("tests/test_metrics.py",)),
    # Full-SFT vs Bucket-SFT: one loss, the weights the only difference; TRL's stock loss only for full_sft_trl
    M("full_sft trained with TRL's token-mean loss", "polyalign/bucket_sft.py",
      'SFT_OBJECTIVE = {"full_sft": SFTObjective("per_example", weighted=False)',
      'SFT_OBJECTIVE = {"full_sft": SFTObjective("trl", weighted=False)', ("tests/test_bucket_sft.py",)),
    M("full_sft trained with the bucket weights", "polyalign/bucket_sft.py",
      'SFT_OBJECTIVE = {"full_sft": SFTObjective("per_example", weighted=False)',
      'SFT_OBJECTIVE = {"full_sft": SFTObjective("per_example", weighted=True)', ("tests/test_bucket_sft.py",)),
    M("full_sft_trl trained with the per-example loss", "polyalign/bucket_sft.py",
      '"full_sft_trl": SFTObjective("trl", weighted=False)',
      '"full_sft_trl": SFTObjective("per_example", weighted=False)', ("tests/test_bucket_sft.py",)),
    # preference pairs fit whole, weights over the pairs kept, p mode per method (05_hdpo)
    M("hdpo_margin trained with the config's summed p", "polyalign/hdpo.py",
      'FIXED_P_MODE = {"hdpo_margin": "margin"}', 'FIXED_P_MODE = {}', ("tests/test_hdpo.py",)),
    M("pair weights normalised before the pairs are fitted and capped", "polyalign/hdpo.py",
      '    pairs, dropped, n_cut = fit_pair_prompts(pairs, records, tokenizer, render, max_length)\n'
      '    capped = sample_pairs(pairs, cap, seed)\n'
      '    if len(capped) < len(pairs): dropped["over_cap"] = len(pairs) - len(capped)\n'
      '    return _weigh_pairs(capped, scores, weights, dropped), dropped, n_cut\n',
      '    dropped = Counter()\n'
      '    pairs = _weigh_pairs(pairs, scores, weights, dropped)\n'
      '    pairs, more, n_cut = fit_pair_prompts(pairs, records, tokenizer, render, max_length)\n'
      '    dropped.update(more)\n'
      '    capped = sample_pairs(pairs, cap, seed)\n'
      '    if len(capped) < len(pairs): dropped["over_cap"] = len(pairs) - len(capped)\n'
      '    return capped, dropped, n_cut\n', ("tests/test_hdpo.py",)),
    M("preference pairs not fitted to max_length", "polyalign/hdpo.py",
      "        if need > max_length:\n", "        if False:\n", ("tests/test_hdpo.py",)),
    M("preference trainers accept pairs TRL drops or truncates", "polyalign/hdpo.py",
      "if isinstance(dataset, Dataset): check_whole_pairs(out, len(dataset), args.max_length, dataset_name)",
      "pass", ("tests/test_hdpo.py",)),
    M("SFT fitting leaves one token for the template's end of turn", "polyalign/bucket_sft.py",
      "room = min(count(answer) + suffix, int(answer_share * max_length))",
      "room = min(count(answer) + 1, int(answer_share * max_length))", ("tests/test_bucket_sft.py",)),
    # data: dedup keys and the split hash
    M("dedup key without casefold", "polyalign/data.py",
      'return normalize_text(unicodedata.normalize("NFKC", "" if x is None else str(x))).casefold()',
      'return normalize_text(unicodedata.normalize("NFKC", "" if x is None else str(x)))', ("tests/test_data.py",)),
    M("dedup key without NFKC", "polyalign/data.py",
      'return normalize_text(unicodedata.normalize("NFKC", "" if x is None else str(x))).casefold()',
      'return normalize_text("" if x is None else str(x)).casefold()', ("tests/test_data.py",)),
    M("split hash with 7 hex digits", "polyalign/data.py", '.hexdigest()[:8], 16) / 0xFFFFFFFF',
      '.hexdigest()[:7], 16) / 0xFFFFFFF', ("tests/test_data.py",)),
    # features
    M("Gunning fog without the polysyllable term", "polyalign/features.py", "gunning_fog=0.4 * (wps + 100 * poly / na)",
      "gunning_fog=0.4 * wps", ("tests/test_features.py",)),
    M("SMOG with 20 instead of 30", "polyalign/features.py", "smog_index=1.043 * math.sqrt(30 * poly / ns)",
      "smog_index=1.043 * math.sqrt(20 * poly / ns)", ("tests/test_features.py",)),
    M("Coleman-Liau sentence term dropped", "polyalign/features.py",
      "coleman_liau_index=0.0588 * (100 * letters / na) - 0.296 * (100 * ns / na) - 15.8",
      "coleman_liau_index=0.0588 * (100 * letters / na) - 15.8", ("tests/test_features.py",)),
    M("Flesch-Kincaid syllable weight", "polyalign/features.py", "flesch_kincaid_grade=0.39 * wps + 11.8 * spw - 15.59",
      "flesch_kincaid_grade=0.39 * wps + 11.0 * spw - 15.59", ("tests/test_features.py",)),
    M("jieba eng counted as interjection", "polyalign/features.py",
      'first = Counter(t if t == "eng" else t[:1] for t in tags)', "first = Counter(t[:1] for t in tags)",
      ("tests/test_features.py",)),
    # generation: stops, BOS, workers
    M("stop ids without the end of turn", "polyalign/generate.py",
      "    if eot is not None: ids.add(tokenizer.convert_tokens_to_ids(eot))\n", "",
      ("tests/test_stops.py", "tests/test_vllm_backend.py")),
    M("BOS never deduplicated", "polyalign/generate.py", "    while k < len(ids) and ids[k] == b: k += 1\n", "",
      ("tests/test_stops.py", "tests/test_vllm_backend.py")),
    M("plain prompts without stop strings", "polyalign/generate.py", "generator(batch, STOP_STRINGS[kind])",
      "generator(batch)", ("tests/test_stops.py", "tests/test_vllm_backend.py")),
    M("vLLM requests without stop ids", "polyalign/generate.py", '"stop_token_ids": list(stop_ids),',
      '"stop_token_ids": [],', ("tests/test_vllm_backend.py",)),
    M("vLLM requests seeded by the engine seed", "polyalign/generate.py",
      'derive_seed(self.seed, "generate", p.id)', "self.seed", ("tests/test_vllm_backend.py",)),
    M("failed workers' rows not merged", "polyalign/generate.py",
      "        merge_shards(out)                        # keep every row the workers wrote, failed ones included\n", "",
      ("tests/test_vllm_backend.py",)),
    # training
    M("end of turn not recorded as eos", "polyalign/train.py",
      "    record_end_of_turn(trainer.model, trainer.processing_class)", "    pass",
      ("nbs/12_train.ipynb", "tests/test_e2e_rehearsal.py")),
    # judge (Table 3)
    M("judge candidate id names the method", "polyalign/judge.py",
      'return "c" + stable_hash([salt, model, method, example_id], 12)', 'return f"c {method} {example_id}"',
      ("tests/test_judge.py",)),
    M("judge caps not applied", "polyalign/judge.py", 'r["scores"] = apply_caps(r["scores_raw"], r["caps"], rubric)',
      'r["scores"] = dict(r["scores_raw"])', ("nbs/08_judge.ipynb",)),
    M("judge retry repeats the first budget", "polyalign/judge.py",
      "tries = [Attempt(jc.max_new_tokens), Attempt(jc.retry_max_new_tokens),",
      "tries = [Attempt(jc.max_new_tokens), Attempt(jc.max_new_tokens),", ("nbs/08_judge.ipynb",)),
    M("judge parser unwraps a fenced block", "polyalign/judge.py", "obj = json.loads(text.strip())",
      'obj = json.loads(text.strip().removeprefix("```json").removesuffix("```"))', ("nbs/08_judge.ipynb",)),
    M("judge average over each judge's own rows", "polyalign/judge.py", "both = ok[n_ok == judges]", "both = ok",
      ("nbs/08_judge.ipynb",)),
    M("judge join ignores a changed reference", "polyalign/judge.py",
      'changed = sorted({i for i, h in zip(frame["id"], frame["example_hash"]) if known[i] != h})', "changed = []",
      ("nbs/08_judge.ipynb", "tests/test_judge.py")),
    M("judge resume ignores the rows written", "polyalign/judge.py",
      'have = {r["uid"] for r in read_jsonl(out)} if out.exists() else set()', "have = set()",
      ("nbs/08_judge.ipynb", "tests/test_judge.py")),
    M("judge dimension alpha at interval level", "polyalign/judge.py", '*((d, "ordinal") for d in rubric.dims)',
      '*((d, "interval") for d in rubric.dims)', ("nbs/08_judge.ipynb",)),
    M("judge composite without the -1", "polyalign/judge.py", "sum(w * 100 * (s - 1) / 4 for w, s in present)",
      "sum(w * 100 * s / 4 for w, s in present)", ("nbs/08_judge.ipynb",)),
    M("judge HF decoding unconstrained", "polyalign/judge.py",
      "self.processor = json_logits_processor(self.model, self.tok, schema) if schema is not None else None",
      "self.processor = None", ("tests/test_judge.py",)),
    M("judge vLLM requests seeded by the batch seed", "polyalign/judge.py",
      "judge_sampling(attempt, derive_seed(seed, i),", "judge_sampling(attempt, seed,", ("tests/test_judge.py",)),
    M("judge wrong-language cap never triggers for zh", "polyalign/judge.py",
      '(language == "zh" and share < threshold)',
      '(language == "zh" and share < 0)', ("nbs/08_judge.ipynb",)),
    # detectors (Table 4, Figure 3)
    M("detect Binoculars cross-perplexity under the performer", "polyalign/detect.py",
      "xent = -(torch.softmax(obs, -1) * logq).sum(-1)", "xent = -(torch.softmax(perf, -1) * logq).sum(-1)",
      ("tests/test_detect.py",)),
    M("detect one-token texts scored", "polyalign/detect.py",
      'status = ["ok" if self.scored_tokens(e) >= 2 else "too_short" for e in enc]',
      'status = ["ok" if self.scored_tokens(e) >= 1 else "too_short" for e in enc]', ("nbs/09_detect.ipynb",)),
    M("detect sensitivity rate ignores too-short texts", "polyalign/detect.py",
      '"ai_rate_sensitivity": (ai.sum() + n_short)', '"ai_rate_sensitivity": (ai.sum() + 0)',
      ("tests/test_detect.py",)),
    M("detect Joint without the factor 2", "polyalign/detect.py",
      "return 100 * 2 * agg * h / (agg + h)", "return 100 * agg * h / (agg + h)", ("tests/test_detect.py",)),
    M("detect calibrated on the test split's human answers", "polyalign/detect.py",
      'cal = g[(g["method"] == "human_calibration") & (g["status"] == "ok")]',
      'cal = g[(g["method"] == "human") & (g["status"] == "ok")]', ("nbs/09_detect.ipynb",)),
    # embeddings (Figure 4)
    M("embed MMD² keeps the i = j terms", "polyalign/embed.py",
      "return float((h.sum() - np.trace(h)) / (n * (n - 1)))", "return float(h.sum() / (n * n))",
      ("tests/test_embed.py",)),
    M("embed centroid distance from the first rows", "polyalign/embed.py",
      "mx, my = np.asarray(x, np.float64).mean(0), np.asarray(y, np.float64).mean(0)",
      "mx, my = np.asarray(x, np.float64)[0], np.asarray(y, np.float64)[0]", ("tests/test_embed.py",)),
)


def scratch_copy() -> Path:
    "The repository without its environment, runs and build outputs, in a temporary folder."
    dst = Path(tempfile.mkdtemp(prefix="mutations-")) / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv*", ".git", "runs", "build", "__pycache__",
                                                             ".pytest_cache", ".hypothesis"))
    return dst


def source_notebook(repo: Path, module: str) -> Path | None:
    "The notebook a generated module is exported from (its header names it), or None for a hand-written file."
    m = re.search(r"File to edit: \.\./(nbs/\S+\.ipynb)", (repo / module).read_text(encoding="utf-8")[:2000])
    return repo / m.group(1) if m else None


def mutate_notebook(nb_path: Path, m: Mutation) -> None:
    """Apply the mutation to the exported cell too: a notebook's tests run its own definitions, not the module's, so a
    bug in the module alone would be invisible to them."""
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    hits = [c for c in nb.cells if c.cell_type == "code" and m.old in c.source]
    if len(hits) != 1 or hits[0].source.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the text to replace is not in exactly one cell of {nb_path.name}")
    hits[0].source = hits[0].source.replace(m.old, m.new)
    nbformat.write(nb, nb_path)


def run_tests(repo: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, float]:
    "(all passed, seconds) of the tests in `repo`, importing the package from `repo` (not the installed one)."
    env = {**os.environ, "PYTHONPATH": str(repo)}
    nbs = [t for t in tests if t.endswith(".ipynb")]
    py = [t for t in tests if not t.endswith(".ipynb")]
    t0, ok = time.perf_counter(), True
    cmds = ([[sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *py]] if py else []) + \
        [[str(Path(sys.executable).parent / "nbdev_test"), "--path", n] for n in nbs]
    for cmd in cmds:
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        ok = ok and r.returncode == 0
    return ok, time.perf_counter() - t0


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or any(n in m.name for n in names)]
    repo = scratch_copy()
    check = subprocess.run([sys.executable, "-c", "import polyalign; print(polyalign.__file__)"], cwd=repo,
                           env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    if not check.stdout.strip().startswith(str(repo)):
        raise SystemExit(f"the scratch copy's package is not the one imported ({check.stdout.strip()})")
    for tests in dict.fromkeys(m.tests for m in chosen):      # unmutated, every test set must pass first
        if not run_tests(repo, tests, timeout=3600)[0]:
            raise SystemExit(f"the unmutated scratch copy fails {', '.join(tests)}: fix that first")
    rows = []
    for m in chosen:
        path = repo / m.file
        text = path.read_text(encoding="utf-8")
        if text.count(m.old) != 1:
            raise SystemExit(f"{m.name}: the text to replace occurs {text.count(m.old)} times in {m.file}")
        nb = source_notebook(repo, m.file)
        nb_text = nb.read_text(encoding="utf-8") if nb else None
        path.write_text(text.replace(m.old, m.new), encoding="utf-8")
        try:
            if nb: mutate_notebook(nb, m)
            passed, secs = run_tests(repo, m.tests, timeout=3600)
        finally:
            path.write_text(text, encoding="utf-8")
            if nb: nb.write_text(nb_text, encoding="utf-8")
        rows.append((m, not passed, secs))
        print(f"{'caught  ' if not passed else 'SURVIVED'} {secs:6.1f}s  {m.name}", flush=True)
    shutil.rmtree(repo.parent, ignore_errors=True)
    caught = sum(c for _, c, _ in rows)
    (HERE / "mutations.md").write_text("\n".join([
        "# Mutation check", "",
        f"{len(rows)} small bugs applied one at a time to a scratch copy of the library (`mutations.py`); a bug is "
        f"caught when the tests listed fail. {caught} of {len(rows)} caught; load average {os.getloadavg()[0]:.1f} "
        "at the end.",
        "", "| bug | file | tests | caught | seconds |", "|---|---|---|---|---|",
        *[f"| {m.name} | `{m.file}` | {', '.join(f'`{t}`' for t in m.tests)} | {'yes' if c else '**no**'} | {s:.0f} |"
          for m, c, s in rows], ""]), encoding="utf-8")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
