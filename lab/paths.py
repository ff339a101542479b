"""Where the lab's files are, whatever the working directory (a notebook's kernel runs in notebooks/, papermill
in the caller's directory, Voila in the notebook's).

`repo_root()` is the checkout that holds this `lab` package (the directory with its pyproject.toml), or None
for an installed copy; `resolve(path)` makes a relative path absolute against it (else the working
directory). The runs store defaults to `<repo>/runs` ($COMMLAB_RUNS_DIR overrides).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def repo_root() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    project = here / "pyproject.toml"
    if project.exists() and 'name = "commlab"' in project.read_text():
        return here
    return None


def resolve(path: str | os.PathLike) -> Path:
    """`path` if absolute, else relative to the repository root (or the working directory outside a checkout)."""
    p = Path(path)
    if p.is_absolute():
        return p
    root = repo_root()
    return (root / p) if root is not None else p.resolve()


def runs_dir() -> Path:
    """The runs store: $COMMLAB_RUNS_DIR, else `runs/` at the repository root (or in the working directory)."""
    env = os.environ.get("COMMLAB_RUNS_DIR")
    return Path(env) if env else resolve("runs")
