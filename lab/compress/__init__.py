"""Compressors, error feedback and the compressed channel. Choose by name with `make_compressor` /
`make_feedback` / `make_channel`; every compressor is declared once in `lab.compress.registry`.

    ratio knob -> each compressor's own parameter (`knob` says how; `describe(d)` shows it):
    none        -                       fp16, bf16   fixed 2 bytes/value
    int8, int4  fixed bits + block scale  fp4        fixed 4-bit E3M0 + block scale
    topk        k (values + indices or bitmap)  randk   k (+ an 8-byte seed)
    qsgd        levels s from bits b ≈ 32 r     sign    fixed 1 bit + scale
    majority_vote  fixed 1 bit          powersgd    rank per matrix
    fedzip      kept fraction z (fitted)  3sfc       synthetic samples n_s

Ratios are measured, never nominal: `payload_ratio` (one message's encoded over dense fp32 bytes) and
`traffic_ratio` (what the busiest rank sent over the dense exchange's bytes), see `lab.compress.channel`.
"""
from __future__ import annotations

import torch

from lab.compress.base import Compressor, Identity
from lab.compress.cast import HalfPrecision
from lab.compress.channel import Channel
from lab.compress.error_feedback import EF21, FEEDBACK, EControl, ErrorFeedback, NoFeedback
from lab.compress.fedzip import FedZip
from lab.compress.fp4 import FP4E3M0
from lab.compress.powersgd import PowerSGD
from lab.compress.qsgd import QSGD
from lab.compress.quantize import IntQuantizer
from lab.compress.randk import RandK
from lab.compress.registry import COMPRESSORS, NO_FEEDBACK, SCOPES, spec
from lab.compress.sign import MajorityVote, ScaledSign
from lab.compress.threesfc import ThreeSFC
from lab.compress.topk import TopK


def make_compressor(name: str, *, ratio: float = 1.0, shapes=None, dim: int | None = None, seed: int = 0,
                    model: torch.nn.Module | None = None, unflatten=None, input_dim: int | None = None,
                    num_classes: int | None = None, scaled: bool = True, scope: str = "global") -> Compressor:
    """A compressor by name (`lab.compress.registry`) with its parameter mapped from `ratio` (a payload ratio).

    shapes: the parameter shapes of the flat vector (PowerSGD's matrices, FedZip's
    layers); dim: its length (FedZip's probe, 3SFC's sample count); model,
    unflatten, input_dim, num_classes: what 3SFC decodes through; scaled:
    random-k's d/k scaling (unbiased) or not (contractive, for error feedback);
    scope: 'layer' (per parameter tensor of `shapes`) or 'global', for top-k, scaled sign and QSGD.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"compression_ratio={ratio!r} is invalid: it must be in (0, 1]")
    if shapes is not None and dim is None:
        dim = sum(int(torch.Size(s).numel()) for s in shapes)
    if scope not in SCOPES:
        raise ValueError(f"compress_scope={scope!r} is invalid: expected one of {list(SCOPES)}")
    comp = spec(name).build(ratio=ratio, shapes=shapes, dim=dim, seed=seed, model=model, unflatten=unflatten,
                            input_dim=input_dim, num_classes=num_classes, scaled=scaled, scope=scope)
    if shapes is not None:
        comp.segments = tuple(int(torch.Size(s).numel()) for s in shapes)
    return comp


def make_feedback(name: str, compressor: Compressor, *, eta: float = 0.0):
    """The error-feedback wrapper `name` around `compressor`; `eta` is EControl's η as the config's
    `econtrol_eta` reads: 0 picks the compressor's contraction δ (k/d for top-k) at the vector's d."""
    if name not in FEEDBACK:
        raise ValueError(f"error_feedback={name!r} is unknown; allowed: {sorted(FEEDBACK)}")
    if compressor.name in NO_FEEDBACK and name != "none":
        raise ValueError(f"error_feedback={name!r} is invalid with compressor={compressor.name!r}: "
                         f"expected 'none' (the vote is not an estimate of the vector)")
    if name == "econtrol":
        return EControl(compressor, eta=eta or None)
    return FEEDBACK[name](compressor)


def make_channel(config, ctx) -> Channel:
    """The compressed channel a technique uses, from `config.compressor`, `compression_ratio`,
    `error_feedback`, `econtrol_eta` and `compress_scope`, fitted to the context's model; `compression_ratio`
    is the target traffic ratio (`lab.compress.channel`). Random-k is sent scaled by d/k (unbiased) without
    error feedback and unscaled (contractive, δ = k/d) inside it (spec §B1)."""
    channel = build_channel(config.compressor, target=config.compression_ratio, scope=config.compress_scope,
                            error_feedback=config.error_feedback, eta=getattr(config, "econtrol_eta", 0.0),
                            seed=config.seed, shapes=ctx.cluster.shapes, **decoder_of(config, ctx))
    if config.compressor == "powersgd":  # exchanges all-reduced uncompressed first (torch's start_powerSGD_iter)
        channel.compressor.start_iter = getattr(config, "powersgd_start_iter", 0)
    return channel


def decoder_of(config, ctx) -> dict:
    """What 3SFC decodes through (the model, its input and class counts); {} for other compressors."""
    if config.compressor != "3sfc":
        return {}
    cluster, x = ctx.cluster, ctx.batches.x
    if x.dtype not in (torch.float32, torch.float64) or x.dim() != 2:
        raise ValueError(f"compressor='3sfc' needs a model with a continuous flat input; dataset="
                         f"{config.dataset!r} has {x.dtype} inputs of shape {tuple(x.shape[1:])}")
    with torch.no_grad():
        out = cluster.evaluate(cluster.params.detach()[0], x[:1])
    if out.dim() != 2:
        raise ValueError(f"compressor='3sfc' needs a classifier; model={config.model!r} outputs {tuple(out.shape)}")
    return dict(model=cluster.model, unflatten=cluster.unflatten, input_dim=x.shape[1], num_classes=out.shape[1])


def build_channel(name: str, *, target: float, scope: str, error_feedback: str, eta: float, seed: int, shapes,
                  **extra) -> Channel:
    """A Channel of compressor `name` whose pieces map the traffic `target` (for ratio compressors)."""
    kw = dict(seed=seed, scaled=error_feedback == "none", scope=scope)
    whole = tuple(int(torch.Size(s).numel()) for s in shapes)
    comp = make_compressor(name, ratio=target, shapes=shapes, **kw, **extra)

    def factory(ratio, segments, share):
        """The compressor of a piece (`lab.compress.exchange`): the whole vector, or a chunk of it."""
        r = target if ratio is None else ratio
        if share == 1.0 and tuple(segments) == whole:
            return make_compressor(name, ratio=r, shapes=shapes, **kw, **extra)
        return make_compressor(name, ratio=r, dim=sum(segments), **kw).piece(segments, share)

    return Channel(comp, make_feedback(error_feedback, comp, eta=eta), shapes=shapes, factory=factory,
                   target=target if spec(name).ratio else None)


__all__ = [
    "COMPRESSORS",
    "EF21",
    "QSGD",
    "Channel",
    "Compressor",
    "EControl",
    "ErrorFeedback",
    "FP4E3M0",
    "FedZip",
    "HalfPrecision",
    "Identity",
    "IntQuantizer",
    "MajorityVote",
    "NoFeedback",
    "PowerSGD",
    "RandK",
    "ScaledSign",
    "ThreeSFC",
    "TopK",
    "build_channel",
    "decoder_of",
    "make_channel",
    "make_compressor",
    "make_feedback",
]
