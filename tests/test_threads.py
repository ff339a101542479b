"""One place chooses torch's threads (lab.threads): `import lab` sets them, $COMMLAB_THREADS overrides, a run's
`threads` knob applies while it trains and is undone after; no notebook sets them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab import threads
from lab.config import config_for
from lab.experiment import run

REPO = Path(__file__).resolve().parents[1]


def _threads_after_import(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (threads.ENV, "OMP_NUM_THREADS")}
    if env_value is not None:
        env[threads.ENV] = env_value
    return subprocess.run([sys.executable, "-c", "import lab, torch; print(torch.get_num_threads())"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_import_lab_sets_one_thread_and_the_environment_overrides():
    assert _threads_after_import(None).stdout.strip() == "1"
    assert _threads_after_import("2").stdout.strip() == "2"
    bad = _threads_after_import("zero")
    assert bad.returncode != 0 and "COMMLAB_THREADS='zero' is invalid" in bad.stderr


def test_a_runs_threads_knob_applies_while_it_trains_and_is_restored():
    before = torch.get_num_threads()
    seen = []
    r = run(config_for("ddp", steps=3, eval_every=3, threads=before + 1), save=False, progress=False,
            callback=lambda row: seen.append(torch.get_num_threads()))
    assert r.status == "finished" and seen == [before + 1] * 3
    assert torch.get_num_threads() == before


def test_threads_knob_refuses_bad_values_by_name():
    for value in (-1, 2000, float("nan")):
        with pytest.raises(ValueError, match=r"threads=.* is invalid"):
            config_for("ddp", threads=value)


def test_no_notebook_sets_threads():
    for source in sorted((REPO / "notebooks").glob("*.py")):
        assert "set_num_threads" not in source.read_text(), source.name
