"""Runs never lie about their state: divergence stops and says so, signals and kills leave an honest status,
no run directory is ever empty, and run directories never collide."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.config import ExperimentConfig, config_for
from lab.experiment import run
from lab.runs import Run, runs_table

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_workers=4, steps=8, eval_every=4)


def cli(*args, runs_dir, **popen):
    cmd = [sys.executable, "-m", "lab.cli", "run", *map(str, args), "--runs-dir", str(runs_dir), "--quiet"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def only_run(runs_dir: Path) -> Path:
    dirs = [d for d in runs_dir.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def wait_for_status(path: Path, status: str, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        f = path / "status.json"
        if f.exists() and json.loads(f.read_text())["status"] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached status {status!r}")


def test_a_diverging_cli_run_exits_nonzero_at_the_first_nan_and_keeps_finite_rows(tmp_path):
    p = cli("--lr", "1e30", "--steps", "40", "--workers", "4", runs_dir=tmp_path)
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert "diverged" in err and "non-finite" in err
    r = Run.load(only_run(tmp_path))
    assert r.status == "diverged" and r.divergence["quantity"] in ("loss", "gradient", "parameters")
    first_bad = r.divergence["step"]
    # the run stopped within 2 steps of the first non-finite value, and every row it kept is finite
    assert r.metrics.step.max() <= first_bad + 2 if len(r.metrics) else first_bad <= 2
    assert r.metrics.loss.notna().all() and (r.metrics.loss.abs() < float("inf")).all()


def test_on_divergence_continue_lets_a_run_go_on_past_nan():
    cfg = ExperimentConfig(lr=1e30, on_divergence="continue", **SMALL)
    r = run(cfg, save=False, progress=False)
    assert r.status == "finished" and r.metrics.loss.isna().any()


def test_status_is_written_before_training_so_no_run_directory_is_empty(tmp_path):
    seen = []

    def look(row):
        if not seen:
            d = only_run(tmp_path)
            seen.append(json.loads((d / "status.json").read_text())["status"])
            seen.append((d / "config.json").exists())

    run(ExperimentConfig(**SMALL), runs_dir=tmp_path, progress=False, callback=look)
    assert seen == ["running", True]
    assert Run.load(only_run(tmp_path)).status == "finished"


def test_sigterm_interrupts_like_ctrl_c_and_keeps_rows(tmp_path):
    p = cli("--technique", "ddp", "--workers", "4", "--steps", "100000", "--eval-every", "5", runs_dir=tmp_path)
    try:
        end = time.time() + 90
        while time.time() < end and not (list(tmp_path.glob("*/metrics.parquet"))):
            time.sleep(0.1)
        d = only_run(tmp_path)
        os.kill(p.pid, signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        p.kill()
    r = Run.load(d)
    assert r.status == "interrupted" and len(r.metrics) > 0


def test_sigkill_leaves_a_run_that_reads_as_crashed(tmp_path):
    p = cli("--technique", "ddp", "--workers", "4", "--steps", "100000", runs_dir=tmp_path)
    try:
        end = time.time() + 90
        while time.time() < end and not list(tmp_path.glob("*/status.json")):
            time.sleep(0.05)
        d = only_run(tmp_path)
        wait_for_status(d, "running")
        p.kill()
        p.wait(timeout=30)
    finally:
        p.kill()
    assert json.loads((d / "status.json").read_text())["status"] == "running"  # what the dead process left
    assert Run.load(d).status == "crashed"
    table = runs_table(tmp_path)
    assert list(table.status) == ["crashed"]


def test_back_to_back_and_concurrent_runs_never_share_a_directory(tmp_path):
    cfg = config_for("local_sgd", sync_period=2, **SMALL)
    a = run(cfg, runs_dir=tmp_path, progress=False)
    b = run(cfg, runs_dir=tmp_path, progress=False)
    assert a.path != b.path
    results, errors = [], []

    def go():
        try:
            results.append(run(cfg, runs_dir=tmp_path, progress=False))
        except Exception as e:  # noqa: BLE001 - the test reports any failure of a thread
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({r.path for r in results}) == 3
    assert all(Run.load(r.path).status == "finished" for r in results)
    assert not list(tmp_path.glob("*/.*.tmp"))  # no temporary file left behind
    # same config and seed: identical metrics apart from wall time
    cols = [c for c in a.metrics.columns if c != "wall_seconds"]
    assert a.metrics[cols].equals(b.metrics[cols])


def test_loading_a_directory_without_status_names_it():
    with pytest.raises(ValueError, match="no status.json"):
        Run.load(REPO / "docs")
