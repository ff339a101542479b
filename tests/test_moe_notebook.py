"""06_moe runs under papermill with small parameters; its metrics are checked."""
from __future__ import annotations

import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_moe_notebook(execute):  # noqa: F811
    m = execute("06_moe", steps=8, lm_steps=6, exflow_tokens=128, experts_per_rank=[1, 4, 16])
    equal = {r["technique"]: r for r in m["equal"]}
    for name, row in equal.items():  # three expert layouts, one model
        assert row["max |Δ loss| vs moe_dp"] <= 1e-5 and row["max |Δ model| vs moe_dp"] <= 1e-4, name
    assert equal["moe_ep"]["MB sent (all ranks)"] < equal["moe_dp"]["MB sent (all ranks)"]

    for r in m["sweep"]:  # uniform routing sends (P-1)/P·k·T·h·b per rank, within sampling noise
        assert r["bytes_intra"] + r["bytes_inter"] == pytest.approx(r["predicted_bytes"], rel=0.02)
        if r["ep_degree"] <= r["ranks_per_node"]:
            assert r["bytes_inter"] == 0
    for net in {r["network"] for r in m["sweep"]} - {"one NVLink node"}:
        rows = sorted((r for r in m["sweep"] if r["network"] == net), key=lambda r: r["ep_degree"])
        assert rows[-1]["dispatch_seconds"] > rows[0]["dispatch_seconds"]  # a wider EP group crosses more nodes

    bal = {r["run"]: r for r in m["balance"]}
    assert bal["aux 0.01, capacity 1.25"]["mean dropped fraction"] > 0
    assert bal["aux loss 0.01"]["mean dropped fraction"] == 0
    assert bal["FSSDP, aux 0.01"]["mean load imbalance"] < bal["aux loss 0.01"]["mean load imbalance"]
    assert bal["FSSDP, aux 0.01"]["final loss"] == pytest.approx(bal["aux loss 0.01"]["final loss"], abs=1e-5)

    loc = sorted(m["locmoe"], key=lambda r: r["mu"])
    inter = [r["inter-node MB"] for r in loc]
    assert all(a >= b for a, b in zip(inter, inter[1:])) and inter[-1] < 0.1 * inter[0]

    ex = m["exflow"]
    assert all(v <= 1e-6 for v in ex["max_output_diff"].values())
    for trace, hops in ex["hops"].items():
        assert hops["placed"] < hops["plain"], trace
    planted = {r["schedule"]: r["token KB"] for r in ex["bytes"] if r["trace"] == "planted affinity"}
    assert planted["ExFlow (coherent + placement)"] < planted["coherent, plain placement"] < \
        planted["EP (2 all-to-alls / layer)"]

    sc = {r["block"]: r for r in m["scmoe"]}
    assert sc["ScMoE"]["exposed comm ms"] == pytest.approx(0, abs=1e-9)
    assert sc["standard"]["exposed comm ms"] > 0

    pp = {r["technique"]: r for r in m["ppmoe"]}
    assert pp["PPMoE"]["MoE inter-node MB"] == 0 < pp["EP"]["MoE inter-node MB"]
