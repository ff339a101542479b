"""Which torch thread count is fastest for the lab's workloads on this machine, measured in one run.

Interleaves contenders (1, 2, ..., all cores threads) over repetitions and prints seconds per DDP step of the
digits MLP with 8 workers and per step of the tiny GPT, with the ratio to one thread. `lab.threads` chooses
one thread by default from this measurement (small models: parallel kernels only add contention).
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from lab.config import config_for
from lab.experiment import build_context
from lab.registry import technique


def seconds_per_step(config, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    ctx, _ = build_context(config)
    t = technique(config.technique)(config)
    t.setup(ctx)
    t.round(ctx)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        t.round(ctx)
    return (time.perf_counter() - start) / steps


def main() -> None:
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores} & set(range(1, cores + 1)))
    workloads = {"ddp mlp x8": config_for("ddp", num_workers=8, steps=10_000),
                 "ddp gpt x4": config_for("ddp", num_workers=4, steps=10_000, dataset="chars", model="gpt",
                                          batch_size=8, lr=0.01)}
    print(f"cores: {cores}; thread counts: {counts}; torch {torch.__version__}")
    for name, cfg in workloads.items():
        times = {n: [] for n in counts}
        for _ in range(3):  # interleaved repetitions
            for n in counts:
                times[n].append(seconds_per_step(cfg, n, steps=20))
        base = statistics.median(times[1])
        for n in counts:
            med = statistics.median(times[n])
            print(f"{name:12s} threads={n:<3d} {med * 1e3:8.2f} ms/step  ratio to 1 thread: {med / base:5.2f}")
    torch.set_num_threads(1)


if __name__ == "__main__":
    main()
