"""A Rényi-DP accountant for the (Poisson-)subsampled Gaussian mechanism, composed over rounds.

For noise multiplier σ (noise std σ·C for sensitivity C) and sampling rate q,
the RDP of one release at integer order α ≥ 2 is (Mironov, Talwar, Zhang 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism", the integer-α
bound):

    ε_α = 1/(α−1) · log Σ_{k=0}^{α} C(α, k) (1−q)^{α−k} q^k exp((k² − k) / (2σ²))

(for q = 1 this is α / (2σ²)). RDP composes additively over T releases, and
(ε, δ)-DP follows as ε = min_α T·ε_α + log(1/δ) / (α − 1) (Mironov 2017).
"""
from __future__ import annotations

import math

ORDERS = tuple(range(2, 257))


def rdp_sampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP ε_α of one release of the q-subsampled Gaussian mechanism with noise multiplier σ."""
    if not 0 < q <= 1:
        raise ValueError(f"q={q!r} is invalid: expected a sampling rate in (0, 1]")
    if sigma <= 0:
        raise ValueError(f"sigma={sigma!r} is invalid: expected a noise multiplier > 0")
    if q == 1:
        return alpha / (2 * sigma ** 2)
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
             + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma ** 2)
             for k in range(alpha + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def epsilon(*, q: float, sigma: float, steps: int, delta: float, orders=ORDERS) -> tuple[float, int]:
    """(ε, the best order α) of `steps` releases at (q, σ), for the given δ."""
    if not 0 < delta < 1:
        raise ValueError(f"dp_delta={delta!r} is invalid: expected a number in (0, 1)")
    if steps == 0:
        return 0.0, orders[0]
    best = min((steps * rdp_sampled_gaussian(q, sigma, a) + math.log(1 / delta) / (a - 1), a) for a in orders)
    return best
