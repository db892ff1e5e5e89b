"""The hub source mode against the local hub mirror: every source read by hub id (or URL) and revision, offline."""
import json
from pathlib import Path

import pytest

from polyalign.core import SPLITS, ConfigError, load_config, read_jsonl
from polyalign.data import read_split
from polyalign.sources import SOURCES, DataSourceError, build_corpus, build_hub_mirror, unpinned_sources


def _cfg(run_dir, *sets):
    return load_config("tiny", [f"run_dir={run_dir}", *sets])


def _hub_cfg(run_dir, revisions, *sets):
    return _cfg(run_dir, "data.source_mode=hub", *[f"data.revisions.{s}={r}" for s, r in revisions.items()], *sets)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    d = tmp_path_factory.mktemp("mirror")
    return d, build_hub_mirror(d)


@pytest.fixture
def offline_hub(mirror, tmp_path, monkeypatch):
    "HF_HUB_CACHE=<mirror>, HF_HUB_OFFLINE=1 (set on the already imported clients), a fresh `datasets` cache."
    import datasets.config
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(mirror[0]))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return mirror[1]


def _rows(run_dir):
    "Every record of a build by id, its provenance label (`meta.source_file`: local path or id@revision) left out."
    out = {}
    for s in SPLITS:
        for r in read_split(Path(run_dir) / "data" / f"{s}.parquet").to_dict("records"):
            meta = dict(r["meta"]); meta.pop("source_file")
            out[r["id"]] = {**r, "dialogue_history": [dict(t) for t in r["dialogue_history"]], "meta": meta}
    return out


def test_mirror_layout_and_revisions(mirror):
    d, revs = mirror
    assert set(revs) == set(SOURCES) and all(len(r) == 40 for r in revs.values())
    dolly = d / "datasets--databricks--databricks-dolly-15k"
    assert (dolly / "refs" / "main").read_text() == revs["dolly"]
    assert (dolly / "snapshots" / revs["dolly"] / "data" / "train.jsonl").is_symlink()
    dureader = d / "datasets--luozhouyang--dureader" / "snapshots" / revs["dureader"]
    assert (dureader / "dummy/robust/1.0.0/dummy_data.zip").is_file()
    assert (d / "urls--github.com--budzianowski--multiwoz" / "snapshots" / revs["multiwoz"]
            / "data/MultiWOZ_2.2/train/dialogues_017.json").read_bytes() == b"[]"
    assert build_hub_mirror(d, ["dolly"]) == {"dolly": revs["dolly"]}          # deterministic


def test_hub_mode_from_the_mirror_equals_tiny(offline_hub, tmp_path):
    build_corpus(_cfg(tmp_path / "tiny"))
    cfg = _hub_cfg(tmp_path / "hub", offline_hub)
    assert unpinned_sources(cfg) == []
    build_corpus(cfg)
    hub, tiny = _rows(tmp_path / "hub"), _rows(tmp_path / "tiny")
    assert sorted(hub) == sorted(tiny) and len(hub) > 1000
    assert [k for k in tiny if hub[k] != tiny[k]] == []
    rej = lambda run: sorted((r["dataset"], r["source_split"], r["row_index"], r["reason"])
                             for r in read_jsonl(Path(run) / "data" / "rejected.jsonl"))
    assert rej(tmp_path / "hub") == rej(tmp_path / "tiny")
    rep = json.loads((tmp_path / "hub" / "data" / "report.json").read_text())
    assert rep["source_mode"] == "hub"


@pytest.mark.parametrize("source", ["dolly", "dailydialog", "multiwoz"])
def test_wrong_revision_is_one_line_naming_source_and_revision(offline_hub, tmp_path, source):
    bad = "0" * 40
    cfg = _hub_cfg(tmp_path, {**offline_hub, source: bad}, f"data.sources={source}")
    with pytest.raises(DataSourceError) as e:
        build_corpus(cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"source '{source}'" in msg and f"revision '{bad}'" in msg


def test_missing_revision_is_one_line(offline_hub, tmp_path):
    revs = {k: v for k, v in offline_hub.items() if k != "coqa"}
    cfg = _hub_cfg(tmp_path, revs)
    assert unpinned_sources(cfg) == ["coqa"]
    with pytest.raises(ConfigError) as e:
        build_corpus(cfg)
    assert "\n" not in str(e.value) and "source 'coqa'" in str(e.value)


def test_a_branch_is_allowed_but_unpinned(offline_hub, tmp_path):
    cfg = _hub_cfg(tmp_path, {"dolly": "main"}, "data.sources=dolly")
    assert unpinned_sources(cfg) == ["dolly"] and unpinned_sources(_cfg(tmp_path)) == []
    assert build_corpus(cfg).rows_out > 0                                      # refs/main of the mirror


def test_unknown_dataset_id_names_it(offline_hub, tmp_path):
    cfg = _hub_cfg(tmp_path, {"dolly": offline_hub["dolly"]}, "data.sources=dolly", "data.hub_ids.dolly=nobody/missing")
    with pytest.raises(DataSourceError, match=r"source 'dolly': cannot fetch .*'nobody/missing'"):
        build_corpus(cfg)
