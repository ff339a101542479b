"""Notebooks under papermill as CI runs them: the chart/warning check every executed notebook passes (applied in
tests/test_notebooks.py's `execute` fixture), parameters given on papermill's command line (`-p` list strings,
`-y` YAML, unknown names refused), and files found from the repository root whatever the working directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_specs import problems, spec_problems

from lab import notebook_params

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

notebook = [pytest.mark.notebook, pytest.mark.slow]


# --- the spec check (what the `execute` fixture asserts on every executed notebook) -------------------------

def test_spec_check_flags_a_mark_without_data():
    spec = {"datasets": {"d1": [{"x": 1}], "empty": []}, "hconcat": [
        {"data": {"name": "d1"}, "mark": "line", "encoding": {"x": {"field": "x"}}},
        {"data": {"name": "empty"}, "mark": "bar"},
        {"data": {"values": []}, "mark": "point"},
        {"mark": "rule"}]}
    found = spec_problems(spec)
    assert len(found) == 3 and "'bar'" in found[0] and "'point'" in found[1] and "'rule'" in found[2]


def test_spec_check_follows_inherited_data_and_flags_zero_on_a_log_scale():
    ok = {"data": {"values": [{"t": 1.0}]}, "layer": [{"mark": "line"}, {"mark": "point"}]}
    assert spec_problems(ok) == []
    facet = {"data": {"name": "d"}, "datasets": {"d": [{"t": 0.0}, {"t": 2.0}]}, "facet": {"field": "t"},
             "spec": {"mark": "bar", "encoding": {"y": {"field": "t", "scale": {"type": "log"}}}}}
    (found,) = spec_problems(facet)
    assert "log scale" in found and "'t'" in found


def test_spec_check_reads_widget_state_and_stderr(tmp_path):
    nb = {"metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {
        "m1": {"state": {"spec": {"mark": "line", "data": {"values": []}}}}}}}},
          "cells": [{"cell_type": "code", "outputs": [
              {"output_type": "stream", "name": "stderr", "text": ["WARN Scale bindings are unsupported\n"]},
              {"output_type": "stream", "name": "stderr", "text": ["step 3/10\n"]}]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    found = problems(path)
    assert len(found) == 2 and "widget m1" in found[0] and "cell 0: WARN Scale" in found[1]


# --- parameters ----------------------------------------------------------------------------------------------

def test_list_strings_are_parsed_and_unknown_names_refused():
    known = {"steps": 120, "sync_periods": [1, 4], "topologies": ["nvlink_node"], "metrics_path": ""}
    assert notebook_params.check({"sync_periods": "[2,8]", "topologies": "[wan_sites, ethernet]", "steps": 5},
                                 known) == {"sync_periods": [2, 8], "topologies": ["wan_sites", "ethernet"],
                                            "steps": 5}
    assert notebook_params.check({"metrics_path": "[x].json"}, known) == {"metrics_path": "[x].json"}  # a str
    with pytest.raises(ValueError, match="sync_period.*known parameters are: steps, sync_periods, topologies"):
        notebook_params.check({"sync_period": 4}, known)
    with pytest.raises(ValueError, match="sync_periods='4' is not a list"):
        notebook_params.check({"sync_periods": "4"}, known)


def test_compressors_that_cannot_reach_the_target_are_listed_with_the_reason():
    from lab.compress.knob import Probe
    from lab.config import config_for

    probe = Probe(config_for("ddp", num_workers=4, steps=10, lr=0.3))  # the MLP on digits of 02_compression
    left = probe.left_out(["topk", "qsgd", "sign", "powersgd"], 0.01)
    assert set(left) == {"qsgd", "sign", "powersgd"}  # each sends at least one bit per value or a rank-1 factor
    assert all("smallest traffic ratio" in why and "above the target 0.01" in why for why in left.values())
    assert probe.left_out(["topk", "qsgd", "sign", "powersgd"], 0.1) == {}


def test_every_notebook_binds_its_parameters():
    for source in sorted(NOTEBOOKS.glob("*.py")):
        text = source.read_text()
        after = text.split('# %% tags=["parameters"]', 1)[1].split("# %%", 2)[1]
        assert "notebook_params.bind(globals())" in after, source.name  # the cell right after the parameters


def _kernel_env():
    papermill = pytest.importorskip("papermill")
    from jupyter_client.kernelspec import KernelSpecManager

    if "commlab" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("the 'commlab' kernelspec is not installed: run `make install`")
    return papermill, {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.mark.notebook
@pytest.mark.slow
def test_unknown_parameter_is_an_error_naming_the_known_ones(tmp_path, monkeypatch):
    papermill, env = _kernel_env()
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(NOTEBOOKS / "01_sync_period.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"sync_period": 4}, kernel_name="commlab", progress_bar=False)
    message = str(err.value)
    assert "unknown notebook parameter(s) sync_period" in message
    assert "sync_periods" in message and "topologies" in message and "metrics_path" in message


@pytest.mark.notebook
@pytest.mark.slow
def test_papermill_cli_from_another_directory_with_list_parameters(tmp_path):
    """`papermill` run outside the checkout: -p list strings and -y YAML parsed, bench/results found at the root."""
    _, env = _kernel_env()
    yaml = "sizes: [1024, 268435456]\nrank_counts: [8, 32]\ngraphs: [ring, exponential]\n"
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "04_topology.ipynb"), "out.ipynb", "-k", "commlab",
           "--no-progress-bar", "-p", "steps", "12", "-p", "num_workers", "8", "-p", "topologies",
           "[nvlink_node, wan_sites]", "-p", "techniques", '["ddp", "local_sgd"]', "-p", "target_loss", "1.5",
           "-p", "gossip_ranks", "8", "-p", "gossip_steps", "5", "-p", "overlap_steps", "2",
           "-y", yaml, "-p", "metrics_path", "metrics.json"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())  # relative outputs land in the caller's directory
    assert {r["topology"] for r in m["across"]} == {"nvlink_node", "wan_sites"}
    assert {r["technique"] for r in m["across"]} == {"ddp", "local_sgd"}
    assert m["netlab_cases"] > 0  # bench/results/netlab.json read from the repository root
    assert not (found := problems(tmp_path / "out.ipynb")), "\n".join(found)
