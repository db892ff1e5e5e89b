#!/usr/bin/env python
"""Build the documentation site: one HTML page per notebook in `nbs/` plus an index, readable offline.

Each page shows the notebook's worked examples with their outputs, executed here (the cells `nbdev_test` runs, in a
kernel whose working directory is `nbs/`), and the stage cells with the outputs they produced in a reproduction run
(the executed notebooks `polyalign reproduce` saves under `<run>/notebooks/`, merged in by cell id). The committed
notebooks carry no outputs, so both kinds are filled in at build time; the site's own index page says why.

    python scripts/build_docs.py --nbs nbs --run runs/tiny --out site

The site is built in a temporary folder next to `--out` and then renamed over it, so `--out` is either the previous
site or the complete new one. A page whose worked example raises fails the build unless `--allow-errors` is given.
"""
from __future__ import annotations

import argparse
import base64
import configparser
import copy
import functools
import html
import io
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jinja2 import pass_context
from nbconvert.exporters import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.preprocessors import CoalesceStreamsPreprocessor


TEMPLATES = Path(__file__).resolve().parent / "docs_templates"
TEMPLATE = "polyalign_docs"
DEFAULT_SKIP_FLAGS = ("notest", "slow", "stage")  # settings.ini `tst_flags` when no settings.ini is found
MAX_WORKERS = 2
STAGE_TAG = "docs-stage"  # cell tag the page styles (class `celltag_docs-stage`)

ABOUT = """## About this site

Every page is one notebook of `nbs/`, built by `scripts/build_docs.py` (`make docs`) with nbconvert, which the
notebooks already depend on. Not `nbdev_docs`: it renders through Quarto, a binary that is no Python package (the
`quarto-cli` wheel downloads it from the web while installing). Not Sphinx or MkDocs: a second toolchain for what
nbconvert's HTML export and this index do. The pages use nbconvert's `lab` template without its network scripts
(require.js, MathJax, widgets): formulas are typeset at build time by matplotlib as embedded SVG and figures are
embedded too, so the site reads offline from `file://`.

The notebooks are committed without outputs (`nbdev_clean`), so diffs show code and prose only and no committed
output can be older than the code above it. The outputs are made when the site is built. The worked examples and
tests (the cells `nbdev_test` runs) are executed{exec_note}. The stage cells are not: they are the reproduction itself,
so their outputs (tables, figures, logs) are taken from the executed notebooks of {run_note} and placed at their
cells by cell id; a stage cell whose code changed since that run, or that the run lacks, is labelled so.
"""


class DocsError(RuntimeError):
    "A problem that stops the build; the message says what to do."


@dataclass(frozen=True)
class Page:
    "One page of the site: the notebook it renders and how the navigation names it."
    source: Path  # the notebook
    name: str  # the page's file name in the site
    title: str  # the notebook's first heading
    summary: str  # the notebook's first `> ...` line (nbdev's description)

    @property
    def number(self) -> str:
        "The notebook's number (`07`, `09a`), empty for the index."
        m = re.match(r"(\d+[a-z]?)_", self.source.name)
        return m.group(1) if m else ""

    @property
    def short(self) -> str:
        "The title up to its first colon, for the navigation."
        return re.sub(r"`", "", self.title.split(":")[0]).strip()


# ---------------------------------------------------------------------------------------------------------- notebooks
def notebook_title(nb, fallback: str) -> tuple[str, str]:
    "The first markdown heading (the page title) and the first `> ` quote after it (its summary)."
    for cell in nb.cells:
        if cell.cell_type != "markdown": continue
        m = re.search(r"^#\s+(.+?)\s*#*\s*$", cell.source, re.M)
        if m:
            quote = re.search(r"^>\s*(.+)$", cell.source[m.end():], re.M)
            return m.group(1).strip(), quote.group(1).strip() if quote else ""
    return fallback, ""


