"""The lab's front page, ``reports/index.html``: every study's report (rendered to
``reports/site/<report>.html``), every Great Expectations Data Docs site and the DVC plots page, all
readable offline. The rendered pages stay out of the report folders, which are DVC outputs.

Nothing here loads from the network: reports are plain HTML with their own figures, Data Docs carry
their vendored assets (:func:`modules.core.web_assets.localize_site`) and the plots page has Vega
inline (:func:`modules.core.web_assets.inline_vega_template`).
"""
from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from markdown_it import MarkdownIt

from modules.core.io import atomic_write_text
from modules.core.web_assets import inline_vega_template

SITE = "site"  # reports/site/<report>.html
STYLE = """<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 72em;
       margin: 2em auto; padding: 0 1em; line-height: 1.45; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f6f8fa; }
img { max-width: 100%; }
code { background: #f6f8fa; padding: 0.1em 0.3em; border-radius: 4px; }
</style>"""


def page(title: str, body: str, base: str | None = None) -> str:
    base_tag = f'<base href="{html.escape(base)}">\n' if base else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{base_tag}"
            f"<title>{html.escape(title)}</title>\n{STYLE}\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def markdown_title(text: str, default: str) -> str:
    match = re.search(r"^# (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else default


def render_report(readme: Path, out_dir: Path) -> Path:
    """``reports/<name>/README.md`` -> ``out_dir/<name>.html``: its tables and figures (relative
    addresses resolve in the report's folder through a <base> tag); a link to another report's
    README.md points at that report's page."""
    text = readme.read_text(encoding="utf-8")
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    site = os.path.relpath(out_dir, readme.parent)
    body = re.sub(r'href="\.\./([\w-]+)/README\.md"', lambda m: f'href="{site}/{m.group(1)}.html"', body)
    out = out_dir / f"{readme.parent.name}.html"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page(markdown_title(text, readme.parent.name), body,
                                base=os.path.relpath(readme.parent, out_dir) + "/"))
    return out


def render_plots(repo: Path, out_dir: Path) -> Path:
    """``dvc plots show`` of every plot the repository's dvc.yaml files define, into
    ``out_dir/index.html`` with Vega inline."""
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.html"
        template.write_text(inline_vega_template(title="DVC plots"), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template),
                               "-o", str(Path(tmp) / "plots")], cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(f"dvc plots show failed: {last}")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "index.html", (Path(tmp) / "plots" / "index.html").read_text(encoding="utf-8"))
    return out_dir / "index.html"


def data_docs_sites(reports: Path) -> list[Path]:
    """Every Data Docs site under ``reports/data_docs`` (a folder with an index.html and static/)."""
    return sorted(index.parent for index in (reports / "data_docs").rglob("index.html")
                  if (index.parent / "static").is_dir())


def _link(href: Path | str, text: str) -> str:
    return f'<a href="{html.escape(str(href))}">{html.escape(text)}</a>'


def build_site(repo: Path, reports: Path) -> Path:
    """Render every report and the plots page, then write ``reports/index.html`` linking them and
    the Data Docs sites. Returns the index's path."""
    reports = Path(reports)
    rows = []
    for readme in sorted(reports.glob("*/README.md")):
        rendered = render_report(readme, reports / SITE)
        title = markdown_title(readme.read_text(encoding="utf-8"), readme.parent.name)
        rows.append(f"<tr><td>{_link(rendered.relative_to(reports).as_posix(), readme.parent.name)}</td>"
                    f"<td>{html.escape(title)}</td><td>{_link(readme.parent.name + '/README.md', 'README.md')}</td></tr>")
    sites = [f"<li>{_link(site.relative_to(reports).as_posix() + '/index.html', site.relative_to(reports / 'data_docs').as_posix())}</li>"
             for site in data_docs_sites(reports)]
    plots = render_plots(Path(repo), reports / "plots")
    body = "\n".join([
        "<h1>Reasoning interpretability lab: reports</h1>",
        "<p>Generated by <code>make site</code> (and at the end of <code>make pipeline</code>) from the "
        "pipelines' outputs; every page here works without network access. Runs, metrics and artifacts: "
        "<code>make mlflow-ui</code> (http://127.0.0.1:5000).</p>",
        "<h2>Study reports</h2>",
        "<table><thead><tr><th>report</th><th>title</th><th>source</th></tr></thead><tbody>",
        *rows, "</tbody></table>",
        "<h2>Data checks (Great Expectations Data Docs)</h2>",
        "<ul>", *(sites or ["<li>none yet: the validate stages write them</li>"]), "</ul>",
        "<h2>Plots</h2>",
        f"<ul><li>{_link(plots.relative_to(reports).as_posix(), 'DVC plots (training curves, breakdowns)')}</li></ul>",
    ])
    index = reports / "index.html"
    atomic_write_text(index, page("Reasoning interpretability lab: reports", body))
    return index
