"""Every notebook's source is notebooks/<name>.py (jupytext percent format); its committed .ipynb must be what
`make notebooks` generates from it: the same cells, sources and tags (ids, outputs and other metadata aside)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))  # every .py there is a notebook's source
KERNELSPEC = {"name": "commlab", "display_name": "commlab (Python 3)", "language": "python"}


def cells(nb) -> list[tuple[str, str, tuple]]:
    """(type, source, tags) of every cell: what a reader and papermill see."""
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_every_notebook_has_a_source_and_every_source_a_notebook():
    assert SOURCES, "no notebooks/*.py sources"
    assert {p.stem for p in SOURCES} == {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert not list(NOTEBOOKS.glob("build_*.py")), "notebooks are sources, not built by scripts"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_generated_from_its_source(source):
    text = jupytext.read(source, fmt="py:percent")
    stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert cells(stored) == cells(text), f"{source.name} and its .ipynb differ: run `make notebooks`"
    assert stored.metadata.kernelspec == KERNELSPEC == dict(text.metadata.get("kernelspec", {})), source.name


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_stored_without_outputs(source):
    stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{source.stem}.ipynb has outputs"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_source_is_percent_format_with_a_parameters_cell(source):
    lines = source.read_text().splitlines()
    assert '# %% tags=["parameters"]' in lines, f"{source.name}: the first code cell is tagged parameters"
    nb = jupytext.read(source, fmt="py:percent")
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.metadata.get("tags") == ["parameters"] and "metrics_path" in first.source, source.name


def test_an_edit_to_a_source_is_a_difference():
    source = SOURCES[0]
    stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    edited = jupytext.reads(source.read_text().replace('tags=["parameters"]', "", 1), fmt="py:percent")
    assert cells(edited) != cells(stored)  # the parameters tag is compared, not just the code
    edited = jupytext.reads(source.read_text() + "\n# %%\nprint('one more cell')\n", fmt="py:percent")
    assert cells(edited) != cells(stored)
