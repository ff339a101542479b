"""Declared config knobs: one place for a field's default, help, bounds, choices and when it is read.

A `Knob` is one field of `lab.config.ExperimentConfig`. The common knobs live in
`lab/config.py`; a technique declares its own in its class (`Technique.knobs`),
so adding a technique with new settings touches only its module. From the Knob
come the validation (`Knob.check`: type, finiteness, bounds, choices), the CLI
option and help text, and the widget's control and its min/max.

`read_when(config) -> bool` marks a knob that is only read under a condition
(e.g. `dirichlet_alpha` only with `partition='dirichlet'`); `why` says the
condition in words for the refusal message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


def bad(name: str, value, allowed: str):
    """The ValueError every config error raises: the field, the value and what is allowed."""
    raise ValueError(f"{name}={value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class Knob:
    default: Any
    help: str
    choices: tuple | None = None
    #: inclusive bounds unless the matching *_open flag is set; numeric knobs always have both
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: extra values allowed outside the bounds (e.g. 0 meaning "off" or "all")
    special: tuple = ()
    read_when: Callable[[Any], bool] | None = None
    why: str = ""  # the condition of `read_when`, in words
    #: how the widget shows a float: 'linear' or 'log' (a slider over decades)
    scale: str = "linear"

    def __post_init__(self):
        assert type(self.default) in (int, float, str, bool), f"knob default {self.default!r} has no config type"
        if self.type in (int, float) and self.choices is None:
            assert self.low is not None and self.high is not None, f"numeric knob {self.help!r} needs both bounds"

    @property
    def type(self) -> type:
        return type(self.default)

    def allowed(self) -> str:
        """What the knob accepts, in words: 'one of [...]', 'an integer in [1, 1024]', 'a number in (0, 1]'."""
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        if self.type is bool:
            return "True or False"
        if self.type is str:
            return "a string"
        kind = "an integer" if self.type is int else "a finite number"
        lo, hi = ("(" if self.low_open else "["), (")" if self.high_open else "]")
        text = f"{kind} in {lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"
        if self.special:
            text += " or " + " or ".join(map(repr, self.special))
        return text

    def check(self, name: str, value):
        """The value coerced to the knob's type (ints to float for float knobs); ValueError if not allowed."""
        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                bad(name, value, "True or False")
            return value
        if t is str:
            if not isinstance(value, str):
                bad(name, value, self.allowed())
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, value, self.allowed())
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(name, value, self.allowed())
            try:
                value = float(value)
            except OverflowError:
                bad(name, value, self.allowed())
            if not math.isfinite(value):
                bad(name, value, self.allowed())
        if self.choices is not None:
            if value not in self.choices:
                bad(name, value, self.allowed())
            return value
        if t in (int, float) and value not in self.special:
            low_ok = value > self.low if self.low_open else value >= self.low
            high_ok = value < self.high if self.high_open else value <= self.high
            if not (low_ok and high_ok):
                bad(name, value, self.allowed())
        return value


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def merged(classes, attr: str) -> dict | tuple:
    """`attr` (a dict or tuple class attribute) merged over classes, base classes first."""
    out: dict | list
    if all(isinstance(getattr(c, attr, ()), dict) for c in classes):
        out = {}
        for c in classes:
            out.update(c.__dict__.get(attr, {}))
        return out
    seen: list = []
    for c in classes:
        for x in c.__dict__.get(attr, ()):
            if x not in seen:
                seen.append(x)
    return tuple(seen)
