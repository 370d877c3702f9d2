"""Pinned front-end assets (Bootstrap, jQuery, Font Awesome, Vega, ...) for the lab's HTML pages.

Great Expectations' Data Docs and `dvc plots show` load these from CDNs, so on an offline cluster
the Data Docs lose their results tables and the plots page stays blank. `make setup` fetches the
npm packages named in ``web_assets.json`` (checked against their pinned sha512), and the pages are
rewritten to use copies beside them (:func:`localize_site`) or carry Vega inline
(:func:`inline_vega_template`).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from modules.core.io import replace_dir

MANIFEST = Path(__file__).with_name("web_assets.json")
STORE_ENV = "LAB_WEB_ASSETS"
VENDOR = Path("static") / "vendor"  # inside a Data Docs site
INTEGRITY = ".integrity"
# Great Expectations' logo is loaded from its bucket; every site has the same image in static/images.
GX_LOGO = re.compile(r"https://great-expectations-web-assets\.s3[\w.-]*\.amazonaws\.com/[\w.-]+\.png(?:\?[^\"')\s]*)?")
# What the browser fetches by itself: script/link/img/source/iframe addresses and CSS url(...).
NETWORK_LOAD = re.compile(r"<(?:script|link|img|source|iframe)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?(https?://[^\"'\s>]+)"
                          r"|url\(\s*[\"']?(https?://[^\"')\s]+)", re.IGNORECASE)


def store_dir() -> Path:
    """Where the fetched packages live: ``$LAB_WEB_ASSETS``, else inside the virtual environment."""
    return Path(os.environ.get(STORE_ENV) or Path(sys.prefix) / "share" / "lab-web-assets")


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(Path(path).read_text())


def sri_digest(path: Path) -> str:
    """The npm registry's integrity string of a file: ``sha512-`` and the base64 digest."""
    digest = hashlib.sha512(Path(path).read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _installed(store: Path, spec: str, integrity: str) -> bool:
    marker = store / spec / INTEGRITY
    return marker.is_file() and marker.read_text().strip() == integrity


def fetch(store: Path | None = None, manifest: dict | None = None, npm: str = "npm") -> list[str]:
    """``npm pack`` every package of the manifest not yet in ``store``, check the tarball's sha512
    against the pin, and unpack the listed files (each package lands in one rename). Returns the
    specs fetched."""
    store = Path(store or store_dir())
    manifest = manifest or load_manifest()
    missing = {spec: entry for spec, entry in manifest["packages"].items()
               if not _installed(store, spec, entry["integrity"])}
    if missing and shutil.which(npm) is None:
        raise FileNotFoundError(f"{npm} not found: Node.js's npm fetches the pinned front-end packages "
                                f"({', '.join(missing)})")
    for spec, entry in missing.items():
        target = store / spec
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            done = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", download],
                                  cwd=download, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ValueError(f"npm pack {spec} failed: {last}")
            tarball = Path(download) / json.loads(done.stdout)[0]["filename"]
            actual = sri_digest(tarball)
            if actual != entry["integrity"]:
                raise ValueError(f"{spec}: the downloaded package's sha512 {actual[:20]}... differs from "
                                 f"the pinned {entry['integrity'][:20]}... in {MANIFEST.name}")
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
            try:
                _unpack(tarball, entry["files"], staging, spec)
                (staging / INTEGRITY).write_text(entry["integrity"] + "\n")
                staging.chmod(0o755)
                replace_dir(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return list(missing)


def _unpack(tarball: Path, files: list[str], out: Path, spec: str) -> None:
    # Only the listed members, by exact name: nothing else of the tarball reaches the disk.
    with tarfile.open(tarball, "r:gz") as archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        for name in files:
            member = members.get(f"package/{name}")
            if member is None:
                raise ValueError(f"{spec} has no file {name}")
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(archive.extractfile(member).read())


def require(store: Path | None = None, manifest: dict | None = None) -> Path:
    """The store, or a one-line error naming what is missing and how to fetch it."""
    store = Path(store or store_dir())
    manifest = manifest or load_manifest()
    missing = [spec for spec, entry in manifest["packages"].items()
               if not _installed(store, spec, entry["integrity"])]
    if missing:
        raise FileNotFoundError(f"front-end assets {', '.join(missing)} are not in {store}: run `make setup` "
                                "(python -m modules.core.web_assets fetch)")
    return store


def network_loads(text: str) -> list[str]:
    """The http(s) addresses a browser would fetch on its own when it opens this HTML or CSS."""
    return [a or b for a, b in NETWORK_LOAD.findall(text)]


def localize_site(site: Path, store: Path | None = None, manifest: dict | None = None) -> None:
    """Make a Data Docs site work offline: copy the pinned packages into ``static/vendor/`` and
    point every CDN address of its HTML and CSS there (the logo at the site's own copy). A page
    that still loads anything from the network fails with one line, so a Great Expectations
    upgrade that adds a CDN file is caught at the stage, not by a reader offline."""
    site = Path(site)
    manifest = manifest or load_manifest()
    store = require(store, manifest)
    vendor = site / VENDOR
    for spec, entry in manifest["packages"].items():
        for name in entry["files"]:
            (vendor / spec / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store / spec / name, vendor / spec / name)
    cdn = manifest["cdn"]
    by_address = re.compile("|".join(re.escape(url) for url in sorted(cdn, key=len, reverse=True))
                            + r"(?=[\"')\s])")
    logo = site / "static" / "images" / "logo-long.png"
    for page in sorted(p for p in site.rglob("*") if p.suffix in {".html", ".css"} and vendor not in p.parents):
        text = page.read_text(encoding="utf-8")
        local = by_address.sub(lambda m: os.path.relpath(vendor / cdn[m.group(0)], page.parent), text)
        local = GX_LOGO.sub(lambda m: os.path.relpath(logo, page.parent), local)
        remaining = network_loads(local)
        if remaining:
            raise ValueError(f"{page} loads {remaining[0]} from the network: add it to {MANIFEST.name}'s cdn map")
        if local != text:
            page.write_text(local, encoding="utf-8")


def inline_vega_template(store: Path | None = None, manifest: dict | None = None, title: str = "Plots") -> str:
    """An HTML template for ``dvc plots show --html-template`` with Vega, Vega-Lite and vega-embed
    inline, so the page is one self-contained file. It has no ``{scripts}`` placeholder, which is
    where DVC would add its CDN script tags."""
    manifest = manifest or load_manifest()
    store = require(store, manifest)
    # "</script" inside a script would end it early.
    scripts = "\n".join("<script>" + (store / name).read_text(encoding="utf-8").replace("</script", "<\\/script")
                        + "</script>" for name in manifest["vega"])
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n{scripts}\n"
            "<style>body { font-family: sans-serif; margin: 1.5em; } table { border-spacing: 15px; }</style>\n"
            f"</head>\n<body>\n<h1>{title}</h1>\n{{plot_divs}}\n</body>\n</html>\n")


def main() -> None:
    import argparse

    from modules.core.stage import run

    parser = argparse.ArgumentParser(description="Fetch the pinned front-end packages (npm, sha512-checked).")
    parser.add_argument("command", choices=["fetch", "check"])
    parser.add_argument("--store", default=None, help=f"default: ${STORE_ENV} or <venv>/share/lab-web-assets")
    args = parser.parse_args()

    def act() -> None:
        store = Path(args.store) if args.store else store_dir()
        if args.command == "fetch":
            fetched = fetch(store)
            print(f"front-end assets in {store}: fetched {len(fetched)}, "
                  f"{len(load_manifest()['packages']) - len(fetched)} already there")
        else:
            print(f"front-end assets complete in {require(store)}")

    run(act)


if __name__ == "__main__":
    main()
