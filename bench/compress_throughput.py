"""Encode + decode throughput of every compressor on one large vector, beside a plain tensor copy.

For a 10M-element fp32 vector (40 MB) — one row, as one worker's message —
each compressor is built as the techniques build it (`make_compressor` at the
given ratio; PowerSGD sees the vector as a 2500 × 4000 matrix) and timed on
compress followed by decompress, best of `--repeats` after a warm-up. The
baseline in the same run is `torch.Tensor.clone` of the same vector.
Throughput is dense bytes over time (GB/s), and the last column is that
throughput over the copy's. 'none' (the vector itself, no work) and 3SFC are
left out: 3SFC's cost is fitting a synthetic sample through a model, not a
function of the vector.

Usage: python bench/compress_throughput.py [--numel 10000000] [--ratio 0.01] [--repeats 3] [--only topk qsgd]
"""
from __future__ import annotations

import argparse
import time

import torch

from lab.compress import COMPRESSORS, make_compressor


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=10_000_000)
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="compressors to time (default: all but 3sfc)")
    args = ap.parse_args(argv)
    names = args.only or [c for c in COMPRESSORS if c not in ("none", "3sfc")]
    n = args.numel
    v = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    dense = 4 * n
    rows = max(1, round((n / 1.6) ** 0.5))  # a 2500 x 4000 matrix for 10M values
    shapes = [(rows, n // rows)] + ([(n - rows * (n // rows),)] if n % rows else [])

    copy_s = best_time(lambda: v.clone(), args.repeats)
    copy_gbs = dense / copy_s / 1e9
    print(f"{n:,} fp32 values ({dense / 1e6:.0f} MB), ratio {args.ratio}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'compressor':14s} {'parameter':28s} {'measured':>9s} {'enc+dec s':>10s} {'GB/s':>8s} {'vs copy':>9s}")
    print(f"{'copy (clone)':14s} {'':28s} {1.0:9.4f} {copy_s:10.4f} {copy_gbs:8.2f} {1.0:9.4f}")
    for name in names:
        comp = make_compressor(name, ratio=args.ratio, shapes=shapes)
        packet = comp.compress(v)
        ratio = comp.measured_ratio(packet, n)
        seconds = best_time(lambda c=comp: c.decompress(c.compress(v)), args.repeats)
        gbs = dense / seconds / 1e9
        print(f"{name:14s} {comp.describe(n):28s} {ratio:9.4f} {seconds:10.4f} {gbs:8.3f} {gbs / copy_gbs:9.4f}",
              flush=True)


if __name__ == "__main__":
    main()
