"""09_performance plots the committed bench/results/fl_throughput.json and times commlab live; run by papermill."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "fl_throughput.json"


def test_performance_notebook(execute):  # noqa: F811
    m = execute("09_performance", live_clients=[10, 50], live_rounds=3)
    committed = json.loads(RESULTS.read_text())
    assert m["summary"] == committed["summary"] and m["targets"] == committed["targets"]
    for n, res in committed["results"].items():  # every system's round time made it into the notebook
        for system, r in res.items():
            assert m["seconds_per_round"][f"{system}@{n}"] == r["seconds_per_round"]
    for row in committed["summary"].values():  # the contenders train the same models
        assert row["accuracy_spread_points"] <= 1.0
    assert [r["clients"] for r in m["live"]] == [10, 50]
    for r in m["live"]:
        assert 0 < r["seconds_per_round"] < 60 and math.isfinite(r["first_round_s"]) and r["accuracy"] > 0.1


def test_the_notebook_sets_no_threads():
    """Threads are the lab's choice (lab.threads), never a notebook's."""
    assert "set_num_threads" not in (REPO / "notebooks" / "09_performance.py").read_text()
