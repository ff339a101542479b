"""The Compressor interface (GRACE's split: compressor, error-feedback memory, communicator).

A compressor maps rank-stacked vectors `(n, d)` to a `Packet` of real tensors
and back. Its byte size is the packet's (`Packet.nbytes`); the compression
ratio anywhere in commlab is that over the dense fp32 bytes `4 d`, measured,
never nominal. Spec: shared/techniques/sync_and_compression.md §0.3, Part B.

Every compressor states
- `unbiased`: E[decompress(compress(v))] = v;
- `contraction(d)` δ for biased ones, E||C(v) - v||² <= (1 - δ)||v||² (None if unknown);
- `variance(d)` ω for unbiased ones, E||C(v) - v||² <= ω||v||² (None if unknown).

Randomness (random-k, QSGD, ...) comes from one `torch.Generator` per row,
seeded by (compressor seed, call count, global rank of the row): never the
global RNG, so a rank draws the same numbers simulated or under
torch.distributed, and a receiver can regenerate what a shared seed implies.

Layout: a flat vector is the concatenation of parameter tensors; `piece(segments,
share)` gives a fresh compressor for a vector (or a chunk of one) laid out as
`segments` (tensor lengths), and compressors with a `scope` (top-k, scaled
sign, QSGD) work per segment with scope='layer' (the spec's default: per
parameter tensor) or over the whole vector with scope='global'.

How packets cross ranks is `lab.compress.exchange`: the compressed all-reduce
(all-gather of encoded messages, two-phase, parameter server; the topology
chooses, `lab.topology.compressed`) and the federated uplink. `reduce` is the
all-gather and `server_reduce` the uplink; compressors whose payloads sum
(fp16, none) or that need several rounds of all-reduce (PowerSGD) override
`reduce`.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from lab.comm.collective import ordered_sum
from lab.comm.packet import Packet
from lab.compress.wire import deserialize, pad_ragged, row_seed, serialize, serialize_rows  # noqa: F401 (re-exported)


class Compressor(ABC):
    name: str = ""
    unbiased: bool = False
    #: contraction δ: E||C(v) - v||² <= (1 - δ)||v||², for biased compressors (None if unknown)
    delta: float | None = None
    #: variance ω: E||C(v) - v||² <= ω||v||², for unbiased compressors (None if unknown)
    omega: float | None = None
    #: error feedback (EF14) measures its residual against the aggregate instead of this rank's
    #: own message (PowerSGD, as in its paper's code and torch's powerSGD_hook)
    error_vs_aggregate: bool = False
    #: how the `compression_ratio` knob maps to this compressor's own parameter (for the UI)
    knob: str = ""
    #: lengths of the parameter tensors the vectors are made of (None: one segment); see `piece`
    segments: tuple | None = None
    #: 'layer' (per segment) or 'global', for compressors that read it (top-k, scaled sign, QSGD)
    scope: str = "global"

    seed: int = 0
    calls: int = 0  # compress calls so far (part of every per-row seed)
    last_nbytes: int = 0  # bytes one rank sent in the last `reduce` / `server_reduce`

    # ---- the codec -------------------------------------------------------------------------------
    @abstractmethod
    def compress(self, v: torch.Tensor, *, ranks: Sequence[int] | None = None) -> Packet:
        """(n, d) -> Packet whose tensors are (n, ...). `ranks`: the global rank of each row."""

    @abstractmethod
    def decompress(self, packet: Packet) -> torch.Tensor:
        """Packet with tensors (n, ...) -> (n, d)."""

    def bind(self, shapes) -> Compressor:
        """A fresh compressor with the same knobs for vectors laid out as `shapes` (parameter shapes in
        flat order). Layout-free compressors return a copy; PowerSGD and FedZip use the shapes."""
        return copy.deepcopy(self)

    def piece(self, segments: Sequence[int], share: float = 1.0) -> Compressor:
        """A fresh compressor (call count 0) for vectors laid out as `segments` (tensor lengths, in order)
        that hold `share` of the coordinates of the vector the knobs were set for (a chunk of it: compressors
        with an explicit count, such as top-k's k, scale it)."""
        c = copy.deepcopy(self)
        c.segments, c.calls = tuple(int(x) for x in segments), 0
        return c

    def segment_lengths(self, d: int) -> tuple[int, ...]:
        """The segments a d-vector is compressed in: its tensors under scope='layer', else one."""
        if self.scope == "layer" and self.segments and sum(self.segments) == d:
            return self.segments
        return (d,)

    def contraction(self, d: int) -> float | None:
        return self.delta

    def variance(self, d: int) -> float | None:
        return self.omega

    def describe(self, d: int) -> str:
        """This compressor's own parameter for a d-vector, e.g. 'k=48'."""
        return ""

    @staticmethod
    def payload_ratio(packet: Packet, d: int) -> float:
        """Encoded bytes of one message over its dense fp32 bytes 4d (the metrics column `payload_ratio`)."""
        return packet.nbytes() / (4 * d)

    # ---- randomness ------------------------------------------------------------------------------
    def _generators(self, n: int, ranks: Sequence[int] | None) -> list[torch.Generator]:
        """One generator per row for this call, seeded by (seed, call, rank); advances the call count."""
        ranks = list(range(n)) if ranks is None else list(ranks)
        if len(ranks) != n:
            raise ValueError(f"ranks has {len(ranks)} entries for {n} rows")
        gens = [torch.Generator().manual_seed(row_seed(self.seed, self.calls, r)) for r in ranks]
        self.calls += 1
        return gens

    # ---- across ranks ------------------------------------------------------------------------------
    def aggregate(self, decoded: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every rank's decoded message (P, d) and weights (P,) -> the aggregate (d,), ascending rank order.

        Summed in the wider of the messages' and the weights' dtypes and returned in it: a caller that
        passes float64 weights (a federated server: aggregation weights, control variates) gets a float64
        sum of the fp32 messages, so its state stays consistent with the clients' to float64 precision."""
        return ordered_sum(decoded.to(torch.promote_types(decoded.dtype, weights.dtype)), weights)

    def reduce(self, v: torch.Tensor, collective, *, tag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Average `v (n, d)` over all ranks by all-gathering the encoded messages (one Ledger entry,
        op 'compressed_all_reduce', algorithm 'all_gather'); `lab.compress.Channel` chooses among the
        algorithms instead.

        Returns (local (n, d): what the receivers decode of this process's rows,
        mean (d,): the aggregate every rank ends with). Sets `last_nbytes`.
        """
        from lab.compress.exchange import all_gather

        return all_gather(self, v, collective, tag=tag)

    def server_reduce(self, v: torch.Tensor, collective, *, weights: torch.Tensor, ranks: list[int],
                      tag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Federated uplink: clients in `ranks` send C(v_i); the server forms sum_i w_i decode(C(v_i)).

        v: (n, d) this process's rows (rows of clients not in `ranks` are compressed
        too, so every process sends equal shapes, but neither counted nor used).
        Returns (local (n, d), aggregate (d,) in the wider of the decoded messages' and `weights`' dtypes).
        """
        from lab.compress.exchange import uplink

        return uplink(self, v, collective, weights=weights, ranks=ranks, tag=tag)


class Identity(Compressor):
    """No compression: the fp32 vector itself (all-reduced, not gathered)."""

    name = "none"
    unbiased = True
    omega = 0.0
    delta = 1.0
    knob = "none: the ratio is 1"

    def compress(self, v, *, ranks=None):
        return Packet({"values": v.float()})

    def decompress(self, packet):
        return packet.tensors["values"]

    def reduce(self, v, collective, *, tag="", groups=None):
        self.last_nbytes = 4 * v.shape[1]
        mean = collective.all_reduce(v.float(), op="mean", tag=tag, groups=groups)  # with groups: (n, d)
        return v.float(), mean if groups is not None else mean[0]
