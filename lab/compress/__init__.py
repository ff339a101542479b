"""Compressors, error feedback and packing. Choose by name with `make_compressor`."""
from lab.compress.base import Compressor, Identity
from lab.compress.error_feedback import FEEDBACK, ErrorFeedback, NoFeedback
from lab.compress.topk import TopK

COMPRESSORS = ("none", "topk")


def make_compressor(name: str, *, ratio: float = 1.0) -> Compressor:
    if name == "none":
        return Identity()
    if name == "topk":
        return TopK(ratio=ratio)
    raise ValueError(f"compressor={name!r} is unknown; allowed: {list(COMPRESSORS)}")


def make_feedback(name: str, compressor: Compressor):
    if name not in FEEDBACK:
        raise ValueError(f"error_feedback={name!r} is unknown; allowed: {sorted(FEEDBACK)}")
    return FEEDBACK[name](compressor)


__all__ = ["COMPRESSORS", "Compressor", "ErrorFeedback", "Identity", "NoFeedback", "TopK", "make_compressor",
           "make_feedback"]
