"""Run an experiment on a real torch.distributed process group from Python (a notebook or a test).

`run_distributed(config, world_size=4)` starts `world_size` processes with
`torch.multiprocessing.spawn` (one rank each, gloo on CPU, rendezvous on a free
127.0.0.1 port), runs `lab.experiment.run` with `backend='distributed'` in each,
and returns what every rank ended with. The worker function lives in this
module because spawn cannot pickle a function defined in a notebook cell.
From a shell, `torchrun --nproc-per-node 4 -m lab.cli run --backend distributed ...`
does the same.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass
class RankResult:
    rank: int
    worker_params: torch.Tensor  # (1, d)
    model: torch.Tensor  # (d,) the evaluated model
    metrics: pd.DataFrame
    ledger: pd.DataFrame
    status: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, config_dict: dict, out_dir: str, threads: int):
    from lab.experiment import ExperimentConfig, run

    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
    try:
        result = run(ExperimentConfig.from_dict(config_dict), save=False, progress=False)
        torch.save(RankResult(rank, result.worker_params, result.model, result.metrics, result.ledger, result.status),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(config, *, world_size: int | None = None, threads: int = 1) -> list[RankResult]:
    """Run `config` on `world_size` (default: config.num_workers) gloo processes; one RankResult per rank."""
    world_size = world_size or config.num_workers
    cfg = config.replace(backend="distributed", num_workers=world_size).to_dict()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, free_port(), cfg, out, threads), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


@dataclass
class Equivalence:
    """How a distributed run compares with the simulated run of the same config."""

    max_param_diff: float  # largest |worker row difference| over all ranks
    max_model_diff: float  # largest |evaluated model difference| over all ranks
    ledgers_equal: bool  # every rank's Ledger table equals the simulated one
    metrics_equal: bool  # rank 0's `columns` equal the simulated run's, exactly
    statuses: list[str]

    def holds(self, atol: float = 1e-6) -> bool:
        return (all(s == "finished" for s in self.statuses) and self.max_param_diff <= atol
                and self.max_model_diff <= atol and self.ledgers_equal and self.metrics_equal)


def compare_with_simulated(config, *, world_size: int | None = None,
                           columns=("step", "round", "bytes", "sim_seconds")) -> Equivalence:
    """Run `config` simulated and on gloo processes, and report how far apart they end."""
    from lab.experiment import run

    sim = run(config, save=False, progress=False)
    ranks = run_distributed(config, world_size=world_size)
    cols = [c for c in columns if c in sim.metrics.columns]
    return Equivalence(
        max_param_diff=max(float((r.worker_params[0] - sim.worker_params[r.rank]).abs().max()) for r in ranks),
        max_model_diff=max(float((r.model - sim.model).abs().max()) for r in ranks),
        ledgers_equal=all(r.ledger.equals(sim.ledger) for r in ranks),
        metrics_equal=ranks[0].metrics[cols].equals(sim.metrics[cols]),
        statuses=[r.status for r in ranks])
