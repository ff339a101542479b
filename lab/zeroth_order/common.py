"""What the shared-seed zeroth-order methods share: seeded directions, two-point (SPSA) estimates, batch losses.

A direction is `torch.randn(d)` from a `torch.Generator` seeded by an integer
both ends know (spec §0.3: never the global RNG, so any extra draw cannot
desynchronize a receiver that replays it). A two-point estimate of the
directional derivative along z at θ is

    g = (L(θ + εz) − L(θ − εz)) / (2ε)

(MeZO/SPSA); θ − lr·g·z is then an SGD step whose gradient estimate is
described entirely by (seed, g): that is what these methods send.
"""
from __future__ import annotations

import torch
from torch.func import vmap

from lab.knobs import Knob

#: candidate seeds are drawn below this bound (fits an int32 on any wire)
SEED_BOUND = 2 ** 31 - 1


def candidate_seeds(num: int, *, seed: int) -> torch.Tensor:
    """`num` distinct seeds (int64) below the prime SEED_BOUND, the same for everyone with the same config
    seed: (a + k·m) mod p is a bijection of k < p for m not a multiple of p."""
    g = torch.Generator().manual_seed(seed * 7_919 + 4_242)
    a, m = torch.randint(0, SEED_BOUND, (2,), generator=g).tolist()
    return (a + torch.arange(num, dtype=torch.int64) * (m or 1)) % SEED_BOUND


def direction(seed: int, d: int) -> torch.Tensor:
    """z ~ N(0, I_d) from `seed` (d,)."""
    return torch.randn(d, generator=torch.Generator().manual_seed(int(seed)))


def directions(seeds, d: int) -> torch.Tensor:
    """One direction per seed: (len(seeds), d)."""
    return torch.stack([direction(int(s), d) for s in seeds]) if len(seeds) else torch.zeros(0, d)


def row_losses(ctx, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss of each row's model (n, d) on its own batch x (n, B, ...), y (n, B, ...) -> (n,)."""
    with torch.no_grad():
        out = ctx.cluster.forward(x, params)
        return vmap(ctx.spec.loss_fn)(out, y)


def spsa(ctx, params: torch.Tensor, z: torch.Tensor, x, y, *, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-point estimates along z (n, d) at params (n, d) on batches (x, y): (g (n,), mean loss (n,))."""
    plus = row_losses(ctx, params + eps * z, x, y)
    minus = row_losses(ctx, params - eps * z, x, y)
    return (plus - minus) / (2 * eps), (plus + minus) / 2

#: knobs the shared-seed zeroth-order techniques share
ZO_KNOBS = {
    "zo_eps": Knob(1e-3, "perturbation size eps of the two-point estimate", low=0.0, low_open=True, high=1e3),
}
