"""02_compression and 08_zeroth_order run under papermill with small parameters; their metrics are checked."""
from __future__ import annotations

import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_compression_notebook(execute):  # noqa: F811
    m = execute("02_compression", steps=60, num_workers=4, target_ratio=0.07, compressors=["topk", "sign", "fedzip"],
                feedbacks=["none", "ef"], lm_steps=8, lm_compressors=["topk"])
    assert {k["compressor"] for k in m["knob"]} == {"topk", "sign", "fedzip"}
    assert m["left_out"] == {} and m["lm_left_out"] == {}  # all reach 0.07 (at 0.01 qsgd, sign, powersgd do not)
    for k in m["knob"]:  # each compressor's setting meets the target traffic, as the probe measured it
        assert k["traffic_ratio"] <= 0.07 and k["payload_ratio"] <= k["traffic_ratio"] * 1.05, k
    for key, r in m["runs"].items():
        assert r["status"] == "finished", key
        assert r["traffic_ratio"] <= 0.07 * 1.05, key  # FedZip's size depends on the data: the probe estimates it
        assert r["bytes"] < 0.1 * m["dense"]["bytes"], key  # the traffic ratio is what the Ledger counted
    assert m["runs"]["topk/ef"]["eval_accuracy"] > 0.7
    assert m["runs"]["topk/ef"]["eval_accuracy"] >= m["runs"]["topk/none"]["eval_accuracy"] - 0.02
    assert set(m["lm"]) == {"dense DDP", "topk"}
    assert m["lm"]["topk"]["traffic_ratio"] <= 0.07 * 1.05 and m["lm"]["topk"]["status"] == "finished"


def test_zeroth_order_notebook(execute):  # noqa: F811
    m = execute("08_zeroth_order", rounds=3, num_workers=4, local_steps=3, zo_local_steps=20, zo_seeds=1024,
                job_steps=24)
    rows = {r["method"]: r for r in m["per_round"]}
    assert set(rows) == {"FedAvg", "FedKSeed", "Just One Byte", "Ferret", "FZooS"}
    assert rows["FedKSeed"]["uplink bytes per client per round"] == 20 * (2 + 4)  # (int16 seed, fp32 scalar) pairs
    assert rows["FedKSeed"]["downlink bytes per client per round"] == 4 * 1024  # the seed pool
    assert rows["Just One Byte"]["uplink bytes per client per round"] == 4  # zo_samples bytes per iteration
    assert rows["FedAvg"]["uplink bytes per client per round"] == 4 * 4810
    assert rows["Ferret"]["uplink bytes per client per round"] < rows["FedAvg"]["uplink bytes per client per round"]
    for name in ("FedAvg", "FedKSeed", "Just One Byte", "Ferret"):
        r = m["runs"][name]
        assert r["status"] == "finished" and r["eval_loss"] < r["initial_eval_loss"], name
