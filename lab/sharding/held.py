"""What a ZeRO run really holds: set up a tiny run, take one step, read each rank's tensors by category.

The measured side of the memory model (`lab.sharding.memory` predicts; `held_memory` measures the same
categories on the lab's models, `ZeRO.memory`). It runs an experiment, so it lives apart from the pure
model (`lab.fidelity` imports it lazily, inside the ZeRO check, never at module level).
"""
from __future__ import annotations

from lab.experiment import build_context
from lab.registry import technique as technique_class
from lab.sharding.options import degree, reads_sharding


def held_memory(config) -> tuple[dict[str, int], int]:
    """Set up `config` (technique 'zero', or a sync technique sharded inside its replicas: lab.sync.sharded),
    take one step, and return what each rank holds by category (`.memory`; composed runs add 'sync', the
    technique's sync state on its shard) and the model's parameter count."""
    if not (reads_sharding(config) and (config.technique == "zero" or degree(config) > 1)):
        raise ValueError(f"technique={config.technique!r} is invalid here: held_memory measures 'zero' or a "
                         "technique with sharding_degree > 1")
    ctx, _ = build_context(config.replace(steps=1))
    technique = technique_class(config.technique)(config)
    technique.setup(ctx)
    technique.round(ctx)
    return technique.memory, ctx.cluster.dim
