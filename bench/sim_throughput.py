"""Worker-steps per second: the rank-stacked (vmapped) cluster against a loop over per-worker modules.

For N = 10, 100, 1000 MLP workers on digits, both sides do the same work per
step — each worker's forward, backward and SGD update on its own batch of 32 —
and are timed in the same run, after a warm-up. Prints the ratio
vectorized / loop. Usage: python bench/sim_throughput.py [--workers 10 100 1000]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from lab.cluster import Cluster
from lab.data import load_digits
from lab.models import build_model


def batches(n: int, steps: int, data, batch: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data.num_train, (steps, n, batch), generator=g)
    return data.x_train[idx], data.y_train[idx]  # (steps, N, B, 64), (steps, N, B)


def time_vectorized(module, n: int, xs, ys) -> float:
    cl = Cluster(module, num_workers=n, loss_fn=F.cross_entropy)
    opt = torch.optim.SGD([cl.params], lr=0.1)
    cl.backward(xs[0], ys[0])
    opt.step()
    t0 = time.perf_counter()
    for x, y in zip(xs[1:], ys[1:]):
        cl.backward(x, y)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (len(xs) - 1) * n / (time.perf_counter() - t0)


def time_loop(module, n: int, xs, ys) -> float:
    workers = [copy.deepcopy(module) for _ in range(n)]
    opts = [torch.optim.SGD(w.parameters(), lr=0.1) for w in workers]

    def step(x, y):
        for r, (w, o) in enumerate(zip(workers, opts)):
            loss = F.cross_entropy(w(x[r]), y[r])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    step(xs[0], ys[0])
    t0 = time.perf_counter()
    for x, y in zip(xs[1:], ys[1:]):
        step(x, y)
    return (len(xs) - 1) * n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--worker-steps", type=int, default=4000, help="worker-steps timed per side (approx.)")
    args = ap.parse_args(argv)
    data = load_digits()
    module = build_model("mlp", data, seed=0).module
    print(f"{'N':>6} {'vectorized w-steps/s':>22} {'loop w-steps/s':>16} {'ratio':>7}")
    for n in args.workers:
        steps = max(3, args.worker_steps // n) + 1
        xs, ys = batches(n, steps, data)
        vec = time_vectorized(module, n, xs, ys)
        loop = time_loop(module, n, xs, ys)
        print(f"{n:>6} {vec:>22,.0f} {loop:>16,.0f} {vec / loop:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
