"""A compressed channel: one compressor, one error-feedback wrapper, and how their messages cross ranks.

Every place that compresses goes through a Channel:
- `all_reduce_mean(g, collective, tag=...)` (DDP gradients, Local SGD / QSR
  pseudo-gradients, DiLoCo / Streaming DiLoCo outer gradients): every rank ends
  with the same averaged, decoded, error-fed-back vector. Compressors whose
  payloads sum (fp16, bf16, PowerSGD's factors) use the dense all-reduce;
  the others the compressed all-reduce algorithm the topology chooses or the
  user pins (`lab.topology.compressed`: all-gather, two-phase, star; data
  paths in `lab.compress.exchange`), with server-side error memory on the
  second hop when the channel has error feedback;
- `server_reduce(v, weights=..., ranks=...)` (FedAvg, SCALLION/SCAFCOM, CELLM
  uplinks): sampled clients send compressed rows to the server (a star push).

The compression-ratio knob. Built with a traffic `target` (`make_channel`:
`compression_ratio`), each algorithm's compressors get the payload ratio
target × (dense ring factor 2(P-1)/P) ÷ (the algorithm's factor at this P),
so the traffic, not the message, meets the target; built without, the
compressor's own setting is the payload.

The two ratios of the last exchange (the metrics columns, `columns()`):
- `payload_ratio`: one rank's encoded message over its dense fp32 bytes 4d;
- `traffic_ratio`: the bytes the busiest rank sent in this exchange (every
  Ledger entry it made) over what the dense exchange of the same tensor sends
  per rank at the same P: the fp32 ring all-reduce, 2(P-1)/P · 4d, for
  `all_reduce_mean`; the dense upload, 4d, for `server_reduce`.
"""
from __future__ import annotations

import numpy as np
import torch

from lab.compress.base import Compressor, Identity
from lab.compress.exchange import make_plan, run
from lab.topology import compressed as algo


def _spec(compressor: Compressor):
    from lab.compress.registry import COMPRESSORS, spec

    return spec(compressor.name) if compressor.name in COMPRESSORS else None


