"""Time per attention layer (forward + backward) of each sequence-parallel method: simulated in one process
against 4 gloo processes, both as ratios to single-rank attention of the same total length.

For every method (Ring and BurstAttention causal zigzag, the others causal contiguous, LASP's linear
attention) on B × H × N × Dh:

- single: one process computes the whole layer (plain softmax attention, or the dense linear attention
  for LASP) with autograd — the baseline of the ratios;
- simulated: the method on 4 simulated ranks in this process (`lab.sequence`, SimulatedCollective);
- gloo: the method on 4 processes (one rank each, loopback gloo; the slowest rank's time);
- model: the topology's simulated clock for the same layer (`lab.sequence.cost.layer_cost` on the
  'ethernet' preset: CPU servers of 50 GFLOP/s on 10 Gb/s) — a prediction, printed beside the others.

Medians over --repeats, one intra-op thread everywhere, single and simulated interleaved. Printed: the
milliseconds and the ratios simulated/single, gloo/single and gloo/simulated. On a 2-core machine the 4
gloo processes share 2 cores, so gloo/single above 1 is expected here; what carries over is the ordering
of the methods and the gap between them.

    python bench/sequence_parallel.py [--seq 1024] [--heads 8] [--head-dim 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.cost import layer_cost
from lab.sequence.distributed_run import Case, case_inputs, run_case, run_on_gloo
from lab.sequence.kernels import attention
from lab.sequence.lasp import linear_attention, slopes
from lab.topology import preset

WORLD = 4
CASES = [Case("ring", True, "zigzag"), Case("token_ring", True), Case("ulysses", True), Case("usp", True),
         Case("burst", True, "zigzag"), Case("lss", True), Case("lasp")]


def single(case, shape):
    q, k, v, d_out = (t.requires_grad_() for t in case_inputs(case, world_size=WORLD, seed=0, **shape))
    t0 = time.perf_counter()
    out = linear_attention(q, k, v, slopes(shape["heads"])) if case.method == "lasp" else attention(
        q, k, v, causal=case.causal)
    out.backward(d_out.detach())
    return time.perf_counter() - t0


def simulated(case, shape, topology):
    coll = SimulatedCollective(world_size=WORLD, ledger=Ledger(topology))
    t0 = time.perf_counter()
    run_case(case, coll, world_size=WORLD, shape=shape, seed=0)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = dict(batch=args.batch, heads=args.heads, seq=args.seq, head_dim=args.head_dim)
    topology = preset("ethernet", WORLD)
    times = {c: {"single": [], "simulated": []} for c in CASES}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for c in CASES:
            times[c]["single"].append(single(c, shape))
            times[c]["simulated"].append(simulated(c, shape, topology))
    gloo = run_on_gloo(CASES, world_size=WORLD, shape=shape, repeats=args.repeats + 1, topology="ethernet")
    print(f"attention layer, forward + backward: B={args.batch} H={args.heads} N={args.seq} Dh={args.head_dim}, "
          f"{WORLD} ranks, 1 thread each; medians of {args.repeats}")
    print(f"{'method':12s} {'single ms':>10s} {'sim ms':>9s} {'gloo ms':>9s} {'model ms':>9s} "
          f"{'sim/single':>11s} {'gloo/single':>12s} {'gloo/sim':>9s}")
    for c, res in zip(CASES, gloo):
        one = statistics.median(times[c]["single"][1:])
        sim = statistics.median(times[c]["simulated"][1:])
        dist_ms = statistics.median(res["seconds"].max(dim=0).values[1:].tolist())  # slowest rank per repeat
        model = layer_cost(c.method, topology=topology, causal=c.causal, layout=c.layout,
                           ulysses_degree=topology.ranks_per_node, **{k: v for k, v in shape.items()})
        name = c.method + (" zz" if c.layout == "zigzag" else "")
        print(f"{name:12s} {one * 1e3:10.2f} {sim * 1e3:9.2f} {dist_ms * 1e3:9.2f} {model['sim_seconds'] * 1e3:9.3f} "
              f"{sim / one:11.2f} {dist_ms / one:12.2f} {dist_ms / sim:9.2f}")


if __name__ == "__main__":
    main()
