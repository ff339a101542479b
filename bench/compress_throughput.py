"""Compressors: encode + decode throughput beside a copy, and payload vs traffic ratios at P = 4..32.

Part 1 (throughput). For a 10M-element fp32 vector (40 MB) — one row, as one
worker's message — each compressor is built as the techniques build it
(`make_compressor` at the given payload ratio; PowerSGD sees the vector as a
2500 × 4000 matrix) and timed on compress followed by decompress, best of
`--repeats` after a warm-up, beside `torch.Tensor.clone` of the same vector.
Throughput is dense bytes over time (GB/s); the last column is that over the
copy's.

Part 2 (ratios). For the digits MLP's layout (4810 values in 4 tensors) on
the `ethernet` topology, each compressor's channel is built as a technique
builds it (`lab.compress.build_channel`, `compression_ratio` = the target
*traffic* ratio `--target`) and one exchange of Gaussian rows runs on a
simulated collective at each P: the algorithm the topology chose, the
compressor's parameter, the `payload_ratio` (one message over 4d) and the
`traffic_ratio` (the busiest rank's bytes over the dense ring all-reduce's
2(P-1)/P · 4d), beside "before": the traffic when `--target` is taken as the
payload ratio and the messages are all-gathered, as every compressor but fp16
and PowerSGD did before the two-phase algorithm.

Part 3 (issue 9's targets, from training runs on digits): DDP with int8 and
with top-k at traffic 0.1 (bytes per rank over the dense DDP run's), and
Streaming DiLoCo at 4 bits (its bytes over its fp32 run's), at P = 8, 16, 32.

'none' and 3SFC are left out of parts 1-2: 'none' is the vector itself, and
3SFC's cost is fitting a synthetic sample through a model.

Usage: python bench/compress_throughput.py [--numel 10000000] [--ratio 0.01] [--repeats 3] [--only topk qsgd]
       [--target 0.1] [--workers 4 8 16 32] [--skip-throughput] [--skip-runs]
"""
from __future__ import annotations

import argparse
import time

import torch

from lab.comm import Ledger, SimulatedCollective
from lab.compress import COMPRESSORS, Channel, build_channel, make_compressor, make_feedback
from lab.compress.registry import spec
from lab.topology import preset

