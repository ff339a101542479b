"""The README and docs/ point only inside the repository, and what they name exists.

A link or path that leaves the repository (`../shared/...`) or names a file, module or attribute that is not
there fails here, so the documentation cannot drift silently from the code.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_paths_stay_inside_the_repository_and_exist(doc):
    text = _text(doc)
    assert "../" not in text, f"{doc.name} points outside the repository"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):  # markdown links
        if re.match(r"[a-z]+://", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO) and path.exists(), f"{doc.name}: link to {target} does not resolve"
    for path in re.findall(r"`((?:lab|widgets|tests|bench|notebooks|docs|kernels|binder)/[\w./-]*)`", text):
        assert (REPO / path).exists(), f"{doc.name} names {path}, which does not exist"


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_lab_object_exists(doc):
    names = set(re.findall(r"`((?:lab|widgets)\.[\w.]+)", _text(doc)))
    assert names or doc.name != "architecture.md"
    missing = sorted(n for n in names if not _resolve(n.rstrip(".")))
    assert not missing, f"{doc.name} names objects that do not exist: {missing}"
