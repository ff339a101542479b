"""Declared config knobs: one place for a field's default, help, bounds, choices and when it is read.

A `Knob` is one field of `lab.config.ExperimentConfig`. The common knobs live in
`lab/config.py`; a technique declares its own in its class (`Technique.knobs`),
so adding a technique with new settings touches only its module. From the Knob
come the validation (`Knob.check`: type, finiteness, bounds, choices), the CLI
option and help text, and the widget's control and its min/max.

`read_when(config) -> bool` marks a knob that is only read under a condition
(e.g. `dirichlet_alpha` only with `partition='dirichlet'`); `why` says the
condition in words for the refusal message.

`probe` and `probe_with` serve the contract tests (tests/test_contracts.py), which
move every knob off its default in a tiny run and demand that the bytes or the
metrics change: `probe_values(current)` gives the values they try (`probe` first,
then other choices, or nearby values inside the bounds), and `probe_with` the
other settings under which the knob is read and has an effect (e.g.
`error_feedback` with `compressor='topk'`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
    #: a valid non-default value whose effect shows in a tiny run (tried first by the contract tests)
    probe: Any = None
    #: other config settings under which the knob is read and matters, e.g. {"compressor": "topk"}
    probe_with: dict = field(default_factory=dict, hash=False)

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

    def probe_values(self, current) -> list:
        """Valid values other than `current` to move the knob to, most telling first: `probe`, then the
        other choices (or the other bool), or for numbers 0 -> 1, 0.5, 0.1 and otherwise twice, half and
        one step either side of `current`, kept inside the bounds."""
        if self.choices is not None:
            out = [c for c in self.choices if c != current]
        elif self.type is bool:
            out = [not current]
        elif self.type is str:
            out = []
        elif self.type is int:
            out = [1, 2, 4] if current == 0 else [current * 2, current // 2, current + 1, current - 1]
        else:
            out = [0.5, 0.1, 1.0, 2.0] if current == 0 else [current * 2, current / 2, current * 1.5,
                                                             current * 0.9]
        if self.probe is not None:
            out = [self.probe] + [v for v in out if v != self.probe]
        keep = []
        for v in out:
            try:
                v = self.check("probe", v)
            except ValueError:
                continue
            if v != current and v not in keep:
                keep.append(v)
        return keep

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
