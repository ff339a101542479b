"""Peak memory of one DDP step with up to 10⁵ simulated workers, beside the (P+1)² matrix the Ledger used to keep.

Issue 10, item 6: the Ledger held a (P+1) × (P+1) float64 matrix of rank-to-rank
bytes (and every call's cost another), so 10⁴ workers of a 21-parameter model
peaked at about 3 GB and 10⁵ could not start. It now keeps (P,) rows shared by
equal calls and a sparse traffic of the pairs that talked (`lab.comm.ledger`).

For each P, a fresh Python process (so one size's peak cannot hide in another's)
runs `technique='ddp'`, `dataset='lstsq'`, `model='linear'` (20 features + a bias:
21 parameters), `topology='phones'` (a star: every client uploads to and downloads
from the server), one step of batch 4, and reports its peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the operating system's view, data and
interpreter included) and the bytes of the Ledger's own tables
(`Ledger.memory_bytes`). Printed: both, and each over the 8·(P+1)² bytes of the
old matrix.

    python bench/ledger_scale.py [--sizes 1000 10000 100000] [--limit-gb 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(p: int) -> dict:
    """One DDP step at P workers in this process: peak RSS, the Ledger's bytes, wall seconds."""
    import resource

    import torch

    torch.set_num_threads(1)
    from lab.comm.ledger import Ledger
    from lab.config import ExperimentConfig
    from lab.experiment import run

    ledgers = []
    original = Ledger.__init__

    def keep(self, *args, **kwargs):  # hold on to the run's Ledger to weigh it afterwards
        original(self, *args, **kwargs)
        ledgers.append(self)

    Ledger.__init__ = keep
    t0 = time.perf_counter()
    cfg = ExperimentConfig(technique="ddp", dataset="lstsq", model="linear", num_workers=p, steps=1, eval_every=1,
                           batch_size=4, topology="phones")
    r = run(cfg, save=False, progress=False)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    ledger = ledgers[-1]
    return {"P": p, "status": r.status, "params": int(r.model.numel()), "entries": len(ledger.entries),
            "bytes": int(r.metrics.bytes.iloc[-1]), "peak_rss": peak, "ledger_bytes": ledger.memory_bytes(),
            "estimate": ledger.estimate_bytes(p), "wall_s": wall}


def measure(p: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(p)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"P={p} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--limit-gb", type=float, default=4.0, help="the bound the peak is held to (issue 10: 4 GB)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    print("one DDP step, lstsq/linear (21 parameters), topology phones, batch 4; a fresh process per P")
    print(f"{'P':>8s} {'status':>8s} {'peak RSS':>10s} {'Ledger':>10s} {'estimate':>10s} {'old matrix':>12s} "
          f"{'peak/old':>9s} {'Ledger/old':>11s} {'wall':>7s}")
    rows = []
    for p in args.sizes:
        m = measure(p)
        old = 8 * (p + 1) ** 2
        rows.append(m)
        print(f"{p:8d} {m['status']:>8s} {m['peak_rss'] / 2**20:8.0f}MB {m['ledger_bytes'] / 2**20:8.2f}MB "
              f"{m['estimate'] / 2**20:8.2f}MB {old / 2**30:10.3f}GB {m['peak_rss'] / old:9.4f} "
              f"{m['ledger_bytes'] / old:11.2e} {m['wall_s']:6.1f}s", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"Ledger bytes grow {b['ledger_bytes'] / a['ledger_bytes']:.1f}x for {b['P'] / a['P']:.0f}x the ranks "
              f"(linear: {b['P'] / a['P']:.0f}x; the old matrix: {(b['P'] + 1) ** 2 / (a['P'] + 1) ** 2:.0f}x)")
    worst = max(rows, key=lambda m: m["peak_rss"])
    verdict = "within" if worst["peak_rss"] <= args.limit_gb * 1e9 else "OVER"
    print(f"largest peak: {worst['peak_rss'] / 1e9:.2f} GB at P={worst['P']} ({verdict} {args.limit_gb:g} GB)")


if __name__ == "__main__":
    main()
