"""The compressed all-reduce inside sub-groups of ranks: every group averages its members' vectors, all at once.

Sharded training composed with a sync technique (`lab.sync.sharded`) exchanges each rank's shard with its
counterparts in the other replicas — the replica groups of `lab.sharding.layout`, S groups of R ranks — so
`Channel.all_reduce_mean(..., groups=...)` runs here for compressors whose payloads do not sum.

Each group has its own `Plan` (`lab.compress.exchange`: a compressor per chunk, server-side error memory),
keyed by the group: each group compresses its own part of the model (its per-layer segments), and its state
must evolve the same whether the group's ranks are simulated beside the others or run on processes of their
own. Every group uses the same algorithm, chosen once per layout on the first group's ranks, so the groups run
in lockstep through the Collective's `groups=`: **two_phase** (chunk j of every member's message to member j,
decoded, averaged, re-compressed with server-side error memory, all-gathered) or **all_gather** (every
member's whole message). The parameter server ('star') does not apply inside groups.

Recorded: one Ledger entry per exchange, op 'compressed_all_reduce', its algorithm named with the group shape
(e.g. 'two_phase[4x2]'): bytes per link class from each group's schedule on the topology with that group's
exact message sizes (`lab.topology.compressed.cost(..., ranks=group)`), the slowest group's time. A process
holds only its own group's messages, so the sizes reach every process through one unrecorded all-gather of a
few integers per rank (as `pad_ragged`'s lengths do), and every process records the same entry.
"""
from __future__ import annotations

import torch

from lab.comm.collective import merge_costs
from lab.compress.base import deserialize, serialize_rows
from lab.compress.exchange import _chunks, _mean_of, _server_hop, decode_all, make_plan
from lab.topology import compressed as algo
from lab.topology.cost import copy_cost

#: the compressed all-reduce algorithms that run inside groups
GROUP_ALGORITHMS = ("all_gather", "two_phase")


def run_grouped(channel, v: torch.Tensor, collective, *, tag: str, groups: list[list[int]], segments=None,
                server_feedback: bool):
    """Average v (n, d) over each row's group (`groups`: validated, equal sizes); segments: one per group
    (its parameter-tensor lengths) or None. Returns (local (n, d), mean (n, d), one rank's payload bytes)."""
    n, d = v.shape
    size, t = len(groups[0]), collective.ledger.topology
    segments = list(segments) if segments is not None else [None] * len(groups)
    if len(segments) != len(groups):
        raise ValueError(f"segments has {len(segments)} entries for {len(groups)} groups")
    name = choose(channel, d, size, t, groups, segments)
    where = {r: (gi, g.index(r)) for gi, g in enumerate(groups) for r in g}
    members: dict[int, list[tuple[int, int, int]]] = {}  # group -> [(local row, position, global rank)]
    for a, r in enumerate(collective.ranks):
        gi, pos = where[r]
        members.setdefault(gi, []).append((a, pos, r))
    plans = {gi: channel.plan(d, size, t, segments[gi], group=groups[gi], applicable=(name,)) for gi in members}
    fn = _two_phase if name == "two_phase" else _all_gather
    local, mean, sizes = fn(plans, v, collective, members, groups, server_feedback)
    _record(collective, name, sizes, groups, members, tag)
    return local, mean, plans[min(members)].last_payload


def choose(channel, d: int, size: int, topology, groups, segments) -> str:
    """The one algorithm every group uses for d-vectors in groups of `size` (cached on the channel)."""
    key = (d, size, tuple(tuple(g) for g in groups))
    if key not in channel.choices:
        usable = tuple(a for a in channel.applicable if a in GROUP_ALGORITHMS)
        if not usable:
            raise ValueError(f"compressor={channel.compressor.name!r} has no compressed all-reduce that runs "
                             f"inside groups (applicable: {list(channel.applicable)}; inside groups: "
                             f"{list(GROUP_ALGORITHMS)})")
        names = algo.candidates(topology, usable, size)
        if len(names) > 1:  # 'cheapest': cost the candidates on the first group's ranks
            names = (make_plan(channel.factory, d=d, segments=segments[0] or (d,), world_size=size,
                               topology=topology, applicable=names, target=channel.target,
                               ranks=groups[0]).algorithm,)
        channel.choices[key] = names[0]
    return channel.choices[key]


def _rows(group_members) -> list[int]:
    return [a for a, _, _ in group_members]


