"""03_sharding runs under papermill with small parameters; its metrics are checked."""
from __future__ import annotations

import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_sharding_notebook(execute):  # noqa: F811
    m = execute("03_sharding", steps=12, num_workers=4, hybrid_degree=2)
    small = m["small"]
    assert set(small) == {"DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "HSDP S=2"}
    for name, row in small.items():
        assert row["max |Δparams| vs DDP"] <= 1e-6, name  # trained for real, equal to DDP
        assert row["final_loss"] == pytest.approx(small["DDP"]["final_loss"], abs=1e-6), name
    d, d_pad = 4810, 4812  # the MLP's parameters, padded to a multiple of 4 ranks
    assert small["ZeRO-1"]["bytes vs DDP"] == pytest.approx(d_pad / d)  # DDP's bytes (on the padded vector)
    assert small["ZeRO-2"]["bytes vs DDP"] == pytest.approx(d_pad / d)
    assert small["ZeRO-3"]["bytes vs DDP"] == pytest.approx(1.5 * d_pad / d)
    for row in m["held"]:  # the memory model is the tensors each rank holds
        assert row["held bytes"] == row["predicted bytes"], row
    assert [round(m["paper_gb"][0]), round(m["paper_gb"][1], 1), round(m["paper_gb"][2], 1),
            round(m["paper_gb"][3], 2)] == [120, 31.4, 16.6, 1.88]
    top = m["planner_top"]
    assert top["fits"] and top["memory_gb"] <= 80
    assert 0 < m["planner_fitting"] < m["planner_candidates"]
    sweep = sorted(m["hsdp_sweep"], key=lambda r: r["sharding_degree"])
    assert all(a["memory_gb"] > b["memory_gb"] for a, b in zip(sweep, sweep[1:]))  # memory falls as S grows
    inter = {r["config"]: r["bytes_inter"] for r in m["zeropp"]}
    plain = next(v for k, v in inter.items() if k.startswith("ZeRO-3 S=32 recompute"))
    assert all(v <= plain for v in inter.values())
    tiers = {r["scheme"]: r for r in m["frontier"]}
    assert tiers["frontier"]["seconds"] < tiers["zeropp"]["seconds"] < tiers["zero3"]["seconds"]
