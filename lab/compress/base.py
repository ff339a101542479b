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

How packets cross ranks is part of the compressor too (`reduce` for
data-parallel averaging, `server_reduce` for a federated uplink): by default
packets are all-gathered (sparse payloads do not sum in an all-reduce) and
every rank decodes them; compressors whose payloads do sum (fp16) or that need
several rounds (PowerSGD) override it.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from lab.comm.collective import ordered_sum
from lab.comm.packet import Packet


def row_seed(seed: int, call: int, rank: int) -> int:
    """A 63-bit seed for one (compressor seed, call, rank), the same on every process."""
    return ((seed * 1_000_003 + call) * 1_000_033 + rank * 7_919 + 12_345) % (2 ** 63 - 1)


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

    def contraction(self, d: int) -> float | None:
        return self.delta

    def variance(self, d: int) -> float | None:
        return self.omega

    def describe(self, d: int) -> str:
        """This compressor's own parameter for a d-vector, e.g. 'k=48'."""
        return ""

    @staticmethod
    def measured_ratio(packet: Packet, d: int) -> float:
        """Encoded bytes over dense fp32 bytes of the same message."""
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
        """Every rank's decoded message (P, d) and weights (P,) -> the aggregate (d,), ascending rank order."""
        return ordered_sum(decoded, weights)

    def reduce(self, v: torch.Tensor, collective, *, tag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Average `v (n, d)` over all ranks through `collective`.

        Returns (local (n, d): what the receivers decode of this process's rows,
        mean (d,): the aggregate every rank ends with). Sets `last_nbytes`.
        """
        packet = self.compress(v, ranks=collective.ranks)
        self.last_nbytes = packet.nbytes()
        gathered = gather_packet(collective, packet, tag=tag)  # tensors (n, P, ...), the same on every rank
        decoded = self.decompress(gathered.map(lambda t: t[0]))  # (P, d)
        p = collective.world_size
        mean = self.aggregate(decoded, torch.full((p,), 1.0 / p))
        local = decoded[collective.ranks]
        return local, mean

    def server_reduce(self, v: torch.Tensor, collective, *, weights: torch.Tensor, ranks: list[int],
                      tag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Federated uplink: clients in `ranks` send C(v_i); the server forms sum_i w_i decode(C(v_i)).

        v: (n, d) this process's rows (rows of clients not in `ranks` are compressed
        too, so every process sends equal shapes, but neither counted nor used).
        Returns (local (n, d), aggregate (d,)).
        """
        packet = self.compress(v, ranks=collective.ranks)
        self.last_nbytes = packet.nbytes()
        packet = pad_ragged(collective, packet)
        gathered = collective.server_gather(packet, ranks=ranks, tag=tag)  # tensors (n, P, ...)
        decoded = self.decompress(gathered.map(lambda t: t[0]))  # (P, d)
        ranks = sorted(ranks)
        agg = self.aggregate(decoded[ranks], weights[ranks])
        return decoded[collective.ranks], agg


def pad_ragged(collective, packet: Packet) -> Packet:
    """Pad the tensors a packet lists in meta['ragged'] (variable length along dim 1) to the longest
    row over all ranks, so every process sends the same shape. The length exchange is not recorded:
    the padded packet's size, recorded by the collective, is what every process agrees on."""
    names = packet.meta.get("ragged", ())
    if not names:
        return packet
    tensors = dict(packet.tensors)
    for name in names:
        t = tensors[name]
        longest = collective.all_gather(torch.tensor([[t.shape[1]]]).expand(t.shape[0], 1), record=False)
        width = int(longest.max())
        if width > t.shape[1]:
            t = torch.cat([t, torch.zeros(t.shape[0], width - t.shape[1], dtype=t.dtype)], dim=1)
        tensors[name] = t
    return Packet(tensors, packet.header_bytes, dict(packet.meta))


def serialize(packet: Packet, row: int = 0) -> torch.Tensor:
    """One row of a packet as the bytes on the wire: its tensors' raw bytes concatenated, uint8
    (packet.nbytes() of them, header bytes excluded) — for sending a packet through a tensor-only call."""
    return torch.cat([t[row].contiguous().reshape(-1).view(torch.uint8) for t in packet.tensors.values()])


def gather_packet(collective, packet: Packet, *, tag: str = "") -> Packet:
    """All-gather a packet (ragged tensors padded first); tensors come back (n, P, ...)."""
    return collective.all_gather(pad_ragged(collective, packet), tag=tag)


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

    def reduce(self, v, collective, *, tag=""):
        self.last_nbytes = 4 * v.shape[1]
        mean = collective.all_reduce(v.float(), op="mean", tag=tag)[0]
        return v.float(), mean