def _two_phase(plans, v, coll, members, groups, feedback):
    n, d = v.shape
    size = len(groups[0])
    local = torch.zeros(n, d, device=v.device)
    packets, wires, sizes = {}, {}, {}
    for gi, mem in members.items():
        packets[gi], local[_rows(mem)], wires[gi] = _chunks(plans[gi], v[_rows(mem)], [r for _, _, r in mem])
        chunk = tuple(pk.nbytes() for pk in packets[gi])
        sizes[gi] = (sum(chunk), chunk, chunk)
    width = max(w.shape[2] for w in wires.values())
    wire = torch.zeros(n, size, width, dtype=torch.uint8, device=v.device)
    for gi, mem in members.items():
        wire[_rows(mem), :, :wires[gi].shape[2]] = wires[gi]
    recv = coll.all_to_all(wire, groups=groups, record=False)  # (n, G, w): row a, from member i: i's chunk pos(a)
    out = torch.zeros(n, width, dtype=torch.uint8, device=v.device)
    for gi, mem in members.items():
        plan, rows, owners = plans[gi], _rows(mem), [pos for _, pos, _ in mem]
        comps = [plan.workers[o] for o in owners]
        decoded = decode_all(comps, [deserialize(recv[a], packets[gi][o]) for a, o in zip(rows, owners)])
        reduced = torch.stack([_mean_of(w, dec) for w, dec in zip(comps, decoded)])  # (|rows|, c)
        back = _server_hop(plan, reduced, owners, feedback=feedback)
        for a, o, pk in zip(rows, owners, back):
            assert pk.nbytes() == sizes[gi][1][o], "a re-compressed chunk must have the layout of the chunk"
            row = serialize_rows(pk)
            out[a, :row.shape[1]] = row[0]
    got = coll.all_gather(out, groups=groups, record=False)  # (n, G, w): every member's re-compressed chunk
    mean = torch.zeros(n, d, device=v.device)
    for gi, mem in members.items():
        plan, a0 = plans[gi], mem[0][0]
        parts = decode_all(plan.servers, [deserialize(got[a0, j:j + 1], packets[gi][j]) for j in range(size)])
        mean[_rows(mem)] = torch.cat(parts, dim=1)[0, :d]
    return local, mean, sizes


def _all_gather(plans, v, coll, members, groups, feedback):
    n, d = v.shape
    local = torch.zeros(n, d, device=v.device)
    packets, wires, sizes = {}, {}, {}
    for gi, mem in members.items():
        comp = plans[gi].workers[0]
        pk = comp.compress(v[_rows(mem)], ranks=[r for _, _, r in mem])
        if pk.meta.get("ragged"):
            raise ValueError(f"compressor={comp.name!r} sends messages of varying length: it does not run inside "
                             "groups")
        comp.last_nbytes = plans[gi].last_payload = pk.nbytes()
        packets[gi], wires[gi], local[_rows(mem)] = pk, serialize_rows(pk), comp.decompress(pk)
        sizes[gi] = (pk.nbytes(), (), ())
    wire = torch.zeros(n, max(w.shape[1] for w in wires.values()), dtype=torch.uint8, device=v.device)
    for gi, mem in members.items():
        wire[_rows(mem), :wires[gi].shape[1]] = wires[gi]
    got = coll.all_gather(wire, groups=groups, record=False)  # (n, G, w)
    mean = torch.zeros(n, d, device=v.device)
    for gi, mem in members.items():
        comp = plans[gi].workers[0]
        decoded = comp.decompress(deserialize(got[mem[0][0]], packets[gi]))  # (G, d)
        mean[_rows(mem)] = _mean_of(comp, decoded).to(decoded.dtype)
    return local, mean, sizes


def _record(coll, name: str, sizes: dict, groups, members, tag: str) -> None:
    """One Ledger entry: every group's schedule with its message sizes (shared through an unrecorded gather)."""
    size = len(groups[0])
    mine = torch.zeros(coll.num_local, 1 + 2 * size, dtype=torch.int64)
    for gi, mem in members.items():
        full, chunks, reduced = sizes[gi]
        mine[_rows(mem)] = torch.tensor([full, *chunks, *reduced] + [0] * (2 * size - len(chunks) - len(reduced)))
    every = coll.all_gather(mine, record=False)[0].tolist()  # (P, 1 + 2G): each rank's sizes
    t, costs, fulls = coll.ledger.topology, [], []
    for g in groups:
        row = every[g[0]]
        s = algo.Sizes(row[0], tuple(row[1:1 + size]), tuple(row[1 + size:])) if name == "two_phase" \
            else algo.Sizes(row[0])
        key = (algo.OP, name, s, tuple(g))
        if key not in t._cache:  # the topology's own cost cache (sizes repeat every exchange)
            t._cache[key] = algo.cost(t, name, s, ranks=g)
        costs.append(copy_cost(t._cache[key]))
        fulls.append(row[0])
    coll.ledger.record(algo.OP, int(max(fulls)), tag=tag, cost=merge_costs(costs, groups))
