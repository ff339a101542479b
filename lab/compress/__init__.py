"""Compressors, error feedback and packing. Choose by name with `make_compressor` / `make_feedback`.

    ratio knob -> each compressor's own parameter (`knob` says how; `describe(d)` shows it):
    none        -                       fp16, bf16   fixed 2 bytes/value
    int8, int4  fixed bits + block scale  topk        k (values + indices or bitmap)
    randk       k (+ an 8-byte seed)      qsgd        levels s from bits b ≈ 32 r
    sign        fixed 1 bit + scale       majority_vote  fixed 1 bit
    powersgd    rank per matrix           fedzip      kept fraction z (fitted)
    3sfc        synthetic samples n_s

The ratio shown anywhere is measured: packet bytes over dense fp32 bytes.
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
from lab.compress.sign import MajorityVote, ScaledSign
from lab.compress.threesfc import ThreeSFC
from lab.compress.topk import TopK

from lab.compress.registry import COMPRESSORS, NO_FEEDBACK


def make_compressor(name: str, *, ratio: float = 1.0, shapes=None, dim: int | None = None, seed: int = 0,
                    model: torch.nn.Module | None = None, unflatten=None, input_dim: int | None = None,
                    num_classes: int | None = None, scaled: bool = True) -> Compressor:
    """A compressor by name with its parameter mapped from `ratio`.

    shapes: the parameter shapes of the flat vector (PowerSGD's matrices, FedZip's
    layers); dim: its length (FedZip's probe, 3SFC's sample count); model,
    unflatten, input_dim, num_classes: what 3SFC decodes through; scaled:
    random-k's d/k scaling (unbiased) or not (contractive, for error feedback).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"compression_ratio={ratio!r} is invalid: it must be in (0, 1]")
    if shapes is not None and dim is None:
        dim = sum(int(torch.Size(s).numel()) for s in shapes)
    if name == "none":
        return Identity()
    if name in ("fp16", "bf16"):
        return HalfPrecision(name)
    if name in ("int8", "int4"):
        return IntQuantizer(bits=int(name[3:]), seed=seed)
    if name == "fp4":  # E3M0 4-bit float (lab/compress/fp4.py)
        return FP4E3M0()
    if name == "topk":
        return TopK(ratio=ratio)
    if name == "randk":
        return RandK(ratio=ratio, scaled=scaled, seed=seed)
    if name == "qsgd":
        return QSGD(ratio=ratio, seed=seed)
    if name == "sign":
        return ScaledSign()
    if name == "majority_vote":
        return MajorityVote()
    if name == "powersgd":
        return PowerSGD(shapes=shapes, ratio=ratio, seed=seed)
    if name == "fedzip":
        if dim is None:
            raise ValueError("compressor='fedzip' needs dim (or shapes) to fit its kept fraction to the ratio")
        return FedZip.for_ratio(ratio, dim, shapes=shapes, seed=seed)
    if name == "3sfc":
        if model is None or input_dim is None or num_classes is None:
            raise ValueError("compressor='3sfc' needs a classification model with a continuous input "
                             "(model, unflatten, input_dim, num_classes)")
        return ThreeSFC(model=model, unflatten=unflatten, input_dim=input_dim, num_classes=num_classes,
                        ratio=ratio, dim=dim, seed=seed)
    raise ValueError(f"compressor={name!r} is unknown; allowed: {list(COMPRESSORS)}")


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
    `error_feedback` and `econtrol_eta`, fitted to the context's model. Random-k is sent scaled by d/k
    (unbiased) without error feedback and unscaled (contractive, δ = k/d) inside it (spec §B1)."""
    cluster = ctx.cluster
    extra = {}
    if config.compressor == "3sfc":
        x = ctx.batches.x
        if x.dtype not in (torch.float32, torch.float64) or x.dim() != 2:
            raise ValueError(f"compressor='3sfc' needs a model with a continuous flat input; dataset="
                             f"{config.dataset!r} has {x.dtype} inputs of shape {tuple(x.shape[1:])}")
        with torch.no_grad():
            out = cluster.evaluate(cluster.params.detach()[0], x[:1])
        if out.dim() != 2:
            raise ValueError(f"compressor='3sfc' needs a classifier; model={config.model!r} outputs {tuple(out.shape)}")
        extra = dict(model=cluster.model, unflatten=cluster.unflatten, input_dim=x.shape[1], num_classes=out.shape[1])
    comp = make_compressor(config.compressor, ratio=config.compression_ratio, shapes=cluster.shapes, seed=config.seed,
                           scaled=config.error_feedback == "none", **extra)
    return Channel(comp, make_feedback(config.error_feedback, comp, eta=getattr(config, "econtrol_eta", 0.0)))


__all__ = [
    "COMPRESSORS",
    "EF21",
    "QSGD",
    "Channel",
    "Compressor",
    "EControl",
    "ErrorFeedback",
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
    "make_channel",
    "make_compressor",
    "make_feedback",
]