class Channel:
    def __init__(self, compressor: Compressor, feedback, *, shapes=None, factory=None, target: float | None = None):
        """compressor and feedback (its error-feedback wrapper); shapes: the parameter shapes of the vectors
        (their tensors are the segments of per-layer compression); factory(ratio, segments, share) ->
        Compressor: how to build the compressor of a piece (default: copies of `compressor`); target: the
        traffic ratio the factory's compressors are mapped to (None: `compressor`'s own setting)."""
        if feedback.compressor is not compressor:
            raise ValueError("the error feedback must wrap the channel's compressor")
        if target is not None and not 0 < target <= 1:
            raise ValueError(f"compression_ratio={target!r} is invalid: it must be in (0, 1]")
        self.compressor, self.feedback = compressor, feedback
        self.layout = tuple(int(np.prod(s)) for s in shapes) if shapes is not None else None
        self.factory, self.target = factory or self._piece, (target if factory is not None else None)
        s = _spec(compressor)
        #: the compressor crosses ranks its own way (a dense all-reduce of summable payloads)
        self.summable = s.summable if s is not None else type(compressor).reduce is not Compressor.reduce
        self.applicable = algo.NAMES if (s.chunked if s is not None else not self.summable) else ("all_gather",)
        self.plans: dict = {}
        self._pending: dict = {}  # plan states loaded before their plans exist
        self.reference = None
        self.payload_ratio, self.traffic_ratio, self.algorithm = 1.0, 1.0, ""
        self.choices: dict = {}  # the algorithm of each grouped layout (lab.compress.grouped)
        self.last_local: torch.Tensor | None = None  # what receivers decoded of this process's rows, last time

    def _piece(self, ratio, segments, share):
        if share == 1.0 and (self.layout is None or tuple(segments) == self.layout):
            self.compressor.segments = tuple(segments)
            return self.compressor  # the whole vector: the compressor itself
        return self.compressor.piece(segments, share)

    @property
    def dense(self) -> bool:
        """No compression: a plain fp32 all-reduce (every feedback rule is the identity then)."""
        return isinstance(self.compressor, Identity)

    def set_reference(self, row: torch.Tensor) -> None:
        """The model both ends hold (needed by compressors that decode through it, e.g. 3SFC)."""
        self.reference = row
        for c in [self.compressor] + [c for plan in self.plans.values() for c in plan.compressors()]:
            if hasattr(c, "set_reference"):
                c.set_reference(row)

    def plan(self, d: int, world_size: int, topology, segments=None, *, group=None, applicable=None):
        """The algorithm and compressors this channel uses for d-vectors over world_size ranks (`group`: the
        ranks of one sub-group, whose plan is its own; `applicable`: the algorithms to choose among)."""
        segments = tuple(segments) if segments is not None else (
            self.layout if self.layout is not None and sum(self.layout) == d else (d,))
        key = (d, segments, world_size) + ((tuple(group),) if group is not None else ())
        if key not in self.plans:
            plan = make_plan(self.factory, d=d, segments=segments, world_size=world_size, topology=topology,
                             applicable=applicable or self.applicable, target=self.target, ranks=group)
            if key in self._pending:
                plan.load_state_dict(self._pending.pop(key))
            self.plans[key] = plan
            if self.reference is not None:
                self.set_reference(self.reference)
        return self.plans[key]

    def all_reduce_mean(self, g: torch.Tensor, collective, *, tag: str, segments=None, groups=None) -> torch.Tensor:
        """(n, d) -> (n, d): every row the decoded average over all ranks (after error feedback).
        segments: tensor lengths of g's layout, for per-layer compression (default: the channel's shapes when
        g is the whole vector, else one segment). groups: a partition of the ranks into equal groups that
        average among themselves, all at once (`lab.compress.grouped`; segments then one per group)."""
        groups = collective._groups(groups) if groups is not None else None
        p = self.feedback.prepare(g)
        start = len(collective.ledger.entries)
        if self.summable:
            local, agg = self.compressor.reduce(p, collective, tag=tag, **({"groups": groups} if groups else {}))
            payload = self.compressor.last_nbytes
        elif groups is not None:
            from lab.compress.grouped import run_grouped

            local, agg, payload = run_grouped(self, p, collective, tag=tag, groups=groups, segments=segments,
                                              server_feedback=self.feedback.name != "none")
        else:
            plan = self.plan(g.shape[1], collective.world_size, collective.ledger.topology, segments)
            local, agg = run(plan, p, collective, tag=tag, server_feedback=self.feedback.name != "none")
            payload = plan.last_payload
        self.feedback.commit(p, local, agg)
        size = collective.world_size if groups is None else len(groups[0])
        self._measure(collective, start, payload, g.shape[1], dense=algo.ring_bytes(4 * g.shape[1], size))
        self.last_local = local
        out = self.feedback.output(agg)  # (d,), or (n, d) with groups: each row its group's
        return (out if out.dim() == 2 else out.unsqueeze(0)).to(g.dtype).expand_as(g)

    def server_reduce(self, v: torch.Tensor, collective, *, weights: torch.Tensor, ranks: list[int],
                      active: torch.Tensor | None = None, tag: str) -> torch.Tensor:
        """Uplink of rows v (n, d) from clients `ranks`; returns the server's Σ_i w_i decode_i (d,).

        active: (n,) bool, the local rows whose clients take part (their feedback state updates).
        """
        p = self.feedback.prepare(v)
        start = len(collective.ledger.entries)
        local, agg = self.compressor.server_reduce(p, collective, weights=weights, ranks=ranks, tag=tag)
        self.feedback.commit(p, local, agg, active=active)
        self._measure(collective, start, self.compressor.last_nbytes, v.shape[1], dense=4.0 * v.shape[1])
        self.last_local = local
        return self.feedback.output(agg)

    def _measure(self, collective, start: int, payload: int, d: int, *, dense: float) -> None:
        entries = collective.ledger.entries[start:]
        sent = sum((sum(e.bytes.values()) for e in entries), np.zeros(collective.world_size, dtype=np.int64))
        self.payload_ratio = payload / (4 * d)
        self.traffic_ratio = float(sent.max()) / dense if dense > 0 else float("nan")
        self.algorithm = "+".join(sorted({e.algorithm for e in entries}))

    def columns(self) -> dict:
        """The metrics columns of the last exchange: `payload_ratio` and `traffic_ratio`."""
        return {"payload_ratio": self.payload_ratio, "traffic_ratio": self.traffic_ratio}

    def state_dict(self) -> dict:
        return {"feedback": self.feedback.state_dict(), "compressor_calls": self.compressor.calls,
                "warm_start": getattr(self.compressor, "q", None),
                "plans": {**self._pending, **{k: plan.state_dict() for k, plan in self.plans.items()}},
                "last": (self.payload_ratio, self.traffic_ratio, self.algorithm)}  # the last exchange's columns

    def load_state_dict(self, state: dict) -> None:
        self.feedback.load_state_dict(state["feedback"])
        self.compressor.calls = state["compressor_calls"]
        self.payload_ratio, self.traffic_ratio, self.algorithm = state.get("last", (1.0, 1.0, ""))
        if state.get("warm_start") is not None:
            self.compressor.q = state["warm_start"]
        for key, s in state.get("plans", {}).items():
            if key in self.plans:
                self.plans[key].load_state_dict(s)
            else:
                self._pending[key] = s