def find_pages(nbs: Path, only: list[str] | None = None) -> list[Page]:
    "The notebooks of `nbs` to render (nbdev skips names starting with `_` or `.`), optionally only those named."
    paths = sorted(p for p in nbs.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    if not paths: raise DocsError(f"no notebooks in {nbs}")
    if only:
        wanted = {o if o.endswith(".ipynb") else f"{o}.ipynb" for o in only}
        unknown = wanted - {p.name for p in paths}
        if unknown:
            raise DocsError(f"--only: no notebook {', '.join(sorted(unknown))} in {nbs} "
                            f"(there are {', '.join(p.name for p in paths)})")
        paths = [p for p in paths if p.name in wanted]
    pages = []
    for p in paths:
        title, summary = notebook_title(nbformat.read(p, as_version=4), p.stem)
        pages.append(Page(p, "index.html" if p.stem == "index" else f"{p.stem}.html", title, summary))
    return pages


def skip_flags(nbs: Path) -> set[str]:
    "The cell flags `nbdev_test` skips (`tst_flags` of the nearest settings.ini above `nbs`)."
    for d in [nbs.resolve(), *nbs.resolve().parents]:
        if (d / "settings.ini").is_file():
            cfg = configparser.ConfigParser()
            cfg.read(d / "settings.ini")
            return set(cfg.get("DEFAULT", "tst_flags", fallback=" ".join(DEFAULT_SKIP_FLAGS)).split())
    return set(DEFAULT_SKIP_FLAGS)


def cell_directives(cell) -> tuple[dict, str]:
    "The cell's leading `#|` directives (nbdev's parser) and its source without them."
    from nbdev.process import extract_directives
    found = extract_directives(copy.deepcopy(cell), remove=False)
    lines = cell.source.splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if line.strip() and not re.match(r"\s*#\|", line)), len(lines))
    return found, "".join(lines[n:])


def is_stage(cell) -> bool:
    "A `#| stage` cell or a papermill parameters cell: what `polyalign reproduce` runs (see `polyalign.reproduce`)."
    from polyalign.reproduce import is_stage_cell
    return is_stage_cell(cell)


def runs_at_build(cell, flags: set[str]) -> bool:
    "Whether `nbdev_test` runs this cell: code, not a stage cell, no skipped flag, not `eval: false`, no export call."
    if cell.cell_type != "code" or is_stage(cell) or "nbdev_export(" in cell.source: return False
    found, _ = cell_directives(cell)
    if str(found.get("eval:", [""])[0]).lower() == "false": return False
    return not (flags & set(found))


# -------------------------------------------------------------------------------------------------------- execution
def cell_errors(nb, name: str) -> list[str]:
    "One line per code cell holding an error output."
    out = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                first = str(o.get("evalue", "")).strip().splitlines()[:1]
                out.append(f"{name} cell {i}: {o.get('ename')}: {first[0] if first else ''}")
    return out


