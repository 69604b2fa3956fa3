"""sphinx-gallery hooks for the tensorfact gallery, named by string in ``conf.py``'s
``sphinx_gallery_conf`` (Sphinx pickles its config: functions defined in ``conf.py`` cannot be).

* :func:`reset_argv`: each example runs as ``script.py --small [--no-progress] --out <scratch>``,
  its ``--out`` a fresh folder per example under the system's temporary directory (a file or a
  folder, as the script's own ``--out`` default is), so nothing is written into the repository.
* :func:`saved_figure_scraper`: embeds the PNG files an example saved there (the scripts close
  their figures after ``savefig``, so matplotlib's own scraper sees none).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

GALLERY_OUT = os.path.join(tempfile.gettempdir(), "tensorfact-gallery-out")


def out_dir(src_file) -> str:
    """The scratch folder of the example ``src_file``."""
    return os.path.join(GALLERY_OUT, os.path.splitext(os.path.basename(src_file))[0])


def reset_argv(gallery_conf, script_vars) -> list[str]:
    """The command-line arguments of one example (and a fresh, empty scratch folder for it)."""
    src_file = script_vars["src_file"]
    with open(src_file, encoding="utf-8") as f:
        source = f.read()
    folder = out_dir(src_file)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    argv = ["--small"]
    if '"--no-progress"' in source:
        argv.append("--no-progress")
    default = re.search(r'"--out", default="([^"]*)"', source)
    if default is not None:
        png = default.group(1).endswith(".png")
        argv += ["--out", os.path.join(folder, "figure.png") if png else folder]
    return argv


def saved_figure_scraper(block, block_vars, gallery_conf) -> str:
    """reST for the PNG files the example saved in its scratch folder since the last block."""
    from sphinx_gallery.scrapers import figure_rst

    folder = out_dir(block_vars["src_file"])
    if not os.path.isdir(folder):
        return ""
    seen = block_vars.setdefault("tensorfact_saved_pngs", set())
    images = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".png") and path not in seen:
            seen.add(path)
            target = next(block_vars["image_path_iterator"])
            shutil.copyfile(path, target)
            images.append(target)
    return figure_rst(images, gallery_conf["src_dir"])
