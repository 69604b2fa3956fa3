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
templates_path = ["_templates"]  # autosummary/class.rst: a class page documents its own members
autodoc_typehints = "description"
# types only for what the docstring documents: an NNX layer's class signature is its
# metaclass's (*args, **kwargs) -> Any, which would add "args (Any)" and "Return type: Any"
autodoc_typehints_description_target = "documented"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Flax NNX layers are built through their metaclass's __call__(*args, **kwargs): have autodoc
# show the __init__ signature instead, as it does for enum.EnumType (a private table of
# Sphinx's autodoc; if it moves, class pages show (*args, **kwargs) again, nothing breaks).
try:
    from sphinx.ext.autodoc._dynamic import _signatures as _autodoc_signatures

    _autodoc_signatures._METACLASS_CALL_BLACKLIST = (
        _autodoc_signatures._METACLASS_CALL_BLACKLIST
        | {"flax.nnx.pytreelib.PytreeMeta.__call__", "flax.nnx.object.ObjectMeta.__call__"})
except (ImportError, AttributeError):
    pass

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

# the copy button leaves out doctest prompts and output (the "Coming from" examples)
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# sphinx-gallery's reset_argv is a function, which Sphinx cannot pickle into its environment
# cache: it only means a config change to it is not detected between incremental builds.
suppress_warnings = ["config.cache"]

html_theme = "sphinx_book_theme"
html_title = "tensorfact"
html_theme_options = {
    # the left sidebar lists the API pages only under the open branch: rendering the whole
    # tree of ~200 generated pages into every page was half the build's writing time
    "collapse_navbar": True,
}
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# -- Math: MathJax 3, from a local copy when there is one ------------------------------------
# ``python docs/get_mathjax.py`` puts MathJax in _static/mathjax (git-ignored) so the site
# renders its math offline (the screenshot check runs with no internet); without it, Sphinx's
# default CDN copy of MathJax 3 is used.
if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_static", "mathjax",
                               "tex-chtml.js")):
    mathjax_path = "mathjax/tex-chtml.js"


# -- API reference hooks ---------------------------------------------------------------------
def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple's fields are documented by its docstring's ``Attributes:`` section (napoleon);
    autodoc's own entries for them ("Alias for field number 0") would describe them twice."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def _reexported_data_doc(app, what, name, obj, options, lines):
    """A constant re-exported by a package (``tensorfact.nn.ADAPTER_KINDS``) has its ``#:``
    comment in the private module that defines it, where autodoc does not look: find it there
    instead of showing the docstring of ``dict`` or ``int``."""
    if what != "data":
        return
    from sphinx.pycode import ModuleAnalyzer

    package = name.rpartition(".")[0]
    for modname, module in sorted(sys.modules.items()):
        if not modname.startswith(package + "._") or module is None:
            continue
        for attr, value in vars(module).items():
            if value is obj and not attr.startswith("_"):
                try:
                    docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
                except Exception:  # noqa: BLE001 - no source: keep looking
                    continue
                if ("", attr) in docs:
                    lines[:] = list(docs[("", attr)])
                    return


def _short_type_names(app, doctree):
    """Type hints in the parameter lists come out as ``~tensorfact.tensors._cp.CPTensor``
    (autodoc's "smart" format, whose ``~`` the typed fields leave as text): show the last
    component, ``CPTensor``, as a signature would."""
    import re

    from docutils import nodes

    for body in doctree.findall(nodes.field_body):
        for text in list(body.findall(nodes.Text)):
            if "~" in text:
                text.parent.replace(text, nodes.Text(re.sub(r"~(?:\w+\.)*(\w+)", r"\1",
                                                            str(text))))


def setup(app):
    app.connect("doctree-read", _short_type_names)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("autodoc-process-docstring", _reexported_data_doc)
