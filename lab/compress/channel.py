"""A compressed channel: one compressor, one error-feedback wrapper, and the collective calls between them.

The three places compression applies in commlab use it:
- DDP gradients and Local SGD pseudo-gradients: `all_reduce_mean(g)`, every
  rank ends with the same averaged (decoded, error-fed-back) vector;
- the federated uplink: `server_reduce(v, weights, ranks)`, sampled clients
  send compressed rows and the server forms their weighted sum.

`measured_ratio` is the last message's encoded bytes over its dense fp32
bytes (what the metrics column `measured_ratio` shows).
"""
from __future__ import annotations

import torch

from lab.compress.base import Compressor, Identity


class Channel:
    def __init__(self, compressor: Compressor, feedback):
        if feedback.compressor is not compressor:
            raise ValueError("the error feedback must wrap the channel's compressor")
        self.compressor, self.feedback = compressor, feedback
        self.measured_ratio = 1.0

    @property
    def dense(self) -> bool:
        """No compression: a plain fp32 all-reduce (every feedback rule is the identity then)."""
        return isinstance(self.compressor, Identity)

    def set_reference(self, row: torch.Tensor) -> None:
        """The model both ends hold (needed by compressors that decode through it, e.g. 3SFC)."""
        if hasattr(self.compressor, "set_reference"):
            self.compressor.set_reference(row)

    def all_reduce_mean(self, g: torch.Tensor, collective, *, tag: str) -> torch.Tensor:
        """(n, d) -> (n, d): every row the decoded average over all ranks (after error feedback)."""
        p = self.feedback.prepare(g)
        local, agg = self.compressor.reduce(p, collective, tag=tag)
        self.feedback.commit(p, local, agg)
        self.measured_ratio = self.compressor.last_nbytes / (4 * g.shape[1])
        return self.feedback.output(agg).to(g.dtype).unsqueeze(0).expand_as(g)

    def server_reduce(self, v: torch.Tensor, collective, *, weights: torch.Tensor, ranks: list[int],
                      active: torch.Tensor | None = None, tag: str) -> torch.Tensor:
        """Uplink of rows v (n, d) from clients `ranks`; returns the server's Σ_i w_i decode_i (d,).

        active: (n,) bool, the local rows whose clients take part (their feedback state updates).
        """
        p = self.feedback.prepare(v)
        local, agg = self.compressor.server_reduce(p, collective, weights=weights, ranks=ranks, tag=tag)
        self.feedback.commit(p, local, agg, active=active)
        self.measured_ratio = self.compressor.last_nbytes / (4 * v.shape[1])
        return self.feedback.output(agg)

    def state_dict(self) -> dict:
        return {"feedback": self.feedback.state_dict(), "compressor_calls": self.compressor.calls,
                "warm_start": getattr(self.compressor, "q", None)}

    def load_state_dict(self, state: dict) -> None:
        self.feedback.load_state_dict(state["feedback"])
        self.compressor.calls = state["compressor_calls"]
        if state.get("warm_start") is not None:
            self.compressor.q = state["warm_start"]
