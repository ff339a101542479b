"""Run every notebook with papermill on the `commlab` kernel, with small parameters, and check its metrics JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from notebook_specs import problems

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def execute(tmp_path_factory):
    """execute(name, **parameters) -> the metrics dict the notebook wrote (papermill, kernel 'commlab')."""
    papermill = pytest.importorskip("papermill")
    from jupyter_client.kernelspec import KernelSpecManager

    if "commlab" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("the 'commlab' kernelspec is not installed: run `make install`")
    out = tmp_path_factory.mktemp("notebooks")
    # the kernel inherits this environment: make the repo importable even without `pip install -e`
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env_path) if p)

    # run from a directory outside the checkout: notebooks find their files from the repository root (lab.paths)
    def run(name: str, **parameters) -> dict:
        metrics = out / f"{name}.json"
        papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                                   parameters={**parameters, "metrics_path": str(metrics)}, kernel_name="commlab",
                                   cwd=str(out), progress_bar=False, execution_timeout=600)
        # every chart it drew has data for each mark, and no cell warned (tests/notebook_specs.py)
        assert not (found := problems(out / f"{name}.ipynb")), f"{name}: " + "\n".join(found)
        return json.loads(metrics.read_text())

    try:
        yield run
    finally:
        os.environ["PYTHONPATH"] = env_path
        if not env_path:
            del os.environ["PYTHONPATH"]


def test_tour(execute, tmp_path):
    chart = tmp_path / "tour.png"
    m = execute("00_tour", steps=64, sync_period=16, chart_path=str(chart))
    assert m["bytes_ratio_ddp_over_local_sgd"] == pytest.approx(16)  # one all-reduce of d floats per 16 steps
    assert m["ddp"]["bytes"] == 16 * m["local_sgd"]["bytes"]
    for key in ("ddp", "local_sgd", "panel"):
        assert m[key]["status"] == "finished" and m[key]["steps"] == 64
        assert m[key]["eval_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert m["panel"]["bytes"] == m["local_sgd"]["bytes"]  # the panel ran the same config in its thread
    assert "sync_period=4 is not read" in m["refused"] and "'local_sgd'" in m["refused"]  # DDP has no H
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sync_period(execute):
    topologies = ["nvlink_node", "wan_sites"]
    # part 2 (the character LM) is kept tiny here; tests/test_notebooks_sync_family.py asserts on it
    m = execute("01_sync_period", steps=64, sync_periods=[1, 4, 16, 64], topologies=topologies, lm_steps=12,
                lm_sync_period=6)
    ratio = m["bytes_ratio_ddp_over"]
    for h in (1, 4, 16, 64):
        assert ratio[f"Local SGD H={h}"] == pytest.approx(h)  # Local SGD sends 1/H of DDP's bytes
    assert ratio["FedAvg"] > 1
    runs = {(r["run"], r["topology"]): r for r in m["runs"]}
    assert len(runs) == 6 * len(topologies)
    for (name, t), r in runs.items():
        assert r["eval_accuracy"] > 0.5, (name, t)
        assert r["bytes"] == runs[(name, topologies[0])]["bytes"]  # the network changes time, not bytes
    assert runs[("DDP", "wan_sites")]["sim_seconds"] > 100 * runs[("DDP", "nvlink_node")]["sim_seconds"]
    assert m["speedup_over_ddp"]["wan_sites"]["Local SGD H=16"] > 10
