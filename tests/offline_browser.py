"""Open pages of a local directory in headless Chromium with no network, and report what rendered.

``browse(root, pages)`` serves ``root`` on 127.0.0.1 and loads each page inside a harness page (same
origin) that waits, then reads the page's DOM: tables and their rows, Bootstrap tables built by
bootstrap-table's JavaScript, images that decoded, Vega views drawn, the scripts' globals, and every
resource the page fetched. Both the server and the browser run in a new network namespace that has
only a loopback interface (``unshare -rn``), so nothing outside this machine is reachable; where the
kernel refuses an unprivileged namespace, a dead proxy blocks every non-loopback address instead
(``isolation`` in the result says which).

Run as a script (``python -m tests.offline_browser ROOT PAGE...``) it prints one JSON line per page.
"""
from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HARNESS = "_offline_harness.html"
HARNESS_HTML = """<!DOCTYPE html>
<html><body><pre id="out">pending</pre>
<iframe id="page" style="width:1400px;height:1000px"></iframe>
<script>
const target = new URLSearchParams(location.search).get("page");
const frame = document.getElementById("page");
frame.addEventListener("load", () => setTimeout(() => {
  const d = frame.contentDocument, w = frame.contentWindow;
  const images = [...d.images];
  document.getElementById("out").textContent = JSON.stringify({
    page: target,
    title: d.title,
    tables: d.querySelectorAll("table").length,
    rows: d.querySelectorAll("table tbody tr").length,
    bootstrap_tables: d.querySelectorAll(".bootstrap-table").length,
    images: images.length,
    broken_images: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    vega_views: d.querySelectorAll(".vega-embed canvas, .vega-embed svg").length,
    jquery: typeof w.jQuery, vega_embed: typeof w.vegaEmbed,
    resources: w.performance.getEntriesByType("resource").map(e => e.name),
    links: [...d.querySelectorAll("a[href]")].map(a => a.getAttribute("href")),
  });
}, 3000));
frame.src = target;
</script></body></html>
"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                  "--proxy-server=127.0.0.1:9",  # a dead proxy: every non-loopback request fails
                  "--virtual-time-budget=15000", "--dump-dom"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no Chromium on PATH: `make setup-dev` installs Debian's chromium package")


def _serve_and_open(root: Path, pages: list[str], isolation: str) -> list[dict]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    results = []
    try:
        for page in pages:
            done = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"{base}/{HARNESS}?page=/{page}"],
                                  capture_output=True, text=True, timeout=180)
            dom = done.stdout
            start, end = dom.find('<pre id="out">'), dom.find("</pre>")
            raw = dom[start + len('<pre id="out">'):end] if start >= 0 else "null"
            result = json.loads(raw.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                                .replace("&amp;", "&")) if raw not in ("null", "pending") else None
            if result is None:
                raise AssertionError(f"{page}: the harness read nothing (chromium rc {done.returncode}): "
                                     f"{done.stderr[-500:]}")
            result["origin"] = base
            result["isolation"] = isolation
            results.append(result)
    finally:
        server.shutdown()
    return results


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test reads results, not access logs
        pass


def browse(root: Path, pages: list[str]) -> list[dict]:
    """Load each page (a path relative to ``root``) offline; one result dict per page."""
    root = Path(root)
    (root / HARNESS).write_text(HARNESS_HTML)
    try:
        return _browse_isolated(root, pages)
    finally:
        (root / HARNESS).unlink(missing_ok=True)


def _browse_isolated(root: Path, pages: list[str]) -> list[dict]:
    command = [sys.executable, "-m", "tests.offline_browser", str(root), *pages]
    cwd = Path(__file__).resolve().parents[1]
    isolated = bool(shutil.which("unshare") and shutil.which("ip")) and \
        subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    if isolated:
        script = "ip link set lo up && exec " + shlex.join(command)
        done = subprocess.run(["unshare", "-rn", "sh", "-c", script], cwd=cwd, capture_output=True,
                              text=True, timeout=900, env={**os.environ, "OFFLINE_ISOLATION": "network namespace"})
    else:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "OFFLINE_ISOLATION": "dead proxy"})
    if done.returncode != 0:
        raise AssertionError(f"offline browser failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    # Inside the namespace (browse() sets OFFLINE_ISOLATION) serve and open; by hand, go through browse().
    root, pages = Path(sys.argv[1]).resolve(), sys.argv[2:]
    inside = os.environ.get("OFFLINE_ISOLATION")
    for result in (_serve_and_open(root, pages, inside) if inside else browse(root, pages)):
        print(json.dumps(result))
