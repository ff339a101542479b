"""The one list of compressors: what each is, what it reads of the config and how it crosses ranks.

Every compressor is one `Spec` in `SPECS`, the list `make_compressor`, the
config's validation (`compression_ratio`, `error_feedback`, `compress_scope`,
`compress_algorithm` are read only where the spec says), the widgets and the
contract tests derive from. A new compressor is one module and one line here.

Declarations:
- `ratio`: its size follows the `compression_ratio` knob (else the size is fixed by the name);
- `feedback`: it takes error feedback (majority vote does not: the vote is not an estimate of the vector);
- `summable`: its payloads add up, so it crosses ranks as a dense all-reduce of the encoded tensors
  (fp16/bf16 values, PowerSGD's factors) under the dense all-reduce algorithm;
- `chunked`: a chunk of the vector compresses on its own, so the two-phase and sharded parameter-server
  algorithms apply (`lab.compress.exchange`); the others are all-gathered;
- `sparse`: the payload names coordinates (indices, a bitmap or a seed);
- `unbiased`: E[decode(encode(v))] = v as built without error feedback;
- `scoped`: reads `compress_scope` ('layer': per parameter tensor, as the spec's Part B says; 'global');
- `needs`: what `make_compressor` must be given ('shapes', 'dim', 'model').
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab.compress.base import Identity
from lab.compress.cast import HalfPrecision
from lab.compress.fedzip import FedZip
from lab.compress.fp4 import FP4E3M0
from lab.compress.powersgd import PowerSGD
from lab.compress.qsgd import QSGD
from lab.compress.quantize import IntQuantizer
from lab.compress.randk import RandK
from lab.compress.sign import MajorityVote, ScaledSign
from lab.compress.threesfc import ThreeSFC
from lab.compress.topk import TopK


@dataclass(frozen=True)
class Spec:
    name: str
    #: (keyword arguments of `make_compressor`) -> Compressor
    build: Callable
    help: str
    ratio: bool = False
    feedback: bool = True
    summable: bool = False
    chunked: bool = True
    sparse: bool = False
    unbiased: bool = False
    scoped: bool = False
    needs: tuple = ()


def _3sfc(*, ratio, dim, seed, model, unflatten, input_dim, num_classes, **_):
    if model is None or input_dim is None or num_classes is None:
        raise ValueError("compressor='3sfc' needs a classification model with a continuous input "
                         "(model, unflatten, input_dim, num_classes)")
    return ThreeSFC(model=model, unflatten=unflatten, input_dim=input_dim, num_classes=num_classes, ratio=ratio,
                    dim=dim, seed=seed)


def _fedzip(*, ratio, dim, shapes, seed, **_):
    if dim is None:
        raise ValueError("compressor='fedzip' needs dim (or shapes) to fit its kept fraction to the ratio")
    return FedZip.for_ratio(ratio, dim, shapes=shapes, seed=seed)


SPECS: tuple[Spec, ...] = (
    Spec("none", lambda **kw: Identity(), "no compression: the fp32 vector, all-reduced", summable=True, chunked=False,
         unbiased=True),
    Spec("fp16", lambda **kw: HalfPrecision("fp16"), "fp16 values (2 bytes each), all-reduced", summable=True,
         chunked=False),
    Spec("bf16", lambda **kw: HalfPrecision("bf16"), "bf16 values (2 bytes each), all-reduced", summable=True,
         chunked=False),
    Spec("int8", lambda *, seed, **_: IntQuantizer(bits=8, seed=seed), "8-bit integers + an fp32 scale per 256"),
    Spec("int4", lambda *, seed, **_: IntQuantizer(bits=4, seed=seed), "4-bit integers + an fp32 scale per 256"),
    Spec("fp4", lambda **kw: FP4E3M0(), "4-bit floats E3M0 (sign + 3-bit exponent) + an fp32 scale per 256"),
    Spec("topk", lambda *, ratio, scope, **_: TopK(ratio=ratio, scope=scope),
         "the k largest |values| + their indices or a bitmap", ratio=True, sparse=True, scoped=True),
    Spec("randk", lambda *, ratio, scaled, seed, **_: RandK(ratio=ratio, scaled=scaled, seed=seed),
         "k random values + an 8-byte seed (scaled by d/k without error feedback)", ratio=True, sparse=True,
         unbiased=True),
    Spec("qsgd", lambda *, ratio, seed, scope, **_: QSGD(ratio=ratio, seed=seed, scope=scope),
         "stochastic levels of |v|/||v|| per bucket of 512", ratio=True, unbiased=True, scoped=True),
    Spec("sign", lambda *, scope, **_: ScaledSign(scope=scope), "1 bit per value + the mean |value|",
         scoped=True),
    Spec("majority_vote", lambda **kw: MajorityVote(), "1 bit per value; the sign of the vote", feedback=False),
    Spec("powersgd", lambda *, ratio, shapes, seed, **_: PowerSGD(shapes=shapes, ratio=ratio, seed=seed),
         "rank-r factors P, Q of every matrix, all-reduced", ratio=True, summable=True, chunked=False,
         needs=("shapes",)),
    Spec("fedzip", _fedzip, "top-z, 3-means and an entropy code (data-dependent size)", ratio=True,
         chunked=False, sparse=True, needs=("dim",)),
    Spec("3sfc", _3sfc, "one synthetic sample whose gradient points along the vector", ratio=True,
         chunked=False, needs=("model",)),
)
_BY_NAME = {s.name: s for s in SPECS}
assert len(_BY_NAME) == len(SPECS), "a compressor is registered twice"

COMPRESSORS = tuple(_BY_NAME)
#: compressors whose size follows `compression_ratio`
RATIO_COMPRESSORS = tuple(s.name for s in SPECS if s.ratio)
#: compressors that take no error feedback (config validation refuses any other than 'none')
NO_FEEDBACK = tuple(s.name for s in SPECS if not s.feedback)
#: compressors that read `compress_scope`
SCOPED = tuple(s.name for s in SPECS if s.scoped)
SCOPES = ("layer", "global")


def spec(name: str) -> Spec:
    """The Spec of compressor `name`; ValueError naming the known ones otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"compressor={name!r} is invalid: expected one of {list(COMPRESSORS)}")
    return _BY_NAME[name]


def reads_ratio(name: str) -> bool:
    return spec(name).ratio


def has_algorithms(name: str) -> bool:
    """Whether the compressed all-reduce of `name` has more than one algorithm to choose from."""
    s = spec(name)
    return s.chunked and not s.summable


def describe_setting(config) -> str:
    """How a run's compression reads in a chart label, e.g. 'topk r=0.1 EF', 'int8' or 'int8 all_gather'
    (the scope and the algorithm only when set away from their defaults)."""
    text = config.compressor
    if reads_ratio(config.compressor):
        text += f" r={config.compression_ratio:g}"
    if spec(config.compressor).scoped and getattr(config, "compress_scope", "layer") != "layer":
        text += f" {config.compress_scope}"
    if has_algorithms(config.compressor) and getattr(config, "compress_algorithm", "auto") != "auto":
        text += f" {config.compress_algorithm}"
    if config.compressor not in NO_FEEDBACK and config.error_feedback != "none":
        text += f" {config.error_feedback.upper()}"
    return text
