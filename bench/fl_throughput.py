"""Seconds per federated round: commlab against a per-client module loop, a hand-vmapped FedAvg round and
Flower's simulation engine, on one workload, interleaved, in one run.

Workload (bench/_fl_systems.py): FedAvg on digits, MLP 64-128-10, N clients of 16 examples each (the lab's
`examples_per_worker`, one partition for all), one local epoch (2 SGD steps of 8) per round, every client
every round, one torch thread per process; all contenders train on the same batches in the same order from
the same initial weights. Each contender runs in its own process; after its first round the coordinator asks
each in turn for k more rounds, `--reps` times, rotating the order, so slow and fast moments of a shared
machine fall on all of them. Printed and written to bench/results/fl_throughput.json:

- seconds per steady round (median over the repetitions of each repetition's mean round), and ratios:
  Flower / commlab, loop / commlab, commlab / vmap;
- time to first round (launch of the process to the end of round 1: interpreter, imports, data, model,
  setup — Flower's includes starting Ray), peak resident memory of the process tree, test accuracy;
- the machine's batched-matmul GFLOP/s measured in the same run (fp32 `torch.bmm` of the MLP's first layer
  over 1,000 clients, one thread) and the fraction of it commlab achieves (6 x parameters FLOPs per example);
- the load average while it ran (the machine may be shared), and the done-when targets of issue 11.

Flower runs only when its simulation extra is installed (`pip install -e '.[bench]'`: flwr[simulation]),
and only up to 1,000 clients. Usage: python bench/fl_throughput.py [--clients 10 100 1000 10000] [--reps 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fl_systems import Workload, worker  # noqa: E402

import lab  # noqa: E402,F401  (one intra-op thread, as the lab chooses)

#: rounds each contender runs per repetition (enough wall time to time, same for all contenders at one N)
ROUNDS_PER_REP = {10: 50, 100: 10, 1000: 2, 10000: 1}
FLOWER_MAX = 1000
OUT = Path(__file__).resolve().parent / "results" / "fl_throughput.json"


def flower_available() -> str | None:
    """Flower's version when flwr and its Ray simulation backend import, else None."""
    if importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None:
        return None
    from importlib.metadata import version

    return version("flwr")


def bmm_gflops(w: Workload, n: int = 1000, seconds: float = 0.3) -> float:
    """fp32 GFLOP/s of torch.bmm (n, B, 64) @ (n, 64, 128), the MLP's first layer over n clients, best of a
    few timed bursts."""
    a, b = torch.randn(n, w.batch, 64), torch.randn(n, 64, w.hidden)
    flops = 2 * n * w.batch * 64 * w.hidden
    torch.bmm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(5):
            torch.bmm(a, b)
        best = max(best, 5 * flops / (time.perf_counter() - t))
    return best / 1e9


class Contender:
    def __init__(self, system: str, w: Workload, n: int, rounds: int):
        self.system, self.n = system, n
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(target=worker, args=(system, w, n, rounds, child, time.time()),
                                                    name=f"fl-{system}-{n}")
        self.proc.start()
        child.close()  # the worker holds the other end: its exit shows here as EOF
        first = self._recv()
        self.ttfr, self.first_round, self.reps = first["ttfr"], first["first_round"], []

    def _recv(self, timeout: float = 3600.0) -> dict:
        end = time.time() + timeout
        while not self.conn.poll(1.0):
            if not self.proc.is_alive() or time.time() > end:
                raise RuntimeError(f"{self.system} x{self.n} died or hung (exit code {self.proc.exitcode})")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.system} x{self.n} died (exit code {self.proc.exitcode})") from None

    def rounds(self, k: int) -> None:
        self.conn.send(("rounds", k))
        self.reps.append(statistics.fmean(self._recv()["seconds"]))

    def finish(self) -> dict:
        self.conn.send(("finish", 0))
        out = self._recv()
        self.proc.join(120)
        return {"seconds_per_round": statistics.median(self.reps), "reps": self.reps, "ttfr_s": self.ttfr,
                "first_round_s": self.first_round, "peak_rss_mb": out["peak_rss"] / 2**20, "accuracy": out["accuracy"]}


def measure(w: Workload, n: int, systems: list[str], reps: int, loads: list, gflops: list) -> dict:
    k = ROUNDS_PER_REP.get(n, 1)
    rounds = 1 + reps * k
    contenders = []
    for s in systems:  # launched one after the other: each one's time to first round is its own
        print(f"  starting {s} x{n} ...", flush=True)
        contenders.append(Contender(s, w, n, rounds))
    for rep in range(reps):
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        for c in order:
            c.rounds(k)
        gflops.append(bmm_gflops(w))
        loads.append(os.getloadavg()[0])
    return {c.system: c.finish() for c in contenders}


