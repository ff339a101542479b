"""What a ZeRO run really holds: set up a tiny run, take one step, read each rank's tensors by category.

The measured side of the memory model (`lab.sharding.memory` predicts; `held_memory` measures the same
categories on the lab's models, `ZeRO.memory`). It runs an experiment, so it lives apart from the pure
model: nothing in `lab/` imports this module.
"""
from __future__ import annotations

from lab.experiment import build_context
from lab.sharding.zero import ZeRO


def held_memory(config) -> tuple[dict[str, int], int]:
    """Set up `config` (technique 'zero'), take one step, and return what each rank holds by category
    (`ZeRO.memory`) and the model's parameter count."""
    if config.technique != "zero":
        raise ValueError(f"technique={config.technique!r} is invalid here: held_memory measures 'zero'")
    ctx, _ = build_context(config.replace(steps=1))
    technique = ZeRO(config)
    technique.setup(ctx)
    technique.round(ctx)
    return technique.memory, ctx.cluster.dim
