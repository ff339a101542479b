"""Run an experiment on a real torch.distributed process group from Python (a notebook or a test).

`run_distributed(config, world_size=4)` starts `world_size` processes with
`torch.multiprocessing` (one rank each, gloo on CPU, rendezvous on a free
127.0.0.1 port), runs `lab.experiment.run` with `backend='distributed'` in each,
and returns what every rank ended with. The worker function lives in this
module because spawn cannot pickle a function defined in a notebook cell.
From a shell, `torchrun --nproc-per-node 4 -m lab.cli run --backend distributed ...`
does the same.

Failure is bounded: the process group and every collective wait at most
`config.comm_timeout` seconds (sooner with `heartbeat_timeout`; see
`lab.comm.distributed`). When a rank fails, a stopped rank is killed at once,
the others get `grace` seconds to end on their own and are then killed, and
`DistributedRunError` says what each rank reported — e.g. "rank 0:
all_reduce (tag 'grads') at step 12 got no answer within comm_timeout=10 s;
rank 2 (silent 10.3 s) stopped answering". With `runs_dir`, rank 0 saves the
run there, status "failed" and that reason included.

`start_distributed(...)` is the same without waiting: it returns the
`DistributedJob` (its processes' pids, `join()`, `kill()`).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import connection as mp_connection

import pandas as pd
import torch
import torch.multiprocessing as mp


@dataclass
class RankResult:
    rank: int
    worker_params: torch.Tensor  # (1, d)
    model: torch.Tensor  # (d,) the evaluated model
    metrics: pd.DataFrame
    ledger: pd.DataFrame
    status: str


class DistributedRunError(RuntimeError):
    """A distributed run that failed: `errors` {rank: 'Type: message'} as the ranks reported them."""

    def __init__(self, errors: dict[int, str], cause: str):
        self.errors = dict(sorted(errors.items()))
        lines = [f"rank {r}: {m}" for r, m in self.errors.items()] or [cause]
        super().__init__("distributed run failed:\n  " + "\n  ".join(lines))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, config_dict: dict, out_dir: str, threads: int,
            runs_dir: str | None = None):
    from lab.comm.distributed import CollectiveError, init_process_group, shutdown
    from lab.experiment import ExperimentConfig, run

    torch.set_num_threads(threads)
    config = ExperimentConfig.from_dict(config_dict)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_process_group(rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}", backend="gloo",
                       timeout=config.comm_timeout, heartbeat_timeout=config.heartbeat_timeout)
    try:
        result = run(config, save=runs_dir is not None, runs_dir=runs_dir, progress=False)
        torch.save(RankResult(rank, result.worker_params, result.model, result.metrics, result.ledger, result.status),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException as e:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
        if isinstance(e, CollectiveError):  # a collective still pending in gloo would hold up the teardown
            os._exit(1)
        raise
    finally:
        shutdown()


class DistributedJob:
    """`world_size` worker processes running `config`; `join()` waits for their results."""

    def __init__(self, config, *, world_size: int | None = None, threads: int = 1, runs_dir=None):
        self.world_size = world_size or config.num_workers
        cfg = config.replace(backend="distributed", num_workers=self.world_size).to_dict()
        self.out = tempfile.mkdtemp(prefix="commlab-distributed-")
        runs = None if runs_dir is None else str(runs_dir)
        self.context = mp.start_processes(_worker, args=(self.world_size, free_port(), cfg, self.out, threads, runs),
                                          nprocs=self.world_size, join=False, start_method="spawn")

    @property
    def pids(self) -> list[int]:
        """Process id of each rank, in rank order."""
        return [p.pid for p in self.context.processes]

    def join(self, *, grace: float = 3.0) -> list[RankResult]:
        """Wait for every rank; one RankResult per rank, or DistributedRunError as soon as one rank fails. Then
        a stopped rank is killed at once and the others get `grace` seconds to end on their own."""
        procs = self.context.processes
        try:
            while True:
                failed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                alive = [p for p in procs if p.exitcode is None]
                if failed or not alive:
                    break
                mp_connection.wait([p.sentinel for p in alive], timeout=1.0)
            if failed:
                for p in procs:
                    if p.exitcode is None and _stopped(p.pid):  # it cannot end by itself
                        _kill(p.pid)
                end = time.monotonic() + grace
                for p in procs:
                    p.join(timeout=max(0.0, end - time.monotonic()))
                codes = ", ".join(f"rank {r} exit code {procs[r].exitcode}" for r in failed)
                raise DistributedRunError(self._errors(), codes)
            return [torch.load(os.path.join(self.out, f"rank{r}.pt"), weights_only=False)
                    for r in range(self.world_size)]
        finally:
            self.kill()
            shutil.rmtree(self.out, ignore_errors=True)
            for f in self.context.error_files:  # torch's traceback files of ranks that raised (ours are in .out)
                if f and os.path.exists(f):
                    os.unlink(f)

    def _errors(self) -> dict[int, str]:
        out = {}
        for r in range(self.world_size):
            path = os.path.join(self.out, f"rank{r}.error")
            if os.path.exists(path):
                with open(path) as f:
                    out[r] = f.read().strip()
        return out

    def kill(self) -> None:
        """End every rank still alive (SIGCONT first, so a stopped one dies too), and reap it."""
        for p in self.context.processes:
            if p.exitcode is None:
                _kill(p.pid)
            p.join(timeout=10)


def _kill(pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, a debugger): state T or t in /proc (False where unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def start_distributed(config, *, world_size: int | None = None, threads: int = 1, runs_dir=None) -> DistributedJob:
    """Start `config` on `world_size` (default: config.num_workers) gloo processes; `.join()` for the results."""
    return DistributedJob(config, world_size=world_size, threads=threads, runs_dir=runs_dir)


def run_distributed(config, *, world_size: int | None = None, threads: int = 1, runs_dir=None) -> list[RankResult]:
    """Run `config` on `world_size` (default: config.num_workers) gloo processes; one RankResult per rank.
    With `runs_dir`, rank 0 saves the run there (lab.runs)."""
    return start_distributed(config, world_size=world_size, threads=threads, runs_dir=runs_dir).join()


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
