"""Validation of the compression family's config fields (compressors, error feedback, the shared-seed
zeroth-order methods, LoRA-based tuning); `ExperimentConfig.__post_init__` calls `check(config, bad)`.

`bad(name, value, allowed)` raises the ValueError every config error uses (field, value, what is allowed).
"""
from __future__ import annotations

from lab.compress import NO_FEEDBACK

#: where the `compressor` field applies
COMPRESSED_TECHNIQUES = ("ddp", "local_sgd", "fedavg")


def check(c, bad) -> None:
    if c.compressor in NO_FEEDBACK and c.error_feedback != "none":
        bad("error_feedback", c.error_feedback, f"'none' with compressor={c.compressor!r} (the majority vote is "
            "not an estimate of the vector, so there is nothing to feed back)")
    if c.compressor == "powersgd" and c.technique == "fedavg":
        bad("compressor", c.compressor, "a compressor whose messages a server decodes one by one for "
            "technique='fedavg' (PowerSGD needs all-reduces among the workers)")
    if c.compressor == "3sfc" and c.dataset != "digits":
        bad("dataset", c.dataset, "'digits' for compressor='3sfc' (it fits a synthetic input and soft label, so "
            "it needs a classifier with continuous inputs)")
    if not 0 <= c.econtrol_eta <= 1:
        bad("econtrol_eta", c.econtrol_eta, "a number in [0, 1]")
    for name in ("zo_seeds", "zo_samples", "ferret_seeds", "fzoos_features", "fzoos_candidates", "lora_rank"):
        if getattr(c, name) < 1:
            bad(name, getattr(c, name), "an integer >= 1")
    for name in ("zo_eps", "ferret_server_lr", "lora_alpha", "dp_clip", "dp_noise"):
        if getattr(c, name) <= 0:
            bad(name, getattr(c, name), "a number > 0")
    if not 0 < c.dp_delta < 1:
        bad("dp_delta", c.dp_delta, "a number in (0, 1)")
    for name in ("cellm_up_density", "cellm_down_density"):
        if not 0 < getattr(c, name) <= 1:
            bad(name, getattr(c, name), "a fraction in (0, 1]")
