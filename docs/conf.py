"""Sphinx configuration of the tensorfact documentation site.

Build: ``pip install -e ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html``
(warnings are errors). Pages are MyST Markdown; guides are executed at build time by MyST-NB;
the API reference comes from the docstrings (autodoc + autosummary, Google-style sections by
napoleon); the gallery runs ``examples/`` with sphinx-gallery in ``--small`` mode.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "tensorfact"
author = "the tensorfact developers"
copyright = "2026, the tensorfact developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "gallery/*.ipynb", "gallery/*.py.md5", "gallery/*.zip",
                    "**.ipynb_checkpoints"]

# -- MyST / MyST-NB: guides are Markdown notebooks executed at build time -------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True  # a failing guide fails the build
nb_execution_show_tb = True  # and the log shows the failing cell's traceback
# the guides' kernels are separate processes started in docs/guides: let them import this
# checkout's tensorfact (a relative PYTHONPATH=. would point into docs/guides there)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.abspath(".."), os.environ.get("PYTHONPATH")) if p)

# -- API reference ---------------------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- Gallery: the examples, run in --small mode ----------------------------------------------
# Which examples run at build time: the ones with a plot or a short table that fit a CI budget
# of about two minutes in --small mode on 2 cores (NOTES_docs-guides.md has the timings). The
# others are listed with their code, unexecuted. char_lm.py is a helper module, not an example.
_GALLERY_EXECUTED = ("choose_rank", "matrix_sensing_overparameterization",
                     "tubal_implicit_regularization", "tubal_image_completion", "train_sharded",
                     "optimizer_memory", "pissa_vs_lora", "compress_finetune",
                     "digits_factorized")
# reset_argv and the scraper live in docs/_gallery_hooks.py and are named by strings: Sphinx
# pickles the config, and neither a lambda nor anything defined in conf.py can be pickled
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "gallery",
    "reset_argv": "_gallery_hooks.reset_argv",  # --small, --out into a scratch folder
    "filename_pattern": "/(" + "|".join(_GALLERY_EXECUTED) + r")\.py$",
    "ignore_pattern": r"(__init__|char_lm)\.py$",
    "image_scrapers": ("matplotlib", "_gallery_hooks.saved_figure_scraper"),
    "within_subsection_order": "ExampleTitleSortKey",
    "min_reported_time": 1,
}

html_theme = "sphinx_book_theme"
html_title = "tensorfact"