def execute_examples(nb, cwd: Path, kernel: str, timeout: int, flags: set[str]) -> float:
    """Execute the cells `nbdev_test` runs (in order, in one kernel started in `cwd`) and put their outputs into
    `nb`; the other cells keep theirs. Errors stay in the outputs (see `cell_errors`). Returns the seconds taken."""
    from nbclient import NotebookClient
    start = time.monotonic()
    keep = [i for i, c in enumerate(nb.cells) if runs_at_build(c, flags)]
    if not keep: return 0.0
    sub = nbformat.v4.new_notebook(cells=[copy.deepcopy(nb.cells[i]) for i in keep],
                                   metadata=copy.deepcopy(nb.metadata))
    NotebookClient(sub, timeout=timeout, kernel_name=kernel, allow_errors=True,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    for i, c in zip(keep, sub.cells):
        nb.cells[i].outputs, nb.cells[i].execution_count = c.outputs, c.execution_count
    return time.monotonic() - start


def execute_all(nbs_by_page: dict[str, object], cwd: Path, kernel: str, timeout: int, flags: set[str],
                workers: int) -> dict[str, float]:
    "Execute every notebook's worked examples, at most `workers` kernels at a time; returns seconds per page."
    def one(item):
        name, nb = item
        try:
            secs = execute_examples(nb, cwd, kernel, timeout, flags)
        except Exception as e:   # a cell timeout or a dead kernel: nbclient raises instead of recording an output
            last = (str(e).strip().splitlines() or [""])[-1]
            raise DocsError(f"{name}: executing the worked examples failed: {type(e).__name__}: {last} "
                            f"(a cell may run {timeout} s: --timeout)") from e
        print(f"  executed {name} in {secs:.0f} s", file=sys.stderr, flush=True)
        return name, secs
    with ThreadPoolExecutor(max_workers=max(1, min(workers, MAX_WORKERS))) as pool:
        return dict(pool.map(one, nbs_by_page.items()))


# ------------------------------------------------------------------------------------------------------ stage results
def run_notebooks(run: Path, pages: list[Page], partial: bool) -> dict[str, Path]:
    "The run's executed notebook for each page that has stage cells; a clear error when the run lacks them."
    folder = run / "notebooks"
    staged = [p for p in pages if any(is_stage(c) for c in nbformat.read(p.source, as_version=4).cells)]
    found = {p.source.name: folder / p.source.name for p in staged if (folder / p.source.name).is_file()}
    missing = [p.source.name for p in staged if p.source.name not in found]
    if missing and (not partial or not found):
        raise DocsError(f"the run {run} has no executed notebook for {', '.join(missing)} (looked in {folder}): "
                        "run make reproduce first, or pass --no-run to build without stage results"
                        + ("" if partial else ", or --partial-run to label the missing ones"))
    return found


def run_label(run: Path) -> str:
    "A short name for the run: its folder and profile."
    profile = ""
    cfg = run / "config.yaml"
    if cfg.is_file():
        m = re.search(r"^profile:\s*(\S+)", cfg.read_text(encoding="utf-8"), re.M)
        profile = m.group(1) if m else ""
    return f"{run.name}, profile {profile}" if profile and profile != run.name else f"profile {profile or run.name}"


def markdown_table_output(output):
    """A stdout stream holding a markdown table (the stage cells print `tables/*.md`) as an HTML output, escaped like
    any text from a run; other outputs unchanged."""
    text = output.get("text", "")
    if output.get("output_type") != "stream" or output.get("name") != "stdout" or not re.search(
            r"^\|.*\|\s*\n\|[\s:|-]*-[\s:|-]*\|\s*$", text, re.M):
        return output
    body = MarkdownWithMath(renderer=IPythonRenderer(escape=True, exclude_anchor_links=True)).render(text)
    return nbformat.v4.new_output("display_data", data={"text/html": f'<div class="docs-table">{body}</div>',
                                                        "text/plain": text})


def run_state(run_nb) -> str:
    "What papermill's metadata says of an executed notebook: '' when it finished, else a note for the labels."
    pm = run_nb.metadata.get("papermill") if run_nb is not None else None
    if not pm: return ""
    if pm.get("exception"): return "; the stage failed in this run"
    return "" if pm.get("end_time") else "; the stage was still running when the site was built"


def merge_stage_outputs(nb, run_nb, label: str) -> int:
    """Give each stage cell of `nb` its outputs from the executed `run_nb` (same cell id), label it, and insert the
    parameters papermill injected after the parameters cell. `run_nb` None: label the stage cells as not in the run.
    Returns how many stage cells got outputs."""
    ran = {c.get("id"): c for c in (run_nb.cells if run_nb is not None else [])}
    state = run_state(run_nb)
    injected = next((c for c in ran.values() if "injected-parameters" in c.metadata.get("tags", [])), None)
    cells, merged = [], 0
    for cell in nb.cells:
        cells.append(cell)
        if not is_stage(cell): continue
        cell.metadata.setdefault("tags", []).append(STAGE_TAG)
        params = "parameters" in cell.metadata.get("tags", [])
        other = ran.get(cell.get("id"))
        if run_nb is None:
            cell.metadata.update(docs_kind="norun", docs_badge="stage cell: runs in polyalign reproduce "
                                 "(this site was built without a run)")
        elif other is None:
            cell.metadata.update(docs_kind="missing", docs_badge=f"stage cell: not in the run ({label})")
        else:
            ran_cell, _ = CoalesceStreamsPreprocessor().preprocess_cell(copy.deepcopy(other), {}, 0)
            cell.outputs = [markdown_table_output(o) for o in ran_cell.get("outputs", [])]
            cell.execution_count = other.get("execution_count")
            changed = cell_directives(other)[1].strip() != cell_directives(cell)[1].strip()
            merged += 1
            what = "stage parameters" if params else "stage result"
            cell.metadata.update(docs_kind="changed" if changed or state else "stage",
                                 docs_badge=f"{what} from the run ({label})" + state
                                 + ("; this cell changed since the run" if changed else ""))
        if params and injected is not None:
            extra = copy.deepcopy(injected)
            extra.metadata.update(tags=[STAGE_TAG], docs_kind="stage",
                                  docs_badge=f"parameters papermill injected in the run ({label})")
            cells.append(extra)
    nb.cells = cells
    return merged


# ------------------------------------------------------------------------------------------------------------ display
def display_cells(nb, pages: list[Page]):
    """The cells as the page shows them: `#| hide` and `include: false` cells dropped, directive lines removed,
    `echo: false` / `output: false` honoured, empty code cells dropped, streams coalesced, links to other
    notebooks pointed at their pages."""
    names = {p.source.name: p.name for p in pages}
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = link_notebooks(cell.source, names)
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        found, src = cell_directives(cell)
        if "hide" in found or str(found.get("include:", [""])[0]).lower() == "false": continue
        cell.source = src.strip("\n")
        if str(found.get("echo:", [""])[0]).lower() == "false": cell.source = ""
        if str(found.get("output:", [""])[0]).lower() == "false": cell.outputs = []
        if cell.source or cell.outputs: cells.append(cell)
    nb.cells = cells
    CoalesceStreamsPreprocessor().preprocess(nb, {})
    return nb


def link_notebooks(md: str, names: dict[str, str]) -> str:
    "Markdown links to a notebook of the site, and inline code naming one (`07_metrics.ipynb`), become page links."
    md = re.sub(r"\]\(([\w.-]+\.ipynb)(#[^)]*)?\)",
                lambda m: f"]({names[m.group(1)]}{m.group(2) or ''})" if m.group(1) in names else m.group(0), md)
    return re.sub(r"(?<![\[`])`([\w.-]+\.ipynb)`(?!\])",
                  lambda m: f"[`{m.group(1)}`]({names[m.group(1)]})" if m.group(1) in names else m.group(0), md)


# --------------------------------------------------------------------------------------------------------------- math
_TEX_FIXES = (  # TeX that matplotlib's mathtext does not read, rewritten to what it does
    (re.compile(r"\\(ge|le)(?![A-Za-z])"), r"\\\1q"),
    (re.compile(r"\\[lr]Vert"), r"\\Vert"),
    (re.compile(r"\\[bB]igg?[lr]?(?![A-Za-z])\s*"), ""),   # delimiter sizes: the delimiter is kept at its own size
    (re.compile(r"\\text\{"), r"\\mathrm{"),
    (re.compile(r"\\(mathcal|mathbb|mathrm|mathbf)\s+([A-Za-z0-9])"), r"\\\1{\2}"),
    (re.compile(r"\\frac\s*([A-Za-z0-9])\s*([A-Za-z0-9])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*([A-Za-z0-9])(?=\s*\{)"), r"\\frac{\1}"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*([A-Za-z0-9])"), r"\\frac\1{\2}"),
)
MATH_PT = 12.0  # the size formulas are typeset at; the page scales them to its font (em)
MATH_SCALE = {False: 1.12, True: 1.3}  # inline, display: Computer Modern looks small beside the page's sans-serif


def normalise_tex(tex: str) -> str:
    "The formula in the TeX subset matplotlib's mathtext reads (`\\frac1N`, `\\mathcal B`, `\\ge`, `\\text{}`)."
    for pat, rep in _TEX_FIXES: tex = pat.sub(rep, tex)
    return tex


@functools.lru_cache(maxsize=None)
def tex_svg(tex: str) -> tuple[str, float, float] | None:
    """A formula typeset by matplotlib's mathtext as base64 SVG with its height and depth in em, or None when
    mathtext cannot read it. Deterministic: no date, fixed ids."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser
    with rc_context({"svg.fonttype": "path", "svg.hashsalt": "polyalign-docs"}):
        prop = FontProperties(size=MATH_PT, math_fontfamily="cm")
        try:
            w, h, d, *_ = MathTextParser("path").parse(f"${tex}$", dpi=72, prop=prop)
            fig = Figure(figsize=(w / 72, h / 72))
            fig.text(0, d / h, f"${tex}$", fontproperties=prop)
            buf = io.BytesIO()
            fig.savefig(buf, format="svg", dpi=72, transparent=True, metadata={"Date": None})
        except Exception:   # mathtext raises ValueError and, for some inputs, other errors
            return None
    return base64.b64encode(buf.getvalue()).decode(), h / MATH_PT, d / MATH_PT


def math_html(tex: str, block: bool) -> str:
    "An embedded SVG image of the formula (its TeX as alt text), or the TeX as code when it cannot be typeset."
    svg = tex_svg(normalise_tex(" ".join(tex.split())))
    if svg is None:
        out = f'<code class="docs-math-tex">{html.escape(tex)}</code>'
    else:
        data, h, d = svg
        k = MATH_SCALE[block]
        out = (f'<img class="docs-math" alt="{html.escape(tex)}" src="data:image/svg+xml;base64,{data}" '
               f'style="height:{h * k:.3f}em;vertical-align:{-d * k:.3f}em">')
    return f'<span class="docs-math-block">{out}</span>' if block else out   # a span: it sits inside a paragraph


class MathRenderer(IPythonRenderer):
    "nbconvert's markdown renderer with `$...$` and `$$...$$` typeset at build time instead of by MathJax."

    def inline_math(self, body: str) -> str:
        return math_html(body, block=False)

    def block_math(self, body: str) -> str:
        return math_html(body, block=True)

    def latex_environment(self, name: str, body: str) -> str:
        tex = "\\begin{" + name + "}" + body + "\\end{" + name + "}"
        return f'<pre><code class="docs-math-tex">{html.escape(tex)}</code></pre>'


class DocsExporter(HTMLExporter):
    "HTMLExporter whose markdown filter typesets math with `MathRenderer`."

    @pass_context
    def markdown2html(self, context, source):
        cell = context.get("cell", {})
        renderer = MathRenderer(escape=False, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
                                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                                anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links)
        return MarkdownWithMath(renderer=renderer).render(source)

    def from_notebook_node(self, nb, resources=None, **kw):
        """HTMLExporter's conversion without its final BeautifulSoup pass over the whole page (half the build time
        of a page), which only adds alt text to images lacking it (done here by `add_alt_text`) and tab stops."""
        from nbconvert.exporters.templateexporter import TemplateExporter
        from nbconvert.filters.highlight import Highlight2HTML
        from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
        info = nb.metadata.get("language_info", {})
        self.register_filter("highlight_code", self.filters.get("highlight_code", Highlight2HTML(
            pygments_lexer=info.get("pygments_lexer", info.get("name")), parent=self)))
        resources = self._init_resources(resources)
        self.register_filter("filter_data_type", WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata,
                                                                       parent=self, resources=resources))
        body, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        return add_alt_text(body), resources


def add_alt_text(page: str) -> str:
    "Images without alt text (figures from outputs) get a generic one."
    return re.sub(r"<img(?![^>]*\balt=)", '<img alt="figure from the output"', page)


def exporter() -> DocsExporter:
    "The page exporter: the site template, images embedded, no prompts."
    from traitlets.config import Config
    c = Config()
    c.HTMLExporter.extra_template_basedirs = [str(TEMPLATES)]
    c.HTMLExporter.template_name = TEMPLATE
    c.HTMLExporter.embed_images = True
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    c.HTMLExporter.theme = "light"
    return DocsExporter(config=c)


# -------------------------------------------------------------------------------------------------------------- pages
def index_notebook(pages: list[Page], index_nb, report: str | None, label: str | None, executed: bool):
    "The site's home page: `nbs/index.ipynb` (or a title) followed by the list of sections, the run and the about."
    nb = index_nb if index_nb is not None else nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# polyalign documentation")])
    items = "\n".join(f"<dt><a href=\"{p.name}\">{html.escape(p.number + ' ' if p.number else '')}"
                      f"{html.escape(p.title)}</a></dt><dd>{html.escape(p.summary)}</dd>"
                      for p in pages if p.name != "index.html")
    cells = [nbformat.v4.new_markdown_cell(f"## Sections\n\n<dl class=\"docs-sections\">\n{items}\n</dl>")]
    if label is not None:
        where = (f"[the run's report]({report}) gathers its tables and figures, reported beside reproduced."
                 if report else "this run has no report yet (`report/index.html` in the run folder).")
        cells.append(nbformat.v4.new_markdown_cell(f"## The run\n\nStage results on these pages come from the run "
                                                   f"({label}); {where}"))
    cells.append(nbformat.v4.new_markdown_cell(ABOUT.format(
        exec_note="" if executed else " (not done for this build: `--no-execute`)",
        run_note=f"a reproduction run ({label})" if label else "a reproduction run (none for this build: `--no-run`)")))
    nb.cells.extend(cells)
    return nb


def render_page(exp: DocsExporter, nb, page: Page, pages: list[Page], docs: dict, nbs: Path) -> str:
    "The page's HTML."
    nb.metadata["title"] = page.title
    resources = {"metadata": {"name": page.title, "path": str(nbs)},
                 "docs": {**docs, "current": page.name,
                          "nav": [{"name": p.name, "title": p.title, "short": p.short, "number": p.number}
                                  for p in pages if p.name != "index.html"]}}
    body, _ = exp.from_notebook_node(nb, resources=resources)
    return body


def relative_link(target: Path, out: Path) -> str:
    "`target` relative to the site folder `out` (both resolved, so symlinks and `..` do not mislead)."
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def replace_dir(tmp: Path, out: Path) -> None:
    "Put the finished `tmp` at `out`: the old site moves aside, the new one is renamed in, the old one is removed."
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None: shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------- screenshot
def figure_and_table(nb) -> int:
    "2 when one stage cell's outputs show a table and a figure, 1 when two stage cells do between them, else 0."
    def shows(cell):
        data = [o.get("data", {}) for o in cell.get("outputs", [])]
        return ("<table" in "".join(str(d.get("text/html", "")) for d in data), any("image/png" in d for d in data))
    cells = [shows(c) for c in nb.cells if STAGE_TAG in c.get("metadata", {}).get("tags", [])]
    if any(t and f for t, f in cells): return 2
    return int(any(t for t, _ in cells) and any(f for _, f in cells))


def screenshot_target(site: Path, scores: dict[str, int], wanted: str | None) -> Path | None:
    "The page to photograph: `wanted`, else the first page scoring highest in `figure_and_table`."
    if wanted:
        name = wanted if wanted.endswith(".html") else f"{Path(wanted).stem}.html"
        if not (site / name).is_file(): raise DocsError(f"--screenshot-page: no page {name} in the site")
        return site / name
    best = max(scores.values(), default=0)
    return next((site / name for name, score in scores.items() if score == best), None) if best else None


# the stage cell to show: the first with a table and a figure, else the first figure, with the nearest table cell
_REGION_JS = """
const cells = [...document.querySelectorAll('.celltag_docs-stage')];
const has = (c, sel) => !!c.querySelector(sel);
const fig = 'img[src^="data:image/png"]', tab = '.jp-OutputArea table';
let i = cells.findIndex(c => has(c, fig) && has(c, tab));
let j = i;
if (i < 0) {
  i = j = Math.max(0, cells.findIndex(c => has(c, fig)));
  const near = [i + 1, i - 1].find(k => cells[k] && has(cells[k], tab));
  if (near !== undefined) { i = Math.min(i, near); j = Math.max(j, near); }
}
if (!cells.length) return [0, 900];
const top = el => el.getBoundingClientRect().top + window.scrollY;
const badge = cells[i].previousElementSibling;
const start = top(badge && badge.classList.contains('docs-badge') ? badge : cells[i]) - 12;
return [Math.max(0, start), top(cells[j]) + cells[j].getBoundingClientRect().height + 12];
"""


def screenshot(page: Path, png: Path, width: int = 1280, max_height: int = 2000) -> Path:
    """A PNG of the page in headless chromium showing its stage result with a table and a figure (see `_REGION_JS`),
    the section list beside it; at most `max_height` CSS pixels tall."""
    from polyalign.annotate import headless_chromium
    from polyalign.core import atomic_path
    with headless_chromium(width=width, height=900) as wd:
        wd.get(page.resolve().as_uri())
        top, bottom = wd.execute_script(_REGION_JS)
        height = int(min(max(bottom - top, 600), max_height))
        wd.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        wd.execute_script("window.scrollTo(0, arguments[0]);", top)
        png_bytes = wd.get_screenshot_as_png()
    with atomic_path(png) as tmp: Path(tmp).write_bytes(png_bytes)
    return png


# -------------------------------------------------------------------------------------------------------------- build
def build(args) -> Path:
    "Build the site described by the command-line `args`; returns the site folder."
    start = time.monotonic()
    nbs, out = Path(args.nbs), Path(args.out)
    run = None if args.no_run else Path(args.run)
    pages = find_pages(nbs, args.only)
    found = run_notebooks(run, pages, args.partial_run) if run is not None else {}
    label = run_label(run) if run is not None else None
    nbs_by_page = {p.source.name: nbformat.read(p.source, as_version=4) for p in pages}
    if not args.no_execute:
        from polyalign.reproduce import kernel_name
        kernel = kernel_name()
        print(f"executing the worked examples of {len(pages)} notebooks (kernel {kernel}, "
              f"{min(args.workers, MAX_WORKERS)} at a time)", file=sys.stderr, flush=True)
        execute_all(nbs_by_page, nbs, kernel, args.timeout, skip_flags(nbs), args.workers)
    errors = [e for name, nb in nbs_by_page.items() for e in cell_errors(nb, name)]
    if errors and not args.allow_errors:
        raise DocsError("worked examples raised (the site was not written; --allow-errors writes it anyway):\n  "
                        + "\n  ".join(errors))
    for e in errors: print(f"warning: the page shows an error: {e}", file=sys.stderr)
    report = run / "report" / "index.html" if run is not None else None
    docs = {"site_title": "polyalign", "run_label": label or "",
            "report": relative_link(report, out) if report is not None and report.is_file() else None,
            "built": f"Built {time.strftime('%Y-%m-%d %H:%M')}" + (f" with stage results of {label}" if label else "")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    tmp.chmod(0o755)   # mkdtemp's 0700 would carry over to the site
    merged, scores = 0, {}
    try:
        exp = exporter()
        for p in pages:
            nb = nbs_by_page[p.source.name]
            if run is None:
                merge_stage_outputs(nb, None, "")
            elif p.source.name in found:
                merged += merge_stage_outputs(nb, nbformat.read(found[p.source.name], as_version=4), label)
            else:   # no stage cells, or --partial-run and the run lacks this stage: every stage cell says so
                merge_stage_outputs(nb, nbformat.v4.new_notebook(), label)
            if p.name == "index.html":
                nb = index_notebook(pages, nb, docs["report"], label, not args.no_execute)
            scores[p.name] = figure_and_table(nb)
            (tmp / p.name).write_text(render_page(exp, display_cells(nb, pages), p, pages, docs, nbs), encoding="utf-8")
        if not any(p.name == "index.html" for p in pages):
            home = Page(nbs / "index.ipynb", "index.html", "polyalign documentation", "")
            nb = display_cells(index_notebook(pages, None, docs["report"], label, not args.no_execute), pages)
            (tmp / "index.html").write_text(render_page(exp, nb, home, pages, docs, nbs), encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {len(pages)} pages to {out} in {time.monotonic() - start:.0f} s"
          + (f", {merged} stage cells with outputs from the run ({label})" if run is not None else "")
          + (f", {len(errors)} worked-example errors shown" if errors else ""), file=sys.stderr)
    if run is not None and not args.no_screenshot:
        take_screenshot(out, scores, run, args.screenshot_page)
    return out


def take_screenshot(site: Path, scores: dict[str, int], run: Path, wanted: str | None) -> None:
    "The screenshot of a section page into `<run>/figures/docs_page.png`; skipped with a message without chromium."
    target = screenshot_target(site, scores, wanted)
    if target is None:
        print("screenshot skipped: no page shows a stage table and figure", file=sys.stderr)
        return
    try:
        png = screenshot(target, run / "figures" / "docs_page.png")
    except (ImportError, RuntimeError) as e:
        print(f"screenshot skipped: {e}", file=sys.stderr)
        return
    print(f"screenshot of {target.name}: {png}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    "The command line."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nbs", default="nbs", help="the notebooks folder (default: nbs)")
    p.add_argument("--run", default="runs/tiny", help="a run folder whose notebooks/ holds the executed stage "
                   "notebooks of `polyalign reproduce` (default: runs/tiny)")
    p.add_argument("--out", default="site", help="the site folder, replaced when the build succeeds (default: site)")
    p.add_argument("--only", nargs="+", metavar="NB", help="build only these notebooks (name, with or without .ipynb)")
    p.add_argument("--no-execute", action="store_true", help="do not execute the worked examples (no outputs)")
    p.add_argument("--no-run", action="store_true", help="build without stage results (no run folder needed)")
    p.add_argument("--partial-run", action="store_true",
                   help="label stage notebooks the run lacks instead of failing")
    p.add_argument("--allow-errors", action="store_true", help="write the site even when a worked example raises")
    p.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default: 600)")
    p.add_argument("--workers", type=int, default=MAX_WORKERS, choices=range(1, MAX_WORKERS + 1),
                   help=f"notebooks executed at a time (at most {MAX_WORKERS})")
    p.add_argument("--no-screenshot", action="store_true",
                   help="do not write <run>/figures/docs_page.png (a headless-chromium screenshot of a section page)")
    p.add_argument("--screenshot-page", metavar="NB", help="the page to photograph (default: the first page whose "
                   "stage results show a table and a figure)")
    return p


def main(argv: list[str] | None = None) -> int:
    "Build the site; 0 on success, 1 with a one-paragraph message otherwise."
    args = parser().parse_args(argv)
    try:
        build(args)
    except DocsError as e:
        print(f"build_docs: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
