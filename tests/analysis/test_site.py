"""The offline front page (reports/index.html) and the pinned front-end assets behind it."""
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from modules.core.site import build_site, render_report  # noqa: E402
from modules.core.web_assets import (fetch, inline_vega_template, load_manifest, network_loads,  # noqa: E402
                                     require)
from tests.offline_browser import browse  # noqa: E402

README = """# Demo study

| claim | paper | ours |
|---|---|---|
| a | 1 | 2 |
| b | 3 | 4 |

![curve](figures/curve.png)

See [the other report](../other/README.md).
"""


def demo_repo(root):
    """A DVC repository with one plot and one report that has a table and a figure."""
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "curve.csv").write_text("step,loss\n1,2.0\n2,1.0\n3,0.5\n")
    (root / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: step\n      y: loss\n")
    report = root / "reports" / "demo"
    (report / "figures").mkdir(parents=True)
    (report / "README.md").write_text(README)
    plt.figure(figsize=(2, 2))
    plt.plot([1, 2, 3], [2.0, 1.0, 0.5])
    plt.savefig(report / "figures" / "curve.png")
    plt.close()
    return root


def test_a_report_renders_with_its_tables_figures_and_links(tmp_path):
    demo_repo(tmp_path)
    out = render_report(tmp_path / "reports" / "demo" / "README.md", tmp_path / "reports" / "site")
    assert out == tmp_path / "reports" / "site" / "demo.html"
    page = out.read_text()
    assert "<title>Demo study</title>" in page and "<table>" in page and "<td>4</td>" in page
    assert '<base href="../demo/">' in page and '<img src="figures/curve.png" alt="curve"' in page
    assert 'href="../site/other.html"' in page  # another report's README.md -> its page (from the base)
    assert not network_loads(page)


def test_the_front_page_plots_and_reports_render_offline(tmp_path):
    demo_repo(tmp_path)
    index = build_site(tmp_path, tmp_path / "reports")
    assert index == tmp_path / "reports" / "index.html"
    pages = ["index.html", "site/demo.html", "plots/index.html"]
    for page in pages:
        assert not network_loads((tmp_path / "reports" / page).read_text()), page
    assert sorted(p.name for p in (tmp_path / "reports" / "demo").iterdir()) == ["README.md", "figures"]  # a DVC output: untouched
    front, demo, plots = browse(tmp_path / "reports", pages)
    for result in (front, demo, plots):
        assert all(url.startswith(result["origin"]) for url in result["resources"]), result["resources"]
        assert not result["broken_images"]
    assert front["rows"] == 1 and {"site/demo.html", "demo/README.md", "plots/index.html"} <= set(front["links"])
    assert demo["tables"] == 1 and demo["rows"] == 2 and demo["images"] == 1
    assert plots["vega_embed"] == "function" and plots["vega_views"] >= 1  # Vega drew the curve


def test_the_plots_template_carries_vega_inline():
    template = inline_vega_template()
    assert "{plot_divs}" in template and "{scripts}" not in template  # DVC adds its CDN tags at {scripts}
    assert not network_loads(template) and "vegaEmbed" in template


def test_missing_assets_are_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^front-end assets .*jquery@3\.7\.1.* are not in .*: run `make setup`"):
        require(tmp_path / "empty")


def test_fetch_takes_only_the_listed_files_and_refuses_a_changed_package(tmp_path):
    manifest = load_manifest()
    popper = {"popper.js@1.12.9": manifest["packages"]["popper.js@1.12.9"]}
    assert fetch(tmp_path, {"packages": popper}) == ["popper.js@1.12.9"]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["popper.js@1.12.9/.integrity", "popper.js@1.12.9/dist/umd/popper.min.js"]
    assert fetch(tmp_path, {"packages": popper}) == []  # already there: no download
    wrong = {"jquery@3.7.1": {**manifest["packages"]["jquery@3.7.1"],
                              "integrity": manifest["packages"]["popper.js@1.12.9"]["integrity"]}}
    with pytest.raises(ValueError, match=r"^jquery@3\.7\.1: the downloaded package's sha512 .* differs from the pinned"):
        fetch(tmp_path, {"packages": wrong})
    assert not (tmp_path / "jquery@3.7.1").exists() and not list(tmp_path.glob(".jquery*"))


def test_every_cdn_address_maps_to_a_pinned_file():
    manifest = load_manifest()
    for target in [*manifest["cdn"].values(), *manifest["vega"]]:
        spec = next((s for s in manifest["packages"] if target.startswith(s + "/")), None)
        assert spec and target[len(spec) + 1:] in manifest["packages"][spec]["files"], target


def test_every_figure_a_committed_report_shows_is_in_the_repository():
    """A report's image links resolve to files git tracks (the offline pages and the repository's
    web page show the same figures); a wrong link once hid every study-3 figure."""
    root = Path(__file__).resolve().parents[2]
    tracked = set(subprocess.run(["git", "ls-files", "reports"], cwd=root, capture_output=True, text=True,
                                 check=True).stdout.split())
    missing = [f"{readme.relative_to(root)}: {link}" for readme in sorted((root / "reports").glob("*/README.md"))
               for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme.read_text())
               if (readme.parent / link).relative_to(root).as_posix() not in tracked]
    assert not missing, missing
