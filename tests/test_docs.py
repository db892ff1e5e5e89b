"""The documentation site (scripts/build_docs.py): pages with executed worked examples and a run's stage results,
offline, with working links; the build fails clearly without a run and replaces the site only when it succeeds."""
import importlib.util
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="  # 1x1
TABLE = "Table 9: a demo\n\n| method | score |\n|---|---|\n| hdpo | 0.91 |\n| <b>bold</b> | 1.00 |\n"
RESOURCE_TAGS = {"script", "link", "img", "iframe", "source", "video", "audio", "embed", "object"}


class Refs(HTMLParser):
    "The page's href/src attributes (real ones, not text in code), with the tag holding each."

    def __init__(self, text):
        super().__init__()
        self.refs = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, v) for k, v in attrs if k in ("href", "src", "data") and v]


@pytest.fixture(scope="module")
def build_docs():
    "The script as a module (it is not part of the package)."
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "scripts" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_docs"] = mod   # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("build_docs", None)


def code(src, id, **kw):
    cell = nbformat.v4.new_code_cell(src, **kw)
    cell.id = id
    return cell


def section_cells():
    "A section notebook: prose with math, a worked example, a hidden cell, a skipped test, three stage cells."
    v4 = nbformat.v4
    return [
        v4.new_markdown_cell("# Demo: a worked example\n\n> One line that says what the section holds.\n\n"
                             "The mean $\\frac1N\\sum_i x_i$ of the answers."),
        code("#| hide\nSECRET = 'the hidden cell is not shown'", "hide01"),
        code("print(f'worked example: {6 * 7}')", "example1"),
        code("#| notest\nraise RuntimeError('a skipped test cell ran')", "notest01"),
        v4.new_markdown_cell("## The stage"),
        code("#| stage\nconfig_path = None", "params01", metadata={"tags": ["parameters"]}),
        code("#| stage\nprint(open('table9.md').read())", "stage01"),
        code("#| stage\nfrom IPython.display import Image, display\ndisplay(Image(filename='fig.png'))", "stage02"),
        code("#| stage\nraise RuntimeError('a stage cell ran at build time')", "stage03"),
    ]


@pytest.fixture
def project(tmp_path):
    "`nbs/` with an index and one section, and a run whose executed notebook holds a table and a figure."
    nbs, run = tmp_path / "nbs", tmp_path / "runs" / "tiny"
    nbs.mkdir()
    (run / "notebooks").mkdir(parents=True)
    (run / "report").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=section_cells()), nbs / "01_demo.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "# Demo docs\n\nThe section is `01_demo.ipynb`.")]), nbs / "index.ipynb")
    executed = [c for c in section_cells() if c.id in ("params01", "stage01", "stage02")]
    executed.insert(1, code('# Parameters\nconfig_path = "tiny.yaml"\n', "injected", metadata={
        "tags": ["injected-parameters"]}))
    executed[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text=TABLE)]
    executed[3].outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Image>"})]
    nbformat.write(nbformat.v4.new_notebook(cells=executed, metadata={"papermill": {"end_time": "2026-01-01T00:00",
                                                                               "exception": None}}),
                   run / "notebooks" / "01_demo.ipynb")
    (run / "config.yaml").write_text("profile: tiny\nseed: 0\n")
    (run / "report" / "index.html").write_text("<html><body>report</body></html>")
    return tmp_path


def local_refs(refs) -> list[str]:
    "The relative targets (no fragment; no data:, mailto: or web addresses)."
    return [v.split("#")[0] for _, v in refs if not re.match(r"(?:[a-z]+:|//|#)", v)]


def test_site_shows_examples_and_stage_results(build_docs, project, capsys):
    site = project / "site"
    assert build_docs.main(["--nbs", str(project / "nbs"), "--run", str(project / "runs" / "tiny"), "--out",
                            str(site), "--workers", "1", "--no-screenshot", "--timeout", "120"]) == 0, \
        capsys.readouterr().err
    page = (site / "01_demo.html").read_text(encoding="utf-8")
    assert "<title>Demo: a worked example</title>" in page
    assert "worked example: 42" in page                               # the worked example ran here
    assert "hidden cell" not in page and "#| hide" not in page        # hidden cells and directives are not shown
    # the stage results are the run's: its table (rendered, text escaped) and its figure, embedded
    assert re.search(r"<table.*<td>hdpo</td>\s*<td>0.91</td>", page, re.S)
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert f"data:image/png;base64,{PNG}" in page
    assert "stage result from the run (profile tiny)</div>" in page                # finished, unchanged
    assert "parameters papermill injected in the run" in page and "tiny.yaml" in page
    assert "stage cell: not in the run (profile tiny)" in page       # stage03: the run lacks it, it never ran here
    assert page.count('class="docs-math"') == 1 and "data:image/svg+xml;base64," in page
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="01_demo.html"' in index and 'href="../runs/tiny/report/index.html"' in index
    for p in site.glob("*.html"):
        text = p.read_text(encoding="utf-8")
        refs = Refs(text).refs
        fetched = [v for tag, v in refs if tag in RESOURCE_TAGS and re.match(r"(?:https?:)?//", v)]
        assert not fetched, (p.name, fetched[:3])                      # nothing the page would fetch from the web
        css = "".join(re.findall(r"<style[^>]*>(.*?)</style>", text, re.S))
        assert not re.search(r"url\(\s*[\"']?(?:https?:)?//|@import", css), p.name   # nor from its CSS
        missing = [r for r in local_refs(refs) if r and not (site / r).resolve().exists()]
        assert not missing, (p.name, missing)
    assert not list(project.glob(".site*")), "the temporary build folder is left behind"


