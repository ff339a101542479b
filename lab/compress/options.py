"""Cross-field rules of the compression fields (bounds and choices are the knobs', lab.config);
`ExperimentConfig.__post_init__` calls `check(config, bad)`.

`bad(name, value, allowed)` raises the ValueError every config error uses (field, value, what is allowed).
"""
from __future__ import annotations

from lab.compress import NO_FEEDBACK


def check(c, bad) -> None:
    if c.compressor in NO_FEEDBACK and c.error_feedback != "none":
        bad("error_feedback", c.error_feedback, f"'none' with compressor={c.compressor!r} (the majority vote is "
            "not an estimate of the vector, so there is nothing to feed back)")
    if c.compressor == "3sfc" and c.dataset != "digits":
        bad("dataset", c.dataset, "'digits' for compressor='3sfc' (it fits a synthetic input and soft label, so "
            "it needs a classifier with continuous inputs)")
