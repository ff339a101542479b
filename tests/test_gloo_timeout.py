"""A rank that stops answering ends a gloo job within `comm_timeout` (issue 10, item 3), with a message naming
the rank and the collective, and rank 0's status.json says 'failed' with that reason; with `heartbeat_timeout`
the job ends sooner.

One of 4 gloo ranks of a long DDP run is frozen with SIGSTOP once training is under way. Times are wall-clock
bounds with slack for a loaded 2-core machine: rank 0 writes 'failed' within comm_timeout + 3 s of the freeze (the
last wait slice, the diagnosis and saving) and every process is gone 2 s later (the launcher kills the stopped
rank at once; the others exit on their own).
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from lab.config import ExperimentConfig
from lab.launch import DistributedRunError, start_distributed

pytestmark = [pytest.mark.gloo, pytest.mark.slow]

COLLECTIVES = r"(all_reduce|all_gather|reduce_scatter|broadcast|all_to_all|shift|send_recv|server_gather|mix)"
GRACE = 2.0


def _status(runs: Path) -> dict | None:
    dirs = [d for d in runs.iterdir() if (d / "status.json").exists()] if runs.exists() else []
    return json.loads((dirs[0] / "status.json").read_text()) if dirs else None


def _freeze_rank(tmp_path: Path, frozen: int, **timeouts) -> tuple[float, float, dict, str]:
    """Start a long 4-rank run, SIGSTOP rank `frozen` once it trains; (seconds until rank 0 wrote 'failed',
    seconds until the job ended, rank 0's status, the launcher's error)."""
    cfg = ExperimentConfig(technique="ddp", dataset="lstsq", model="linear", num_workers=4, steps=1_000_000,
                           eval_every=1_000_000, batch_size=4, topology="ethernet", backend="distributed", **timeouts)
    runs = tmp_path / "runs"
    job = start_distributed(cfg, runs_dir=runs)
    try:
        deadline = time.monotonic() + 120
        while (_status(runs) or {}).get("status") != "running":
            assert time.monotonic() < deadline, "the run never started"
            assert all(p.is_alive() for p in job.context.processes), "a rank died before training"
            time.sleep(0.2)
        time.sleep(1.0)  # a few hundred steps under way
        os.kill(job.pids[frozen], signal.SIGSTOP)
        t0, wall0 = time.monotonic(), time.time()
        with pytest.raises(DistributedRunError) as err:
            job.join(grace=GRACE)
        ended = time.monotonic() - t0
        status = _status(runs)
        return status["time"] - wall0, ended, status, str(err.value)
    finally:
        job.kill()  # SIGCONT + SIGKILL whatever is left


def test_a_frozen_rank_ends_the_job_within_comm_timeout_naming_it(tmp_path):
    timeout = 10.0
    failed_after, ended, status, message = _freeze_rank(tmp_path, 2, comm_timeout=timeout)
    assert status["status"] == "failed"
    assert re.search(r"rank 2 \(silent [\d.]+ s\) stopped answering", status["error"]), status["error"]
    assert re.search(rf"rank 0: {COLLECTIVES}", status["error"]), status["error"]
    assert re.search(rf"{COLLECTIVES}.* got no answer within comm_timeout=10 s", message), message
    assert "rank 2 (silent" in message
    assert failed_after <= timeout + 3.0, failed_after
    assert ended <= timeout + 5.0, ended


def test_the_heartbeat_ends_it_sooner(tmp_path):
    failed_after, ended, status, message = _freeze_rank(tmp_path, 1, comm_timeout=120.0, heartbeat_timeout=2.0)
    assert status["status"] == "failed"
    assert "rank 1 (silent" in status["error"] and "stopped answering" in status["error"], status["error"]
    assert re.search(rf"rank 0: {COLLECTIVES}", status["error"]), status["error"]
    assert "heartbeat_timeout=2 s" in message, message
    assert failed_after <= 2.0 + 4.0, failed_after  # the silence, a beat or two, the wait slice, saving
    assert ended <= 2.0 + 6.0, ended
