"""The documentation site's sources, checked without building it (the build is CI's last step):

* every public name of every public module is on an API reference page, once;
* the "Coming from ..." pages' examples run and print what the page says.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import re
import types

import pytest

import tensorfact

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"

#: The modules whose ``__all__`` the reference covers.
MODULES = ["tensorfact", "tensorfact.nn", "tensorfact.optim", "tensorfact.sharding",
           "tensorfact.kernels", "tensorfact.tubal", "tensorfact.constraints",
           "tensorfact.diagnostics", "tensorfact.algebra", "tensorfact.tensors",
           "tensorfact.metrics", "tensorfact.random", "tensorfact.ranks",
           "tensorfact.decomposition", "tensorfact.interop"]


def _autosummary_entries():
    """(page, fully qualified name) for every entry of every autosummary list of docs/api."""
    entries = []
    for page in sorted((DOCS / "api").glob("*.md")):
        module, in_list = None, False
        for line in page.read_text().splitlines():
            if m := re.match(r"\s*\.\. currentmodule:: (\S+)", line):
                module = m.group(1)
            if re.match(r"\s*\.\. autosummary::", line):
                in_list = True
                continue
            if in_list:
                item = line.strip()
                if line.startswith("```") or (item and not line.startswith("   ")):
                    in_list = False
                elif item and not item.startswith(":"):
                    assert module, f"{page.name}: an autosummary list before any currentmodule"
                    entries.append((page.name, f"{module}.{item}"))
    return entries


ENTRIES = _autosummary_entries()
LISTED = {name for _, name in ENTRIES}


def _resolve(qualified):
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_reference_pages_list_something_from_every_page():
    pages = {page for page, _ in ENTRIES}
    assert {"tensorfact.md", "nn.md", "optim.md", "tubal.md", "kernels.md"} <= pages
    assert len(ENTRIES) > 150


def test_every_listed_name_exists_and_is_listed_once():
    seen = {}
    for page, name in ENTRIES:
        assert name not in seen, f"{name} is listed on {seen[name]} and on {page}"
        seen[name] = page
        _resolve(name)  # raises AttributeError for a name that is not there
    objects = {}
    for page, name in ENTRIES:
        obj = _resolve(name)
        if isinstance(obj, (int, float, str, dict, tuple)):
            continue
        assert id(obj) not in objects, f"{name} ({page}) documents {objects[id(obj)]} again"
        objects[id(obj)] = name


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_is_on_a_reference_page(module_name):
    module = importlib.import_module(module_name)
    page = DOCS / "api" / f"{module_name.rpartition('.')[2]}.md"
    text = page.read_text() if page.exists() else ""
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType) and module_name == "tensorfact":
            # a namespace: its own page, or re-exported whole by the top level
            sub = DOCS / "api" / f"{name}.md"
            reexported = all(getattr(tensorfact, n, None) is getattr(obj, n)
                             for n in obj.__all__)
            if not (sub.exists() or reexported):
                missing.append(name)
            continue
        if f"{module_name}.{name}" in LISTED:
            continue
        if getattr(tensorfact, name, None) is obj and f"tensorfact.{name}" in LISTED:
            continue  # a re-export, documented once under the top level
        if not getattr(obj, "__module__", "tensorfact").startswith("tensorfact") \
                and f"`{name}`" in text:
            continue  # another library's class re-exported for convenience, named on the page
        missing.append(name)
    assert not missing, f"{module_name}.__all__ names missing from docs/api: {missing}"


def _coming_from_examples():
    """The ``{doctest}``-style examples of docs/coming_from: the ```python fences whose lines
    start with ``>>>``."""
    examples = []
    for page in sorted((DOCS / "coming_from").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            if block.lstrip().startswith(">>>"):
                examples.append((page.stem, block))
    return examples


COMING_FROM = _coming_from_examples()


def test_every_coming_from_page_has_an_example():
    pages = {p.stem for p in (DOCS / "coming_from").glob("*.md")} - {"index"}
    assert pages and pages <= {stem for stem, _ in COMING_FROM}


@pytest.mark.parametrize("stem,block", COMING_FROM,
                         ids=[f"{s}-{i}" for i, (s, _) in enumerate(COMING_FROM)])
def test_the_coming_from_examples_run_as_written(stem, block):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block, {}, f"docs/coming_from/{stem}.md", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{stem}: {result.failed} failed"


def test_the_benchmarks_page_includes_the_results_file():
    page = (DOCS / "benchmarks.md").read_text()
    included = re.search(r"```\{include\} (\S+)", page)
    assert included, "docs/benchmarks.md no longer includes benchmarks/RESULTS.md"
    target = (DOCS / included.group(1)).resolve()
    assert target == DOCS.parent / "benchmarks" / "RESULTS.md" and target.exists()
