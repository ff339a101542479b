"""Error feedback (EF; Seide et al. 2014, Stich et al. 2018): add back what compression dropped.

Per worker a residual e (init 0). Each message: p = e + g, send C(p), keep
e = p - decompress(C(p)). EF adds no traffic, only a d-vector per worker.

Form used here: the residual holds *gradients* (compress g + e, the optimizer
applies the learning rate after aggregation). With a constant learning rate this
is the spec's Stich form divided by γ; when the learning rate changes, the two
differ (spec Part B §B5 pitfall) — an LR schedule with EF should be read with that in mind.
"""
from __future__ import annotations

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor


class ErrorFeedback:
    """EF14 memory around any compressor, rank-stacked: residual is (n, d)."""

    name = "ef"

    def __init__(self, compressor: Compressor):
        self.compressor = compressor
        self.residual: torch.Tensor | None = None

    def compress(self, g: torch.Tensor) -> tuple[Packet, torch.Tensor]:
        """g: (n, d) -> (packet to send, what the receiver will decode (n, d))."""
        if self.residual is None:
            self.residual = torch.zeros_like(g)
        p = self.residual + g
        packet = self.compressor.compress(p)
        sent = self.compressor.decompress(packet)
        self.residual = p - sent
        return packet, sent

    def state_dict(self) -> dict:
        return {"residual": self.residual}

    def load_state_dict(self, state: dict):
        self.residual = state["residual"]


class NoFeedback:
    """Plain compression: what is dropped is lost."""

    name = "none"

    def __init__(self, compressor: Compressor):
        self.compressor = compressor

    def compress(self, g):
        packet = self.compressor.compress(g)
        return packet, self.compressor.decompress(packet)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass


FEEDBACK = {"none": NoFeedback, "ef": ErrorFeedback}