MLP = [(64, 64), (64,), (10, 64), (10,)]  # the digits MLP: 4810 values


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput(names, n: int, ratio: float, repeats: int) -> None:
    v = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    dense = 4 * n
    rows = max(1, round((n / 1.6) ** 0.5))  # a 2500 x 4000 matrix for 10M values
    shapes = [(rows, n // rows)] + ([(n - rows * (n // rows),)] if n % rows else [])
    copy_s = best_time(lambda: v.clone(), repeats)
    copy_gbs = dense / copy_s / 1e9
    print(f"{n:,} fp32 values ({dense / 1e6:.0f} MB), payload ratio {ratio}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'compressor':14s} {'parameter':28s} {'payload':>9s} {'enc+dec s':>10s} {'GB/s':>8s} {'vs copy':>9s}")
    print(f"{'copy (clone)':14s} {'':28s} {1.0:9.4f} {copy_s:10.4f} {copy_gbs:8.2f} {1.0:9.4f}")
    for name in names:
        comp = make_compressor(name, ratio=ratio, shapes=shapes)
        payload = comp.payload_ratio(comp.compress(v), n)
        seconds = best_time(lambda c=comp: c.decompress(c.compress(v)), repeats)
        gbs = dense / seconds / 1e9
        print(f"{name:14s} {comp.describe(n):28s} {payload:9.4f} {seconds:10.4f} {gbs:8.3f} {gbs / copy_gbs:9.4f}",
              flush=True)


def exchange(name: str, target: float, p: int, *, before: bool = False) -> tuple[str, str, dict]:
    """(algorithm, parameter, columns) of one exchange of compressor `name` over p ranks on `ethernet`;
    before=True: `target` as the payload ratio and the messages all-gathered (commlab before two-phase)."""
    t = preset("ethernet", p)
    feedback = "ef" if spec(name).feedback else "none"
    if before:
        t = t.pin({"compressed_all_reduce": "all_gather"})
        comp = make_compressor(name, ratio=target, shapes=MLP, scope="layer")
        channel = Channel(comp, make_feedback(feedback, comp), shapes=MLP)
    else:
        channel = build_channel(name, target=target, scope="layer", error_feedback=feedback, eta=0.0, seed=0,
                                shapes=MLP)
    coll = SimulatedCollective(world_size=p, ledger=Ledger(t))
    rows = torch.randn(p, sum(torch.Size(s).numel() for s in MLP), generator=torch.Generator().manual_seed(p))
    channel.all_reduce_mean(rows, coll, tag="bench")
    plans = list(channel.plans.values())
    parameter = plans[0].describe() if plans else channel.compressor.describe(rows.shape[1])
    return channel.algorithm, parameter, channel.columns()


def ratios(names, target: float, workers) -> None:
    print(f"\npayload and traffic ratios: digits MLP (4810 values), ethernet, compression_ratio {target} "
          "(a traffic target)")
    print(f"{'compressor':14s} {'P':>3s} {'algorithm':11s} {'parameter':38s} {'payload':>8s} {'traffic':>8s} "
          f"{'before: traffic':>16s}")
    for name in names:
        for p in workers:
            algorithm, parameter, cols = exchange(name, target, p)
            gathered = exchange(name, target, p, before=True)[2]["traffic_ratio"]
            print(f"{name:14s} {p:3d} {algorithm:11s} {parameter[:38]:38s} {cols['payload_ratio']:8.4f} "
                  f"{cols['traffic_ratio']:8.4f} {gathered:16.4f}", flush=True)


def runs(workers) -> None:
    from lab.config import ExperimentConfig
    from lab.experiment import run

    def per_rank(cfg) -> float:
        return float(run(cfg, save=False, progress=False).metrics.bytes.iloc[-1])

    print("\nissue 9 targets (training runs on digits, ethernet): bytes per run over the dense run's")
    print(f"{'run':34s} {'P':>3s} {'ratio':>7s} {'target':>7s}")
    for p in workers:
        ddp = ExperimentConfig(technique="ddp", num_workers=p, steps=4, eval_every=4, topology="ethernet")
        dense = per_rank(ddp)
        for label, cfg, goal in (("DDP int8 (two-phase)", ddp.replace(compressor="int8"), 0.30),
                                 ("DDP top-k, traffic 0.1", ddp.replace(compressor="topk", compression_ratio=0.1),
                                  0.12)):
            print(f"{label:34s} {p:3d} {per_rank(cfg) / dense:7.4f} {goal:7.2f}", flush=True)
        sd = ExperimentConfig(technique="streaming_diloco", num_workers=p, steps=16, sync_period=8, num_fragments=2,
                              eval_every=16, topology="ethernet")
        print(f"{'Streaming DiLoCo 4 bits vs 32':34s} {p:3d} {per_rank(sd.replace(outer_bits=4)) / per_rank(sd):7.4f} "
              f"{0.15:7.2f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=10_000_000)
    ap.add_argument("--ratio", type=float, default=0.01, help="payload ratio of the throughput table")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="compressors (default: all but none and 3sfc)")
    ap.add_argument("--target", type=float, default=0.1, help="traffic target of the ratio table")
    ap.add_argument("--workers", type=int, nargs="*", default=[4, 8, 16, 32])
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-runs", action="store_true")
    args = ap.parse_args(argv)
    names = args.only or [c for c in COMPRESSORS if c not in ("none", "3sfc")]
    if not args.skip_throughput:
        throughput(names, args.numel, args.ratio, args.repeats)
    ratios(names, args.target, args.workers)
    if not args.skip_runs:
        runs([p for p in args.workers if p >= 8])


if __name__ == "__main__":
    main()
