"""bench/fl_throughput.py and bench/widget_latency.py run end to end (tiny sizes here) and write what the
performance notebook reads; the committed results file holds every field the notebook plots."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_fl_throughput_times_every_contender_on_the_same_models(tmp_path):
    out = tmp_path / "fl.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "fl_throughput.py"), "--clients", "4", "--reps", "1",
                    "--no-flower", "--examples", "8", "--batch", "4", "--out", str(out)], check=True, timeout=900,
                   capture_output=True, text=True)
    r = json.loads(out.read_text())
    res = r["results"]["4"]
    assert set(res) == {"commlab", "loop", "vmap"}
    for system in res.values():
        assert system["seconds_per_round"] > 0 and system["ttfr_s"] > 0 and system["peak_rss_mb"] > 50
    accuracies = {s["accuracy"] for s in res.values()}
    assert max(accuracies) - min(accuracies) <= 0.01  # the same models, up to float rounding
    assert r["workload"]["local_steps"] == 2 and r["machine"]["bmm_gflops_median"] > 0
    assert r["flower_skipped"] and r["summary"]["4"]["accuracy_spread_points"] <= 1.0


def test_the_committed_results_hold_what_the_notebook_plots():
    r = json.loads((REPO / "bench" / "results" / "fl_throughput.json").read_text())
    assert {"machine", "workload", "results", "summary", "targets"} <= set(r)
    for n, res in r["results"].items():
        assert {"commlab", "loop", "vmap"} <= set(res), n
        for system in res.values():
            assert {"seconds_per_round", "reps", "ttfr_s", "peak_rss_mb", "accuracy"} <= set(system)


def test_widget_latency_measures_every_view(tmp_path):
    out = tmp_path / "w.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "widget_latency.py"), "--repeats", "2", "--out",
                    str(out)], check=True, timeout=900, capture_output=True, text=True)
    views = json.loads(out.read_text())["views"]
    assert {"ShardingExplorer", "TopologyView"} <= set(views)
    for view in views.values():
        assert all(0 < k["median_s"] <= k["worst_s"] for k in view["knobs"].values())


@pytest.mark.notebook
def test_notebook_threads_times_a_notebook_both_ways(tmp_path):
    """bench/notebook_threads.py runs a notebook with the lab's thread choice and with one thread set by hand."""
    pytest.importorskip("papermill")
    from jupyter_client.kernelspec import KernelSpecManager

    if "commlab" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("the 'commlab' kernelspec is not installed: run `make install`")
    out = tmp_path / "threads.json"
    cmd = [sys.executable, str(REPO / "bench" / "notebook_threads.py"), "dashboard", "--reps", "1", "--out", str(out)]
    done = subprocess.run(cmd, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(out.read_text())["notebooks"]["dashboard"]
    assert row["lab_s"] > 0 and row["hand_s"] > 0 and row["ratio"] == pytest.approx(row["lab_s"] / row["hand_s"])
    assert "lab/hand" in done.stdout
