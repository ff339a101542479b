"""Runs on disk: a Run's tables, its honest status, atomic writes, and the runs table.

A run directory `runs/<id>/` holds config.json, status.json, metrics.parquet,
ledger.parquet and model.pt (and checkpoint.pt, with `checkpoint_every`: lab.checkpoint).
status.json is written before training starts ("starting", with the process id and
host), then "running", and at the end one of: finished, stopped (Stop pressed),
interrupted (Ctrl-C or SIGTERM), diverged
(a non-finite loss, gradient or parameter; with the step and the quantity),
failed (an error; with its message). A directory whose status still says
running/starting but whose process is gone reads back as "crashed".

Every file is written to a per-run, per-writer temporary name and renamed, so
two runs (or two threads) never share a temporary file and an interrupted
write never leaves half a file. Run ids are unique within a process and across
threads (time, pid, a process-wide counter).
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lab.config import ExperimentConfig
from lab.paths import runs_dir

STATUSES = ("starting", "running", "finished", "stopped", "interrupted", "diverged", "failed", "crashed")
_ids = itertools.count()
_ids_lock = threading.Lock()


@dataclass
class Run:
    config: ExperimentConfig
    metrics: pd.DataFrame
    ledger: pd.DataFrame
    status: str  # one of STATUSES
    model: torch.Tensor | None = None  # (d,) the evaluated model's flat parameters
    path: Path | None = None
    error: str | None = None  # why it failed or diverged, one line
    worker_params: torch.Tensor | None = None  # (n_local, d) final rows of this process's workers (not saved)
    timeline: pd.DataFrame | None = None  # the simulated clock's per-rank events (lab.clock; not saved)
    traffic: object = None  # a lab.topology.Traffic: bytes sent rank to rank, sparse (P: the server; not saved)
    divergence: dict | None = None  # {'step', 'quantity'} of the first non-finite value, if the run diverged

    def summary(self) -> dict:
        m = self.metrics
        last = m.iloc[-1] if len(m) else None
        evals = m.dropna(subset=["eval_loss"]) if len(m) and "eval_loss" in m else m.iloc[0:0]
        ev = evals.iloc[-1] if len(evals) else None
        return {"technique": self.config.technique, "status": self.status,
                "steps": int(last.step) if last is not None else 0,
                "rounds": int(last["round"]) if last is not None else 0,
                "final_loss": float(last.loss) if last is not None else float("nan"),
                "eval_loss": float(ev.eval_loss) if ev is not None else float("nan"),
                "eval_accuracy": float(ev.eval_accuracy) if ev is not None and "eval_accuracy" in ev else float("nan"),
                "bytes": int(last.bytes) if last is not None else 0,
                "sim_seconds": float(last.sim_seconds) if last is not None else 0.0,
                "wall_seconds": float(last.wall_seconds) if last is not None else 0.0}

    @classmethod
    def load(cls, path) -> Run:
        """A run directory as it is on disk; a run whose process died reads as status 'crashed'."""
        path = Path(path)
        state = read_status(path)
        config = ExperimentConfig.from_dict(json.loads((path / "config.json").read_text()))
        metrics = pd.read_parquet(path / "metrics.parquet") if (path / "metrics.parquet").exists() else pd.DataFrame()
        ledger = pd.read_parquet(path / "ledger.parquet") if (path / "ledger.parquet").exists() else pd.DataFrame()
        model = torch.load(path / "model.pt", weights_only=True) if (path / "model.pt").exists() else None
        return cls(config, metrics, ledger, state["status"], model, path, state.get("error"),
                   divergence=state.get("divergence"))


def new_run_dir(root: Path, config: ExperimentConfig) -> Path:
    """A fresh, unique directory for one run: time, technique, config digest, pid and a process-wide counter."""
    with _ids_lock:
        n = next(_ids)
    path = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.technique}-{config.digest()}-{os.getpid()}-{n}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def atomic_write(path: Path, write) -> None:
    """write(tmp) then rename over `path`; the temporary name is unique to this process and thread."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_status(path: Path, status: str, **extra) -> None:
    assert status in STATUSES, status
    body = {"status": status, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **extra}
    atomic_write(path / "status.json", lambda t: t.write_text(json.dumps(body)))


def read_status(path: Path) -> dict:
    """status.json, with running/starting turned into 'crashed' when its process is gone from this host."""
    file = Path(path) / "status.json"
    if not file.exists():
        raise ValueError(f"run directory {str(path)!r} has no status.json: not a commlab run")
    state = json.loads(file.read_text())
    if state["status"] in ("starting", "running") and not _alive(state.get("pid"), state.get("host")):
        state = {**state, "status": "crashed", "error": state.get("error") or f"process {state.get('pid')} is gone"}
    return state


def _alive(pid, host) -> bool:
    if pid is None or host != socket.gethostname():
        return True  # another machine's run: nothing here can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is gone too
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def begin(run: Run) -> None:
    """Before the first step: the config and status 'starting', so no run directory is ever empty."""
    atomic_write(run.path / "config.json", lambda t: t.write_text(json.dumps(run.config.to_dict(), indent=2)))
    write_status(run.path, "starting")


def save(run: Run) -> None:
    """Write a run's tables, model and status atomically (metrics first, status last)."""
    p = run.path
    atomic_write(p / "config.json", lambda t: t.write_text(json.dumps(run.config.to_dict(), indent=2)))
    atomic_write(p / "metrics.parquet", lambda t: run.metrics.to_parquet(t, index=False))
    atomic_write(p / "ledger.parquet", lambda t: run.ledger.to_parquet(t, index=False))
    if run.model is not None:
        atomic_write(p / "model.pt", lambda t: torch.save(run.model, t))
    extra = {"error": run.error}
    if run.divergence is not None:
        extra["divergence"] = run.divergence
    write_status(p, run.status, **extra)


def default_runs_dir() -> Path:
    """$COMMLAB_RUNS_DIR, else `runs/` at the repository root whatever the working directory (lab.paths)."""
    return runs_dir()


def runs_table(root=None) -> pd.DataFrame:
    """One row per run directory under `root`: id, status (crashed where the process is gone), technique,
    the knobs set away from their defaults, and the final metrics."""
    root = Path(root) if root is not None else default_runs_dir()
    rows = []
    for d in sorted(root.glob("*/status.json")) if root.exists() else []:
        try:
            r = Run.load(d.parent)
        except (ValueError, OSError) as e:  # a foreign or damaged directory: listed, not fatal
            rows.append({"run": d.parent.name, "status": "unreadable", "error": str(e)})
            continue
        rows.append({"run": d.parent.name, **r.summary(), "changed": r.config.changed(), "error": r.error})
    return pd.DataFrame(rows)
