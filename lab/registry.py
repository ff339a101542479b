"""The one list of techniques, filled from the family packages.

Each family package (`lab/sync`, `lab/sharding`, `lab/zeroth_order`, `lab/lora`,
...) lists its Technique classes in `TECHNIQUES`; `techniques()` collects them
by name. Validation, the CLI, the widgets, chart labels and the contract tests
all read this registry, so a new technique is one module plus one line in its
family's `TECHNIQUES`.
"""
from __future__ import annotations

import importlib
from functools import cache

#: the family packages, in the order the CLI and widgets list their techniques
FAMILIES = ("lab.sync", "lab.sharding", "lab.zeroth_order", "lab.lora", "lab.moe", "lab.sequence")


@cache
def _collect() -> tuple:
    out = {}
    for family in FAMILIES:
        for cls in importlib.import_module(family).TECHNIQUES:
            assert cls.name and cls.name not in out, f"technique name {cls.name!r} missing or registered twice"
            assert cls.budget in ("steps", "rounds"), f"{cls.name}: budget {cls.budget!r}"
            out[cls.name] = cls
    return tuple(out.items())


def techniques() -> dict:
    """{name: Technique class} over every family, in FAMILIES order."""
    return dict(_collect())


def technique(name: str):
    """The Technique class called `name`; ValueError naming the known ones otherwise."""
    reg = techniques()
    if name not in reg:
        raise ValueError(f"technique={name!r} is invalid: expected one of {list(reg)}")
    return reg[name]


def readers(field: str) -> list[str]:
    """Names of the techniques that read config field `field`."""
    return [n for n, cls in techniques().items() if field in cls.read_fields()]
