"""Puts a local copy of MathJax 3 in ``docs/_static/mathjax/`` (git-ignored), so that the built
site renders its math with no internet access (``docs/screenshots.py`` needs it; so does reading
the site offline). Without it the build points at MathJax on a CDN, Sphinx's default.

Run: ``python docs/get_mathjax.py`` (needs ``npm``; fetches the ``mathjax@3`` package from the
npm registry once, ~1 s, and copies the ~10 MB that ``tex-chtml.js`` loads).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

VERSION = "3"
#: What tex-chtml.js loads: the combined component, the TeX extensions it autoloads, the CHTML
#: fonts, the menu, the assistive MathML and the speech rules the menu can turn on.
KEEP = ["tex-chtml.js", "input", "output", "a11y", "ui", "adaptors", "sre"]

DEST = pathlib.Path(__file__).resolve().parent / "_static" / "mathjax"


def main() -> int:
    if (DEST / "tex-chtml.js").exists():
        print(f"MathJax already in {DEST}")
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print("npm not found: the site will load MathJax from its CDN", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", tmp,
                        f"mathjax@{VERSION}"], check=True)
        es5 = pathlib.Path(tmp) / "node_modules" / "mathjax" / "es5"
        DEST.mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            src = es5 / name
            if src.is_dir():
                shutil.copytree(src, DEST / name, dirs_exist_ok=True)
            else:
                shutil.copy2(src, DEST / name)
    print(f"MathJax {VERSION} copied to {DEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
