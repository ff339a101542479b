"""A Rényi-DP accountant for the Gaussian mechanism, with or without Poisson subsampling, composed over releases.

One release adds N(0, σ²C²) to a sum whose sensitivity is C (noise multiplier σ).
Its Rényi DP at order α, for add/remove neighbours:

- **no subsampling** (q = 1): ε_α = α / (2σ²), for every real α > 1;
- **Poisson subsampling** at rate q (each unit enters the sum independently with
  probability q, and nobody who sees the release knows who did): the exact
  integer-α formula of Mironov, Talwar, Zhang 2019 ("Rényi Differential Privacy
  of the Sampled Gaussian Mechanism", §3.3),

      ε_α = 1/(α−1) · log Σ_{k=0}^{α} C(α, k) (1−q)^{α−k} q^k exp((k² − k) / (2σ²)),

  evaluated only at integer orders (the fractional-order series is not implemented).

RDP composes additively over T releases. (ε, δ)-DP follows from the conversion
of Balle, Barthe, Gaboardi, Hsu, Sato 2020 (Thm. 21; also Canonne, Kamath,
Steinke 2020), the one Opacus and Google's `dp_accounting` use:

    ε = min_α  T·ε_α + log((α−1)/α) − (log δ + log α) / (α − 1).

`tests/test_dp_accountant.py` checks this module against values computed with
`dp_accounting` 0.6.0's `RdpAccountant` on the same orders, and against an
independent numerical integration of the sampled Gaussian's Rényi divergence.

**Which threat model a number holds for** is the caller's choice and must be
stated with it (`THREAT_MODELS`): amplification by subsampling (q < 1) holds
only when the party the guarantee is against does not learn who was sampled
and the sample is truly Poisson — an honest server adding the noise itself
(central DP). When clients add their own noise and the server picks the sample,
the server sees each noisy update with its sender: local DP, q = 1 per release.
"""
from __future__ import annotations

import math

#: orders α: 1.1, 1.2, …, 10.9 (fractional ones used only without subsampling), then the integers 11 … 256
ORDERS = tuple(sorted({round(1 + x / 10, 1) for x in range(1, 100)} | set(range(11, 257))))

THREAT_MODELS = {
    "local": "local DP: each client clips and noises its own update; the guarantee holds against the server "
             "and everyone else; no amplification by sampling (the server knows who it sampled), composed over "
             "the rounds a client took part in",
    "central": "central DP with an honest server: clients send clipped updates, the server adds the noise to "
               "their sum; amplification by Poisson client sampling at rate q; the guarantee holds against "
               "everyone who sees the models, not against the server",
}


def rdp_gaussian(sigma: float, alpha: float) -> float:
    """RDP ε_α of one release of the Gaussian mechanism (sensitivity 1, noise std σ), any real α > 1."""
    _check_sigma(sigma)
    return alpha / (2 * sigma ** 2)


def rdp_sampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP ε_α of one release of the Poisson-subsampled Gaussian mechanism at an integer order α ≥ 2."""
    if not (isinstance(q, (int, float)) and 0 < q <= 1):
        raise ValueError(f"q={q!r} is invalid: expected a sampling rate in (0, 1]")
    _check_sigma(sigma)
    if q == 1:
        return rdp_gaussian(sigma, alpha)
    if alpha != int(alpha) or alpha < 2:
        raise ValueError(f"alpha={alpha!r} is invalid: expected an integer >= 2 (the exact formula needs one)")
    alpha = int(alpha)
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
             + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma ** 2)
             for k in range(alpha + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def rdp_to_dp(rdp: float, alpha: float, delta: float) -> float:
    """ε of (ε, δ)-DP implied by RDP `rdp` at order α (Balle et al. 2020, Thm. 21)."""
    return rdp + math.log((alpha - 1) / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)


def epsilon(*, q: float, sigma: float, steps: int, delta: float, orders=ORDERS) -> tuple[float, float]:
    """(ε, the best order α) of `steps` releases of the Gaussian mechanism with noise multiplier σ,
    Poisson-subsampled at rate q (q = 1: no subsampling), for the given δ. Orders that are not integers
    are skipped when q < 1."""
    if not 0 < delta < 1:
        raise ValueError(f"dp_delta={delta!r} is invalid: expected a number in (0, 1)")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps={steps!r} is invalid: expected an integer >= 0")
    usable = [a for a in orders if a > 1 and (q == 1 or float(a).is_integer())]
    if not usable:
        raise ValueError(f"orders={orders!r} is invalid: expected orders > 1 (integers when q < 1)")
    if steps == 0:
        return 0.0, usable[0]
    eps, order = min((rdp_to_dp(steps * rdp_sampled_gaussian(q, sigma, a), a, delta), a) for a in usable)
    return max(eps, 0.0), order


def _check_sigma(sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"dp_noise={sigma!r} is invalid: expected a noise multiplier > 0")
