"""Peak memory per process of DDP and ZeRO 1/2/3 on 4 gloo processes, measured, beside the memory model.

Each scheme trains a ~50M-parameter MLP (64 → 4×4096 → 10, AdamW, fp32) on digits
for a few steps in 4 fresh gloo processes (one per rank, fresh so that one scheme's
peak cannot hide in another's). What is measured is the operating system's view
of each process: its resident set (Linux VmRSS/VmHWM in /proc/self/status). The
baseline is the resident set after start-up — torch, the process group, the data
and a warm-up step of a small model through the same code path, so lazily created
thread pools and caches belong to it. The 50M model and the technique are then
set up, the peak-RSS counter is reset (`echo 5 > /proc/self/clear_refs`, so the
temporary copies made while building the model do not count), the steps run, and
measured = peak RSS − baseline.
Tensors this large are allocated with mmap and returned to the system when freed,
so the resident set follows the tensors alive (no allocator cache hides or adds
memory); torch's CPU allocator keeps no statistics of its own, which is why RSS is
the measure here.

The prediction is `lab.sharding.memory.lab_peak`: the bytes of the tensors each phase
of a step holds (parameters, slices, moments, gradients, the backward's workspace,
collective buffers, AdamW's temporaries), maximized over the phases. Printed: measured
and predicted MB per process, the error, and both as ratios against DDP's.

    python bench/sharding_memory.py [--steps 3] [--width 4096] [--depth 4]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 4
SCHEMES = [("DDP", "ddp", 0), ("ZeRO-1", "zero", 1), ("ZeRO-2", "zero", 2), ("ZeRO-3", "zero", 3)]


class DeepMLP(nn.Module):
    """64 → width × depth → 10 with ReLU; the output layer has no bias (so d is a multiple of 8: no padding)."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        dims = [64] + [width] * depth + [10]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=i < depth) for i, (a, b) in enumerate(zip(dims, dims[1:])))

    def forward(self, x):  # (B, 64) -> (B, 10)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = F.relu(x) if i < len(self.layers) - 1 else x
        return x


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _release():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _context(config, width, depth, data, shards, collective):
    from lab.cluster import Cluster
    from lab.comm import Ledger
    from lab.data import RankBatches
    from lab.models import ModelSpec
    from lab.optim import make_optimizer
    from lab.technique import TrainContext
    from lab.topology import preset

    torch.manual_seed(config.seed)
    model = DeepMLP(width, depth)
    cluster = Cluster(model, num_workers=WORLD, loss_fn=F.cross_entropy, ranks=collective.ranks)
    for p in model.parameters():  # the cluster holds the weights; the module's own copies are not needed
        p.data = torch.empty(0)
    topology = preset(config.topology, WORLD)
    collective.ledger = Ledger(topology)
    batches = RankBatches(data.x_train, data.y_train, shards, batch_size=config.batch_size, seed=config.seed,
                          ranks=collective.ranks)
    spec = ModelSpec(model, F.cross_entropy, lambda o, y: {}, 6.0 * cluster.dim)
    opt = make_optimizer(config, cluster.params, cluster=cluster) if config.technique == "ddp" else None
    return TrainContext(config, cluster, collective, collective.ledger, topology, batches, spec, opt)


def _worker(rank, port, technique, stage, steps, width, depth, out_dir):
    from lab.comm import Ledger
    from lab.comm.distributed import DistributedCollective
    from lab.data import load_dataset, partition
    from lab.experiment import ExperimentConfig
    from lab.registry import technique as technique_class
    from lab.topology import preset

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    try:
        config = ExperimentConfig(technique=technique, zero_stage=max(stage, 1), num_workers=WORLD, optimizer="adamw",
                                  lr=1e-3, batch_size=32, backend="distributed")
        data = load_dataset("digits", seed=0, num_workers=WORLD)
        shards = partition(data.num_train, data.labels, scheme="iid", num_workers=WORLD, seed=0)
        coll = DistributedCollective(ledger=Ledger(preset(config.topology, WORLD)))
        # warm-up through the same code path on a small model: pools and caches join the baseline
        ctx = _context(config, 64, depth, data, shards, coll)
        t = technique_class(technique)(config)
        t.setup(ctx)
        for _ in range(2):
            t.round(ctx)
        del ctx, t
        _release()
        base = _status("VmRSS")
        ctx = _context(config, width, depth, data, shards, coll)
        t = technique_class(technique)(config)
        t.setup(ctx)
        _release()
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS counter to the current RSS
            f.write("5")
        for _ in range(steps):
            t.round(ctx)
        peak = _status("VmHWM") - base
        torch.save({"peak": peak, "dim": ctx.cluster.dim}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def measure(technique: str, stage: int, *, steps: int, width: int, depth: int) -> tuple[list[int], int]:
    from lab.launch import free_port

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(free_port(), technique, stage, steps, width, depth, out), nprocs=WORLD, join=True)
        got = [torch.load(os.path.join(out, f"{r}.pt"), weights_only=True) for r in range(WORLD)]
    return [g["peak"] for g in got], got[0]["dim"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=4)
    args = ap.parse_args(argv)
    if not os.path.exists("/proc/self/clear_refs"):
        print("this benchmark reads Linux /proc/self/status and resets /proc/self/clear_refs; not available here")
        return 1
    from lab.sharding.memory import lab_peak

    rows = []
    for label, technique, stage in SCHEMES:
        peaks, d = measure(technique, stage, steps=args.steps, width=args.width, depth=args.depth)
        phases = lab_peak(d, stage, WORLD, optimizer="adamw")
        predicted = max(phases.values())
        rows.append((label, max(peaks), sum(peaks) / len(peaks), predicted, max(phases, key=phases.get)))
        print(f"  measured {label}: per-rank peaks {[round(p / 1e6) for p in peaks]} MB", flush=True)
    print(f"\n{d / 1e6:.1f}M parameters, AdamW fp32, {WORLD} gloo processes, {args.steps} steps; "
          "MB per process above the start-up baseline")
    print(f"{'scheme':8} {'measured':>9} {'predicted':>9} {'error':>7} {'peak phase':>15} "
          f"{'measured/DDP':>13} {'predicted/DDP':>14}")
    ddp_m, ddp_p = rows[0][1], rows[0][3]
    worst = 0.0
    for label, meas, _, pred, phase in rows:
        err = (pred - meas) / meas
        if label != "DDP":
            worst = max(worst, abs(err))
        print(f"{label:8} {meas / 1e6:9.0f} {pred / 1e6:9.0f} {err:+7.1%} {phase:>15} {meas / ddp_m:13.2f} "
              f"{pred / ddp_p:14.2f}")
    print(f"\nlargest |predicted - measured| / measured over ZeRO 1/2/3: {worst:.1%} (target: within 15%)")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
