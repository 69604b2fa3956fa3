"""Screenshots of the built site in headless Chromium, to look at what a reader sees: the API
page of ``tensorfact.cp`` (math), a "Coming from" page (wide tables) and the benchmarks page.

Usage (after ``python docs/get_mathjax.py`` and the Sphinx build, so that the math renders
with no internet access)::

    python docs/screenshots.py [--html docs/_build/html] [--out docs/_screenshots]

Needs Chromium (Debian: ``apt-get install -y chromium``). The PNGs go to a git-ignored folder.
The pages are served from a local HTTP server (file:// URLs would block MathJax's font loads in
some Chromium builds); Chromium runs with networking features off, so nothing leaves the
machine.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

DOCS = pathlib.Path(__file__).resolve().parent

#: (PNG name, page path in the built site, window height in pixels)
PAGES = [
    ("api_cp", "api/generated/tensorfact.cp.html", 2000),
    ("coming_from_peft", "coming_from/peft.html", 2600),
    ("coming_from_tensorly", "coming_from/tensorly.html", 2600),
    ("benchmarks", "benchmarks.html", 2000),
    ("guide_kernels", "guides/kernels.html", 3000),
    ("guide_quickstart", "guides/quickstart.html", 3000),
    ("gallery_pissa_vs_lora", "gallery/pissa_vs_lora.html", 2600),
    ("api_kernels", "api/kernels.html", 1600),
]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=8000"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("Chromium not found: apt-get install -y chromium")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=pathlib.Path, default=DOCS / "_build" / "html")
    parser.add_argument("--out", type=pathlib.Path, default=DOCS / "_screenshots")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        raise SystemExit(f"no built site in {args.html}: run sphinx-build first")
    if not (args.html / "_static" / "mathjax" / "tex-chtml.js").exists():
        print("warning: no local MathJax in the build (python docs/get_mathjax.py, then "
              "rebuild): math will not render offline", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(args.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chromium = _chromium()
    try:
        for name, page, height in PAGES:
            png = args.out / f"{name}.png"
            url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}",
                                f"--screenshot={png}", f"--window-size={args.width},{height}",
                                url], check=True, capture_output=True, timeout=120)
            print(png)
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
