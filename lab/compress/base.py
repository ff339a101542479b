"""The Compressor interface (GRACE's split: compressor, error-feedback memory, communicator).

A compressor maps rank-stacked vectors `(n, d)` to a `Packet` of real tensors
and back. Its byte size is the packet's (`Packet.nbytes`); the compression
ratio anywhere in commlab is that over the dense fp32 bytes `4 d`, measured,
never nominal. Spec: shared/techniques/sync_and_compression.md §0.3, Part B.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lab.comm.packet import Packet


class Compressor(ABC):
    name: str = ""
    unbiased: bool = False
    #: contraction δ: E||C(v) - v||² <= (1 - δ)||v||², for biased compressors (None if unknown)
    delta: float | None = None
    #: variance ω: E||C(v) - v||² <= ω||v||², for unbiased compressors (None if unknown)
    omega: float | None = None

    @abstractmethod
    def compress(self, v: torch.Tensor) -> Packet:
        """(n, d) -> Packet whose tensors are (n, ...)."""

    @abstractmethod
    def decompress(self, packet: Packet) -> torch.Tensor:
        """Packet with tensors (n, ...) -> (n, d)."""

    @staticmethod
    def measured_ratio(packet: Packet, d: int) -> float:
        """Encoded bytes over dense fp32 bytes of the same message."""
        return packet.nbytes() / (4 * d)


class Identity(Compressor):
    """No compression: the fp32 vector itself."""

    name = "none"
    unbiased = True
    omega = 0.0
    delta = 1.0

    def compress(self, v):
        return Packet({"values": v.float()})

    def decompress(self, packet):
        return packet.tensors["values"]
