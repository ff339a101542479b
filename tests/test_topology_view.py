"""The topology views headless: the picker's drawing, links coloured by a run's bytes, Gantt and consensus charts."""
import numpy as np
import pandas as pd
import pytest

from lab import topology as topo
from lab.experiment import ExperimentConfig, run
from widgets.topology_view import (
    TopologyView,
    consensus_chart,
    gantt_chart,
    layout,
    predicted_vs_measured_chart,
    topology_chart,
    traffic_edges,
    wiring,
)


def test_every_preset_draws_its_wiring():
    for name in topo.PRESETS:
        t = topo.preset(name, 8 if name != "phones_mixed" else 10)
        pos = layout(t)
        assert len(pos) == t.num_ranks + (1 if t.star else 0)
        assert len(wiring(t)) > 0
        spec = topology_chart(t).to_dict()
        assert spec["layer"][0]["mark"]["type"] == "rule"


def test_links_are_coloured_by_the_bytes_the_run_put_on_them():
    r = run(ExperimentConfig(technique="ddp", num_workers=8, steps=3, eval_every=3, topology="multinode_4x8"),
            save=False, progress=False)
    t = topo.for_config(r.config)
    edges = traffic_edges(t, r.traffic)
    # a hierarchical all-reduce: a ring inside each node and rings across nodes, nothing else
    assert set(edges.link) == {"intra", "inter"}
    assert edges.bytes.sum() == pytest.approx(r.ledger[["bytes_intra", "bytes_inter"]].to_numpy().sum())
    view = TopologyView("nvlink_node", 4)
    view.show_run(r)
    assert view.picker.value == "multinode_4x8" and view.workers.value == 8
    assert view.chart.num_values > 0 and "4 nodes" in view.facts.value
    view.workers.value = 6  # not a multiple of 4
    assert view.topology is None and "multiple of 4" in view.message.value
    view.workers.value = 8
    assert view.topology is not None and view.message.value == "" and view.traffic is None


def test_gantt_consensus_and_netlab_charts_build():
    tl = pd.DataFrame({"rank": [0, 0, 1], "kind": ["compute", "comm", "compute"], "label": ["c", "all_reduce", "c"],
                       "step": [0, 0, 1], "start": [0.0, 1.0, 0.0], "end": [1.0, 1.5, 2.0]})
    g = gantt_chart(tl, steps=(0, 0)).to_dict()
    assert g["mark"]["type"] == "bar" and g["encoding"]["x2"]["field"] == "end"
    df = pd.DataFrame({"label": ["ring"] * 3, "step": [1, 2, 3], "consensus_distance": [1.0, 0.5, 0.25]})
    assert consensus_chart(df).to_dict()["encoding"]["y"]["scale"]["type"] == "log"
    rows = pd.DataFrame({"op": ["all_reduce"], "ranks": [2], "rate_mbit": [100.0], "size": [2**20],
                         "algorithm": ["ring"], "measured_s": [0.1], "predicted_s": [0.09], "error": [-0.1]})
    assert len(predicted_vs_measured_chart(rows).to_dict()["layer"]) == 2
    assert np.isfinite(layout(topo.preset("torus_2d", 16)).x).all()
