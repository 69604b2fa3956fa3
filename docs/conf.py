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

# -- API reference ---------------------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- Gallery: the examples, run in --small mode ----------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "gallery",
    "reset_argv": lambda gallery_conf, script_vars: ["--small"],
}

html_theme = "sphinx_book_theme"
html_title = "tensorfact"
