"""What expert parallelism costs the simulator: one MoE layer's forward + backward with EP over simulated ranks
(routing, counts exchange, all_to_all_v dispatch and combine with their Ledger entries, expert compute) against
the same layer computed single-device for the same tokens, wall time, one thread, contenders interleaved.

Printed: milliseconds per call of each and their ratio (EP / single device), and the ratio of the bytes the
Ledger charged to the (P−1)/P·k·T·h·4 bytes of a balanced dispatch.

    python bench/moe_alltoall.py [--ranks 4] [--tokens 512] [--hidden 64] [--experts 8] [--repeat 20]
"""
from __future__ import annotations

import argparse
import time

import torch

from lab.comm import Ledger, SimulatedCollective
from lab.moe.model import MoEShape, init_model
from lab.moe.router import route
from lab.moe.strategies import ExpertParallelExperts, Replicated
from lab.topology import preset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    shape = MoEShape("mlp", 4, 2, hidden=a.hidden, num_layers=1, ffn=2 * a.hidden, num_experts=a.experts, top_k=2)
    _, experts = init_model(shape, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.ranks, a.tokens, a.hidden, generator=g)
    router = torch.randn(a.hidden, a.experts, generator=g) / a.hidden ** 0.5

    def one(strategy_cls):
        coll = SimulatedCollective(world_size=a.ranks, ledger=Ledger(preset("nvlink_node", a.ranks)))
        strat = strategy_cls(coll, shape)
        rows = strat.init_rows(experts).requires_grad_(True)
        xs = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        y = strat.layer(rows, 0, xs, route(xs @ router, top_k=2), tag="moe0")
        y.square().sum().backward()
        return time.perf_counter() - t0, coll.ledger

    times = {"ep": [], "single": []}
    for _ in range(a.repeat):  # interleaved
        times["ep"].append(one(ExpertParallelExperts)[0])
        times["single"].append(one(Replicated)[0])
    _, ledger = one(ExpertParallelExperts)
    dispatch = ledger.table().query("tag == 'moe0_dispatch'").bytes_intra.sum()
    balanced = (a.ranks - 1) / a.ranks * 2 * a.tokens * a.hidden * 4 * a.ranks
    ep, single = (sorted(v)[len(v) // 2] * 1e3 for v in (times["ep"], times["single"]))
    print(f"MoE layer fwd+bwd, {a.ranks} ranks x {a.tokens} tokens, h={a.hidden}, E={a.experts}, top-2")
    print(f"  expert parallel (simulated): {ep:.2f} ms   single device: {single:.2f} ms   ratio {ep / single:.2f}")
    print(f"  dispatch bytes charged / balanced (P-1)/P*k*T*h*4: {dispatch / balanced:.3f}")


if __name__ == "__main__":
    main()
