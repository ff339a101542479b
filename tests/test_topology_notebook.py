"""04_topology runs under papermill with small parameters; its metrics are checked."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

NETLAB = Path(__file__).resolve().parents[1] / "bench" / "results" / "netlab.json"


def test_topology_notebook(execute):  # noqa: F811
    m = execute("04_topology", steps=40, num_workers=8, topologies=["nvlink_node", "wan_sites"],
                techniques=["ddp", "local_sgd"], target_loss=1.5, sizes=[1024, 268435456], rank_counts=[8, 32],
                graphs=["ring", "exponential", "one_peer_exponential"], gossip_ranks=8, gossip_steps=20,
                overlap_steps=3)
    across = {(r["technique"], r["topology"]): r for r in m["across"]}
    for t in ("ddp", "local_sgd"):  # the same run: only the clock depends on the network
        assert across[(t, "nvlink_node")]["final_loss"] == across[(t, "wan_sites")]["final_loss"]
        assert across[(t, "wan_sites")]["time_to_target_s"] > 100 * across[(t, "nvlink_node")]["time_to_target_s"]
    assert across[("local_sgd", "wan_sites")]["time_to_target_s"] < across[("ddp", "wan_sites")]["time_to_target_s"]
    best = {(r["ranks"], r["bytes"]): r["algorithm"] for r in m["best_all_reduce"]}
    assert best[(32, 268435456)] == "hierarchical" and best[(32, 1024)] in ("tree", "rhd")
    gaps = {g["graph"]: g["spectral_gap"] for g in m["graphs"]}
    assert gaps["exponential"] == pytest.approx(2 / (1 + math.log2(8))) and gaps["one_peer_exponential"] == \
        pytest.approx(1.0)
    ring, expo = m["dpsgd_consensus"]["ring"], m["dpsgd_consensus"]["exponential"]
    assert ring[-1] > expo[-1]
    clock = {r["run"]: r for r in m["clock"]}
    assert clock["overlap"]["sim_seconds"] < clock["serial"]["sim_seconds"]
    assert clock["straggler"]["sim_seconds"] > clock["serial"]["sim_seconds"]
    # the predicted-vs-measured section plots the committed results file
    committed = json.loads(NETLAB.read_text())
    assert m["netlab_summary"] == committed["summary"] and m["netlab_cases"] == len(committed["rows"])
    assert m["view_links"] > 0
