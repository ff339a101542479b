"""How compressed vectors cross ranks: the compressed all-reduce's algorithms, and the federated uplink.

Each algorithm of `lab.topology.compressed` (which also costs them and
chooses) has its data path here. A `Plan` fixes, for one vector layout and
world size, the algorithm and its compressors; `run(plan, v, collective)`
averages v (n, d) over all ranks and returns (local (n, d): what receivers
decode of this process's rows, for the worker-side error feedback; mean (d,)).

- **all_gather**: every rank compresses its whole vector, the packets are
  all-gathered and every rank decodes and averages them, ascending rank order.
- **two_phase** (1-bit Adam; ZeRO++ qgZ): v is cut into P chunks of c =
  ⌈d/P⌉ (zero-padded); rank i compresses chunk j with chunk j's own compressor
  and sends it to rank j (all-to-all); rank j decodes the P messages, averages
  them (`Compressor.aggregate`: the mean, or the majority vote), adds its
  server-side error memory e_j, re-compresses q_j = mean + e_j, keeps
  e_j = q_j − decode(C(q_j)), and the re-compressed chunks are all-gathered.
  Sparse compressors re-sparsify each chunk on both hops.
- **star**: the same with S chunks held by S = `server_shards` parameter-server
  shards (or the server of a federated star): chunk s goes to shard s, the
  re-compressed reduced chunk comes back to every rank. The shards' state is
  mirrored on every process (each process decodes every message).

Server-side error memory is kept when the channel has error feedback (worker
side: `lab.compress.error_feedback`), none otherwise. On gloo the two-phase
moves the bytes it records (a real all-to-all and all-gather of the packed
chunks, padded to the longest chunk); the all-gather and the star move their
messages through an unrecorded all-gather (a reference implementation: the
Ledger records the algorithm's schedule, `lab.topology.compressed`).

Every algorithm records one Ledger entry, op 'compressed_all_reduce' with the
algorithm's name, payload = one rank's whole encoded message, bytes from its
schedule with the exact size of every chunk. `uplink` is the federated
uplink (clients' packets to the server, op 'server_gather').
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lab.comm.collective import group_cost
from lab.comm.packet import Packet
from lab.compress.wire import deserialize, pad_ragged, row_seed, serialize_rows
from lab.topology import compressed as algo
from lab.topology.cost import copy_cost

if TYPE_CHECKING:
    from lab.compress.base import Compressor


def clip_segments(segments, lo: int, hi: int) -> tuple[int, ...]:
    """Lengths of the parts of `segments` (tensor lengths, in order) inside [lo, hi); padding beyond their
    sum is one more part."""
    out, at = [], 0
    for s in segments:
        a, b = max(lo, at), min(hi, at + s)
        if b > a:
            out.append(b - a)
        at += s
    if hi > max(lo, at):
        out.append(hi - max(lo, at))
    return tuple(out)


@dataclass
class Plan:
    """The algorithm and compressors of one exchange layout (d values in `segments`, P ranks)."""

    algorithm: str
    d: int
    chunk: int  # c: values per chunk (d for the all-gather)
    workers: list  # the compressor of each chunk of a worker's message (one for the all-gather)
    servers: list  # the compressor of each reduced chunk (empty for the all-gather)
    ratio: float | None = None  # the payload ratio the compressors were built for (None: as given)
    residual: torch.Tensor | None = None  # server-side error memory: (n_local, c) two-phase, (S, c) star
    last_payload: int = 0  # one rank's encoded message in the last exchange, bytes

    def compressors(self) -> list:
        return self.workers + self.servers

    def describe(self) -> str:
        inner = self.workers[0].describe(self.chunk)
        if self.algorithm == "all_gather":
            return inner
        return f"{inner} per chunk of {self.chunk} ({len(self.workers)} chunks)"

    def state_dict(self) -> dict:
        return {"calls": [c.calls for c in self.compressors()], "residual": self.residual}

    def load_state_dict(self, state: dict) -> None:
        for c, calls in zip(self.compressors(), state["calls"]):
            c.calls = calls
        self.residual = state["residual"]


def make_plan(factory, *, d: int, segments: tuple, world_size: int, topology, applicable: tuple,
              target: float | None, ranks=None) -> Plan:
    """The plan of the cheapest candidate algorithm (`lab.topology.compressed.candidates`), costed on `ranks`
    (default: every rank of the topology; a sub-group's ranks for `lab.compress.grouped`).

    factory(ratio, segments, share) -> Compressor builds the compressor of a piece; with a traffic `target`,
    each algorithm's compressors get the payload ratio target × ring factor / the algorithm's factor at this P.
    """
    p = world_size
    names = algo.candidates(topology, applicable, p)
    plans = [_build(factory, name, d=d, segments=segments, p=p, topology=topology, target=target) for name in names]
    if len(plans) == 1:
        return plans[0]
    return min(plans, key=lambda pl: algo.cost(topology, pl.algorithm, _estimate(pl), ranks).seconds)


def _build(factory, name, *, d, segments, p, topology, target) -> Plan:
    ratio = target
    if target is not None and p > 1:
        ratio = min(1.0, target * algo.ring_bytes(1.0, p) / algo.factor(topology, name, p))
    if name == "all_gather":
        return Plan(name, d, d, [factory(ratio, segments, 1.0)], [], ratio)
    k = algo.num_chunks(topology, name, p)
    c = math.ceil(d / k)
    parts = [clip_segments(segments, j * c, (j + 1) * c) for j in range(k)]
    workers = [_seeded(factory(ratio, parts[j], c / d), j, 1) for j in range(k)]
    servers = [_seeded(factory(ratio, parts[j], c / d), j, 2) for j in range(k)]
    return Plan(name, d, c, workers, servers, ratio)


def _seeded(comp: Compressor, j: int, hop: int) -> Compressor:
    comp.seed = row_seed(comp.seed, 1 + j, hop)  # chunks and hops draw independent numbers
    return comp


def _estimate(plan: Plan) -> algo.Sizes:
    """Encoded sizes of the plan's messages (packet layouts depend on the length, not on the values)."""
    def size(c, length):
        return copy.deepcopy(c).compress(torch.zeros(1, length)).nbytes()

    if plan.algorithm == "all_gather":
        return algo.Sizes(size(plan.workers[0], plan.d))
    chunks = tuple(size(w, plan.chunk) for w in plan.workers)
    return algo.Sizes(sum(chunks), chunks, tuple(size(s, plan.chunk) for s in plan.servers))


def record(collective, algorithm: str, sizes: algo.Sizes, *, tag: str) -> None:
    """One Ledger entry for a compressed all-reduce under `algorithm` with these exact sizes."""
    t = collective.ledger.topology
    key = (algo.OP, algorithm, sizes)
    if key not in t._cache:  # the topology's own cost cache (sizes repeat every step)
        t._cache[key] = algo.cost(t, algorithm, sizes)
    collective.ledger.record(algo.OP, int(sizes.full), tag=tag, cost=copy_cost(t._cache[key]))


def decode_all(comps: list, packets: list) -> list[torch.Tensor]:
    """comps[i].decompress(packets[i]) for every i, in one call when the packets share a layout (the chunks'
    compressors then decode alike: they differ only in their seeds, and seeds travel in the packets)."""
    first = packets[0]
    same = len(packets) > 1 and all(
        pk.meta == first.meta and pk.tensors.keys() == first.tensors.keys()
        and all(pk.tensors[k].shape[1:] == t.shape[1:] for k, t in first.tensors.items()) for pk in packets)
    if not same:
        return [c.decompress(pk) for c, pk in zip(comps, packets)]
    stacked = Packet({k: torch.cat([pk.tensors[k] for pk in packets]) for k in first.tensors},
                     first.header_bytes, dict(first.meta))
    return list(comps[0].decompress(stacked).split([next(iter(pk.tensors.values())).shape[0] for pk in packets]))


# ---- the algorithms -----------------------------------------------------------------------------------
def run(plan: Plan, v: torch.Tensor, collective, *, tag: str, server_feedback: bool):
    """Average v (n, d) over all ranks under the plan; (local (n, d), mean (d,))."""
    if plan.algorithm == "all_gather":
        local, mean = all_gather(plan.workers[0], v, collective, tag=tag)
        plan.last_payload = plan.workers[0].last_nbytes
        return local, mean
    fn = two_phase if plan.algorithm == "two_phase" else star
    return fn(plan, v, collective, tag=tag, server_feedback=server_feedback)


def _mean_of(comp: Compressor, decoded: torch.Tensor) -> torch.Tensor:
    p = decoded.shape[0]
    mean = comp.aggregate(decoded, torch.full((p,), 1.0 / p, dtype=torch.float64))  # summed in float64
    return mean.to(torch.promote_types(decoded.dtype, torch.float32))  # fp32 messages: fp32; fp64 runs keep fp64


def all_gather(comp: Compressor, v: torch.Tensor, collective, *, tag: str = ""):
    packet = pad_ragged(collective, comp.compress(v, ranks=collective.ranks))
    comp.last_nbytes = packet.nbytes()
    record(collective, "all_gather", algo.Sizes(packet.nbytes()), tag=tag)
    gathered = collective.all_gather(packet, record=False)  # tensors (n, P, ...), the same on every rank
    decoded = comp.decompress(gathered.map(lambda t: t[0]))  # (P, d)
    return decoded[collective.ranks], _mean_of(comp, decoded).to(decoded.dtype)


def _chunks(plan: Plan, v: torch.Tensor, ranks: list[int]):
    """Compress every chunk of every local row (`ranks`: their global ranks): (packets per chunk, local (n, d)
    decoded, bytes (n, C, w))."""
    n, d = v.shape
    k, c = len(plan.workers), plan.chunk
    x = torch.zeros(n, k * c, device=v.device)
    x[:, :d] = v
    x = x.view(n, k, c)
    packets = [w.compress(x[:, j], ranks=ranks) for j, w in enumerate(plan.workers)]
    local = torch.cat(decode_all(plan.workers, packets), dim=1)[:, :d]
    rows = [serialize_rows(pk) for pk in packets]  # (n, bytes of chunk j)
    width = max(r.shape[1] for r in rows)
    wire = torch.zeros(n, k, width, dtype=torch.uint8, device=v.device)
    for j, r in enumerate(rows):
        wire[:, j, :r.shape[1]] = r
    plan.last_payload = sum(pk.nbytes() for pk in packets)
    return packets, local, wire


def _server_hop(plan: Plan, reduced: torch.Tensor, owners: list[int], *, feedback: bool):
    """Re-compress reduced chunks (len(owners), c) with the owners' server compressors and error memory."""
    if feedback:
        if plan.residual is None:
            plan.residual = torch.zeros_like(reduced)
        reduced = reduced + plan.residual
    back = [plan.servers[o].compress(reduced[a:a + 1], ranks=[o]) for a, o in enumerate(owners)]
    if feedback:
        plan.residual = reduced - torch.cat(decode_all([plan.servers[o] for o in owners], back))
    return back


def two_phase(plan: Plan, v: torch.Tensor, collective, *, tag: str, server_feedback: bool):
    n, d = v.shape
    p = collective.world_size
    packets, local, wire = _chunks(plan, v, collective.ranks)
    sizes = tuple(pk.nbytes() for pk in packets)
    record(collective, "two_phase", algo.Sizes(sum(sizes), sizes, sizes), tag=tag)
    recv = collective.all_to_all(wire, record=False)  # (n, P, w): row a, from rank i: i's chunk ranks[a]
    owners = [plan.workers[r] for r in collective.ranks]
    decoded = decode_all(owners, [deserialize(recv[a], packets[r]) for a, r in enumerate(collective.ranks)])
    reduced = torch.stack([_mean_of(w, dec) for w, dec in zip(owners, decoded)])  # (n, c): P senders each
    back = _server_hop(plan, reduced, collective.ranks, feedback=server_feedback)
    for a, r in enumerate(collective.ranks):
        assert back[a].nbytes() == sizes[r], "a re-compressed chunk must have the layout of the chunk"
    out = torch.zeros(n, wire.shape[2], dtype=torch.uint8, device=wire.device)
    for a, pk in enumerate(back):
        row = serialize_rows(pk)
        out[a, :row.shape[1]] = row[0]
    got = collective.all_gather(out, record=False)[0]  # (P, w): every owner's re-compressed chunk
    mean = torch.cat(decode_all(plan.servers, [deserialize(got[j:j + 1], packets[j]) for j in range(p)]),
                     dim=1)[0, :d]
    return local, mean


def star(plan: Plan, v: torch.Tensor, collective, *, tag: str, server_feedback: bool):
    n, d = v.shape
    k = len(plan.workers)
    packets, local, wire = _chunks(plan, v, collective.ranks)
    got = collective.all_gather(wire.reshape(n, -1), record=False)[0].view(-1, k, wire.shape[2])  # (P, S, w)
    decoded = decode_all(plan.workers, [deserialize(got[:, s], packets[s]) for s in range(k)])  # (P, c) each
    reduced = torch.stack([_mean_of(w, dec) for w, dec in zip(plan.workers, decoded)])  # (S, c), mirrored
    back = _server_hop(plan, reduced, list(range(k)), feedback=server_feedback)
    sizes = tuple(pk.nbytes() for pk in packets)
    record(collective, "star", algo.Sizes(sum(sizes), sizes, tuple(pk.nbytes() for pk in back)), tag=tag)
    mean = torch.cat(decode_all(plan.servers, back), dim=1)[0, :d]
    return local, mean


# ---- the federated uplink and qgZ's hops ----------------------------------------------------------------
def uplink(comp: Compressor, v: torch.Tensor, collective, *, weights: torch.Tensor, ranks: list[int], tag: str = ""):
    """Clients in `ranks` send C(v_i) to the server (op 'server_gather'); the server forms Σ_i w_i decode_i.
    Returns (local (n, d), aggregate (d,))."""
    packet = pad_ragged(collective, comp.compress(v, ranks=collective.ranks))
    comp.last_nbytes = packet.nbytes()
    gathered = collective.server_gather(packet, ranks=ranks, tag=tag)  # tensors (n, P, ...)
    decoded = comp.decompress(gathered.map(lambda t: t[0]))  # (P, d)
    ranks = sorted(ranks)
    return decoded[collective.ranks], comp.aggregate(decoded[ranks], weights[ranks])


def all_to_all_compressed(collective, send: torch.Tensor, comp: Compressor, *, groups=None, tag: str = ""):
    """Chunk j of each row of send (n, G, w) compressed on its own and sent to position j of the row's group
    (qgZ's hop); returns what each rank decodes from its G peers, (n, G, w). One Ledger entry, op 'all_to_all',
    payload the G encoded chunks."""
    n, g, width = send.shape
    packet = comp.compress(send.reshape(n * g, width))  # each chunk on its own blocks
    wire = serialize_rows(packet).view(n, g, -1)
    groups = collective._groups(groups)
    nbytes = g * packet.nbytes()
    cost = group_cost(collective.ledger.topology, "all_to_all", nbytes, groups) if groups is not None else None
    collective.ledger.record("all_to_all", nbytes, tag=tag, cost=cost)
    got = collective.all_to_all(wire, groups=groups, record=False)  # (n, G, bytes)
    return comp.decompress(deserialize(got.reshape(n * g, -1), packet)).view(n, g, width)