def report(w: Workload, results: dict, gflops: float) -> dict:
    flops_per_client = w.steps * w.batch * 6 * w.num_params  # one round, forward and backward
    summary = {}
    head = f"{'N':>6} {'system':>8} {'s/round':>9} {'ttfr s':>7} {'peak MB':>8} {'acc':>6}"
    print(head)
    for n, res in results.items():
        for s, r in res.items():
            print(f"{n:>6} {s:>8} {r['seconds_per_round']:>9.4f} {r['ttfr_s']:>7.1f} {r['peak_rss_mb']:>8.0f} "
                  f"{r['accuracy']:>6.3f}")
        cl = res["commlab"]["seconds_per_round"]
        row = {}
        if "flower" in res:
            row["flower_over_commlab"] = res["flower"]["seconds_per_round"] / cl
        if "loop" in res:
            row["loop_over_commlab"] = res["loop"]["seconds_per_round"] / cl
        if "vmap" in res:
            row["commlab_over_vmap"] = cl / res["vmap"]["seconds_per_round"]
        accs = [r["accuracy"] for r in res.values()]
        row["accuracy_spread_points"] = 100 * (max(accs) - min(accs))
        row["commlab_gflops"] = n * flops_per_client / cl / 1e9
        row["commlab_fraction_of_bmm"] = row["commlab_gflops"] / gflops
        summary[n] = row
        print("       " + "  ".join(f"{k}={v:.3g}" for k, v in row.items()))
    return summary


def targets(summary: dict, results: dict) -> dict:
    """Issue 11's done-when, where this run measured it."""
    checks = {}
    s = {int(k): v for k, v in summary.items()}
    if "flower_over_commlab" in s.get(100, {}):
        checks["flower_100 >= 50x"] = s[100]["flower_over_commlab"] >= 50
    if "flower_over_commlab" in s.get(1000, {}):
        checks["flower_1000 >= 200x"] = s[1000]["flower_over_commlab"] >= 200
    if "loop_over_commlab" in s.get(1000, {}):
        checks["loop_1000 >= 10x"] = s[1000]["loop_over_commlab"] >= 10
    for n, row in s.items():
        if "commlab_over_vmap" in row:
            checks[f"vmap_{n} within 1.5x"] = row["commlab_over_vmap"] <= 1.5
        checks[f"accuracy_{n} within 1 point"] = row["accuracy_spread_points"] <= 1.0
    if 10000 in results:
        checks["mlp_10000 < 2 s/round"] = results[10000]["commlab"]["seconds_per_round"] < 2.0
    return checks


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--no-flower", action="store_true", help="skip Flower even if it is installed")
    ap.add_argument("--examples", type=int, default=Workload.examples, help="examples per client")
    ap.add_argument("--batch", type=int, default=Workload.batch, help="batch size (examples / batch local steps)")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the JSON ('-': nowhere)")
    args = ap.parse_args(argv)
    flower = None if args.no_flower else flower_available()
    if flower is None and not args.no_flower:
        print("Flower is not installed (pip install -e '.[bench]' adds flwr[simulation]): skipping it")
    w = Workload(examples=args.examples, batch=args.batch)
    if args.batch < 1 or args.examples % args.batch:
        raise SystemExit(f"--examples={args.examples} must be a multiple of --batch={args.batch}")
    loads, gflops = [os.getloadavg()[0]], [bmm_gflops(w)]
    print(f"cores {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} thread), flwr {flower}, "
          f"device cpu, load {loads[0]:.1f}, bmm {gflops[0]:.1f} GFLOP/s")
    results = {}
    for n in args.clients:
        systems = ["commlab", "loop", "vmap"] + (["flower"] if flower and n <= FLOWER_MAX else [])
        print(f"N = {n}: {', '.join(systems)}; {ROUNDS_PER_REP.get(n, 1)} rounds x {args.reps} reps", flush=True)
        results[n] = measure(w, n, systems, args.reps, loads, gflops)
    peak = statistics.median(gflops)
    summary = report(w, results, peak)
    checks = targets(summary, results)
    print("load average: " + ", ".join(f"{x:.1f}" for x in loads) + f"; bmm GFLOP/s median {peak:.1f}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    out = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "device": "cpu", "flwr": flower,
                       "load_average": loads, "bmm_gflops": gflops, "bmm_gflops_median": peak},
           "workload": {"dataset": "digits", "model": f"mlp 64-{w.hidden}-10", "examples_per_client": w.examples,
                        "batch_size": w.batch, "local_steps": w.steps, "lr": w.lr, "client_fraction": 1.0,
                        "rounds_per_rep": {n: ROUNDS_PER_REP.get(n, 1) for n in args.clients}, "reps": args.reps},
           "results": {str(n): r for n, r in results.items()}, "summary": {str(n): r for n, r in summary.items()},
           "targets": checks, "flower_skipped": flower is None}
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
