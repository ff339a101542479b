"""Bytes and simulated time for DiLoCo and Streaming DiLoCo to reach the loss DDP reaches, on the character LM.

In one run: DDP trains the tiny character GPT for `--steps` steps on `--workers`
workers; its final test loss is the target. Then DiLoCo (H = 10, 50, 100) and
Streaming DiLoCo (fp32, and 4-bit outer gradients) train from the same
initialisation and data until their test loss first reaches the target (or
`--max-factor` × the steps, whichever comes first). For each, the bytes sent
and the simulated seconds (1 Gb/s, 30 ms WAN between sites, compute from the
device profile) at that point are printed as ratios against DDP's numbers at
the point it reached the same loss. Evaluation happens at the end of rounds,
so DiLoCo with a large H is only checked every H steps.

Usage: python bench/diloco_vs_ddp.py [--steps 240] [--workers 4] [--max-factor 4]
"""
from __future__ import annotations

import argparse
import math
import threading
import time

from lab.experiment import ExperimentConfig, run


def reach(config: ExperimentConfig, target: float) -> tuple[dict | None, float, float]:
    """Train until the test loss first reaches `target`: (that metrics row or None, best loss, wall seconds)."""
    stop = threading.Event()
    best = [float("inf")]

    def on_row(row):
        loss = row.get("eval_loss", float("nan"))
        if not math.isnan(loss):
            best[0] = min(best[0], loss)
            if loss <= target:
                stop.set()

    t0 = time.perf_counter()
    r = run(config, save=False, progress=False, callback=on_row, stop=stop)
    wall = time.perf_counter() - t0
    hit = r.metrics[r.metrics.eval_loss <= target]
    return (hit.iloc[0].to_dict() if len(hit) else None), best[0], wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=240, help="DDP's steps; its final test loss is the target")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-factor", type=float, default=4.0, help="others may take this many times DDP's steps")
    args = ap.parse_args(argv)

    base = ExperimentConfig(dataset="chars", model="gpt", optimizer="adamw", lr=3e-3, batch_size=8,
                            num_workers=args.workers, steps=args.steps, topology="wan_sites", eval_every=10)
    t0 = time.perf_counter()
    ddp = run(base.replace(technique="ddp"), save=False, progress=False)
    ddp_wall = time.perf_counter() - t0
    target = float(ddp.metrics.eval_loss.dropna().iloc[-1])
    ddp_row = ddp.metrics[ddp.metrics.eval_loss <= target].iloc[0]
    print(f"DDP: {args.steps} steps on {args.workers} workers reach test loss {target:.4f} at step "
          f"{int(ddp_row.step)}: {int(ddp_row.bytes):,} bytes, {ddp_row.sim_seconds:.3f} s simulated "
          f"(wall {ddp_wall:.1f} s)")

    longer = int(args.max_factor * args.steps)
    others = {f"DiLoCo H={h}": base.replace(technique="diloco", sync_period=h, steps=longer) for h in (10, 50, 100)}
    others["Streaming DiLoCo H=50 P=5 tau=1"] = base.replace(technique="streaming_diloco", sync_period=50,
                                                             num_fragments=5, overlap_steps=1, steps=longer)
    others["Streaming DiLoCo H=50 P=5 tau=1 4-bit"] = others["Streaming DiLoCo H=50 P=5 tau=1"].replace(outer_bits=4)

    print(f"\n{'technique':40s} {'steps':>6s} {'bytes / DDP':>12s} {'sim time / DDP':>15s} {'wall s':>7s}")
    for label, config in others.items():
        row, best, wall = reach(config, target)
        if row is None:
            print(f"{label:40s} {'-':>6s} {'not reached':>12s} {f'(best {best:.4f})':>15s} {wall:7.1f}")
            continue
        print(f"{label:40s} {int(row['step']):6d} {row['bytes'] / ddp_row.bytes:12.5f} "
              f"{row['sim_seconds'] / ddp_row.sim_seconds:15.5f} {wall:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
