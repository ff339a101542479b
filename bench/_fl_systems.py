"""The contenders of bench/fl_throughput.py, each run in its own process and paused between rounds.

One workload for all (`Workload`): FedAvg on digits with the MLP 64-128-10 from the same initial weights, N
clients of `examples` examples each (`lab.data.partition(..., examples_per_worker=examples)`, the same
partition for everyone), one local epoch per round = examples / batch plain-SGD steps, every client in every
round, the server averaging the clients' models weighted by their example counts. Every contender takes the same
batches in the same order (the lab's own per-client streams, `lab.batches.RankBatches`), so they compute the
same models up to float rounding and their test accuracies agree.

- `commlab`: `lab.experiment.run` of technique='fedavg' — the lab as a user runs it (its round loop, Ledger,
  clock and metrics rows included);
- `loop`: one torch module and a torch.optim.SGD, client after client, as a plain simulation would;
- `vmap`: a minimal FedAvg round written by hand with torch.func (vmap of grad over the clients' stacked
  parameters, then a weighted mean);
- `flower`: Flower's simulation engine (`flwr.simulation.run_simulation`, Ray backend) with a NumPyClient
  training the same module (bench/_fl_flower.py).

The worker process reports to the coordinator through a pipe (`Gate`): after its first round it sends its time
to first round (from the moment the coordinator launched it: interpreter start, imports, data, model, setup),
then runs k rounds per command and sends their durations, so the coordinator interleaves the contenders. A
thread samples the resident memory of the worker's process tree (Ray's processes included) for its peak.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    examples: int = 16  # per client
    batch: int = 8
    hidden: int = 128
    lr: float = 0.5
    seed: int = 0

    @property
    def steps(self) -> int:
        """Local steps per round: one epoch."""
        return self.examples // self.batch

    @property
    def num_params(self) -> int:
        return 64 * self.hidden + self.hidden + self.hidden * 10 + 10


# ---- measuring -----------------------------------------------------------------------------------------------
def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


class PeakRSS(threading.Thread):
    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peak = every, 0

    def run(self):
        while True:
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            time.sleep(self.every)


class Gate:
    """Called after every round with its duration; answers the coordinator and waits for the next command."""

    def __init__(self, conn, launched: float):
        self.conn, self.launched, self.budget, self.times = conn, launched, 1, []

    def after_round(self, seconds: float) -> None:
        self.times.append(seconds)
        self.budget -= 1
        if self.budget:
            return
        if len(self.times) == 1:
            self.conn.send({"ttfr": time.time() - self.launched, "first_round": seconds})
        else:
            self.conn.send({"seconds": self.times[-self.asked:]})
        cmd = self.conn.recv()
        self.budget = self.asked = cmd[1] if cmd[0] == "rounds" else 0


# ---- the shared workload ---------------------------------------------------------------------------------------
def workload(w: Workload, n: int, rounds: int):
    """(data, shards, order (rounds, steps, n, batch) example indices, initial module): what every contender
    trains on, in the lab's batch order."""
    import torch

    from lab.batches import RankBatches
    from lab.data import load_dataset, partition
    from lab.models import build_model

    data = load_dataset("digits")
    shards = partition(data.num_train, data.labels, scheme="iid", num_workers=n, seed=w.seed,
                       examples_per_worker=w.examples)
    ids = torch.arange(data.num_train)
    stream = RankBatches(ids, ids, shards, batch_size=w.batch, seed=w.seed, ranks=list(range(n)))
    order = torch.stack([stream.next()[0] for _ in range(rounds * w.steps)]).view(rounds, w.steps, n, w.batch)
    module = build_model("mlp", data, seed=w.seed, hidden=w.hidden).module
    return data, shards, order, module


def accuracy(module, data) -> float:
    import torch

    with torch.no_grad():
        return float((module(data.x_test).argmax(-1) == data.y_test).float().mean())


# ---- the contenders ---------------------------------------------------------------------------------------
def run_commlab(w: Workload, n: int, rounds: int, gate: Gate) -> float:
    from lab.config import config_for
    from lab.experiment import run

    cfg = config_for("fedavg", num_workers=n, rounds=rounds, batch_size=w.batch, examples_per_worker=w.examples,
                     mlp_hidden=w.hidden, lr=w.lr, seed=w.seed, topology="phones", eval_every=10**7)
    mark = [time.perf_counter()]

    def after(row):
        gate.after_round(time.perf_counter() - mark[0])
        mark[0] = time.perf_counter()

    r = run(cfg, save=False, progress=False, callback=after)
    assert r.status == "finished", (r.status, r.error)
    return float(r.metrics.eval_accuracy.iloc[-1])


def run_loop(w: Workload, n: int, rounds: int, gate: Gate) -> float:
    import torch
    import torch.nn.functional as F
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    data, shards, order, model = workload(w, n, rounds)
    x, y = data.x_train, data.y_train
    weights = torch.tensor([len(s) for s in shards], dtype=torch.float32)
    weights /= weights.sum()
    opt = torch.optim.SGD(model.parameters(), lr=w.lr)
    global_ = parameters_to_vector(model.parameters()).detach()
    for r in range(rounds):
        t0 = time.perf_counter()
        total = torch.zeros_like(global_)
        for i in range(n):
            vector_to_parameters(global_.clone(), model.parameters())  # (the parameters become views of it)
            for t in range(w.steps):
                idx = order[r, t, i]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            total += weights[i] * parameters_to_vector(model.parameters()).detach()
        global_ = total
        gate.after_round(time.perf_counter() - t0)
    vector_to_parameters(global_, model.parameters())
    return accuracy(model, data)


def run_vmap(w: Workload, n: int, rounds: int, gate: Gate) -> float:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    data, shards, order, model = workload(w, n, rounds)
    x, y = data.x_train, data.y_train
    weights = torch.tensor([len(s) for s in shards], dtype=torch.float32)
    weights /= weights.sum()  # (n,)

    def loss_fn(params, xb, yb):
        return F.cross_entropy(functional_call(model, params, (xb,)), yb)

    client_grads = vmap(grad(loss_fn))
    global_ = {k: v.detach() for k, v in model.named_parameters()}
    for r in range(rounds):
        t0 = time.perf_counter()
        params = {k: v.expand(n, *v.shape) for k, v in global_.items()}  # (n, ...) every client starts here
        for t in range(w.steps):
            idx = order[r, t]  # (n, B)
            g = client_grads(params, x[idx], y[idx])
            params = {k: p - w.lr * g[k] for k, p in params.items()}
        global_ = {k: torch.tensordot(weights, p, dims=1) for k, p in params.items()}
        gate.after_round(time.perf_counter() - t0)
    model.load_state_dict(global_)
    return accuracy(model, data)


def run_flower(w: Workload, n: int, rounds: int, gate: Gate) -> float:
    from _fl_flower import run_flower as flower  # imports flwr: only when Flower is a contender

    return flower(w, n, rounds, gate)


RUNNERS = {"commlab": run_commlab, "loop": run_loop, "vmap": run_vmap, "flower": run_flower}


def worker(system: str, w: Workload, n: int, rounds: int, conn, launched: float) -> None:
    """A contender's process: `rounds` rounds of FedAvg over n clients, paced by the coordinator."""
    import lab  # noqa: F401  (one intra-op thread, as the lab chooses)

    sampler = PeakRSS()
    sampler.start()
    gate = Gate(conn, launched)
    acc = RUNNERS[system](w, n, rounds, gate)
    conn.send({"accuracy": acc, "peak_rss": sampler.peak})
    conn.close()