def test_missing_run_fails_and_keeps_the_site(build_docs, project, capsys):
    site = project / "site"
    site.mkdir()
    (site / "old.html").write_text("the previous site")
    shutil.rmtree(project / "runs" / "tiny" / "notebooks")
    argv = ["--nbs", str(project / "nbs"), "--run", str(project / "runs" / "tiny"), "--out", str(site),
            "--no-execute", "--no-screenshot"]
    assert build_docs.main(argv) == 1
    err = capsys.readouterr().err
    assert "01_demo.ipynb" in err and "run make reproduce first" in err and "--no-run" in err
    assert (site / "old.html").read_text() == "the previous site"
    # without a run the site builds, replaces the old one, and says where stage results would come from
    assert build_docs.main([*argv, "--no-run"]) == 0
    assert not (site / "old.html").exists()
    assert "this site was built without a run" in (site / "01_demo.html").read_text(encoding="utf-8")


def test_only_and_failing_example(build_docs, project, capsys):
    nb = nbformat.read(project / "nbs" / "01_demo.ipynb", as_version=4)
    nb.cells[2].source = "raise ValueError('the worked example is broken')"
    nbformat.write(nb, project / "nbs" / "01_demo.ipynb")
    argv = ["--nbs", str(project / "nbs"), "--run", str(project / "runs" / "tiny"), "--out", str(project / "site"),
            "--workers", "1", "--no-screenshot", "--timeout", "120", "--only", "01_demo"]
    assert build_docs.main(argv) == 1
    assert "01_demo.ipynb cell 2: ValueError: the worked example is broken" in capsys.readouterr().err
    assert not (project / "site").exists()
    assert build_docs.main([*argv[:-2], "--only", "nope"]) == 1
    assert "no notebook nope.ipynb" in capsys.readouterr().err


def test_run_state(build_docs):
    nb = nbformat.v4.new_notebook(metadata={"papermill": {"end_time": None, "exception": None}})
    assert build_docs.run_state(nb) == "; the stage was still running when the site was built"
    nb.metadata.papermill.update(end_time="2026-01-01T00:00", exception=True)
    assert build_docs.run_state(nb) == "; the stage failed in this run"


def test_tex_and_links(build_docs):
    assert build_docs.normalise_tex(r"\frac1N\sum_i \tilde w_{b(i)} \ge \mathcal B") == \
        r"\frac{1}{N}\sum_i \tilde w_{b(i)} \geq \mathcal{B}"
    assert build_docs.normalise_tex(r"\frac1{|\mathcal B|} \text{B-SFT}") == r"\frac{1}{|\mathcal{B}|} \mathrm{B-SFT}"
    assert build_docs.normalise_tex(r"\Big(a\Big) \bigl[b\bigr]_+ \bigcup") == r"(a) [b]_+ \bigcup"
    assert build_docs.tex_svg(r"\frac{1}{N}") is not None and build_docs.tex_svg(r"\frac{") is None
    names = {"07_metrics.ipynb": "07_metrics.html"}
    assert build_docs.link_notebooks("see `07_metrics.ipynb` and [t](07_metrics.ipynb#x), `08.ipynb`", names) == \
        "see [`07_metrics.ipynb`](07_metrics.html) and [t](07_metrics.html#x), `08.ipynb`"


def test_screenshot(build_docs, project, capsys):
    pytest.importorskip("selenium")
    annotate = pytest.importorskip("polyalign.annotate")
    try:
        annotate.chromium_paths()
    except RuntimeError as e:
        pytest.skip(str(e))
    run = project / "runs" / "tiny"
    assert build_docs.main(["--nbs", str(project / "nbs"), "--run", str(run), "--out", str(project / "site"),
                            "--no-execute", "--only", "01_demo"]) == 0
    assert "screenshot of 01_demo.html" in capsys.readouterr().err
    assert (run / "figures" / "docs_page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
