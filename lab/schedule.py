"""Learning-rate schedules over a run's local steps.

`lr_at(step, ...)` is the learning rate of local step `step` (0-based):

- ``constant``: `base_lr`.
- ``cosine``: half a cosine from `base_lr` at the end of warm-up down to 0 at `total_steps`.
- ``cosine_pow2``: the cosine rounded to the nearest power of two (2^round(log2 lr)). The
  QSR authors' scheduler does this with local methods (spec §A2, pitfall "observed in code"),
  which makes QSR's sync period piecewise constant.

Every schedule starts with `warmup_steps` of linear warm-up from base_lr/warmup_steps to base_lr.
`TrainContext.local_step` applies the configured schedule to the optimizer before every step of
the step-budgeted techniques (DDP, Local SGD, QSR, DiLoCo, Streaming DiLoCo, DIMAT).
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "cosine_pow2")


def lr_at(step: int, *, base_lr: float, schedule: str = "constant", total_steps: int = 1,
          warmup_steps: int = 0) -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule={schedule!r} is unknown; allowed: {list(SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
    if schedule == "cosine_pow2" and lr > 0:
        lr = 2.0 ** round(math.log2(lr))
    return lr
