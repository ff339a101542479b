"""01_sync_period's character-LM part (QSR, DiLoCo, Streaming DiLoCo) and 07_federated, under papermill."""
import math

import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_sync_period_character_lm_part(execute):  # noqa: F811
    m = execute("01_sync_period", steps=16, sync_periods=[4], topologies=["wan_sites"], lm_steps=24)
    lm = m["char_lm"]
    runs = lm["runs"]
    assert set(runs) == {"DDP", "Local SGD H=12", "QSR H_base=4", "DiLoCo H=12", "Streaming P=3",
                         "Streaming P=3 4-bit"}
    for label, r in runs.items():
        assert r["eval_loss"] < 3.6, label  # trained: a uniform guess over the characters is about 4.1
    for label in ("Local SGD H=12", "DiLoCo H=12", "Streaming P=3"):
        assert runs[label]["bytes_vs_ddp"] == pytest.approx(1 / 12)
        assert runs[label]["sim_seconds"] < runs["DDP"]["sim_seconds"] / 4
    # one fragment at a time: strided fragments (layers p, p + P, ...) are as even as the layers allow
    assert runs["Streaming P=3"]["peak_sync_bytes"] < 0.6 * runs["DiLoCo H=12"]["peak_sync_bytes"]
    # 4-bit codes (plus scales) on both hops of the two-phase compressed all-reduce, against the fp32 ring
    assert 4 / 32 <= runs["Streaming P=3 4-bit"]["bytes"] / runs["Streaming P=3"]["bytes"] <= 0.15
    q = lm["qsr"]
    start = 0
    for step, h, lr in zip(q["step"], q["sync_period"], q["lr"]):
        assert h == min(max(q["h_base"], math.floor((q["alpha"] / lr) ** 2)), 24 - start)
        start = step
    assert start == 24 and q["sync_period"][-1] > q["h_base"]


def test_federated_notebook(execute):  # noqa: F811
    m = execute("07_federated", rounds=6)
    runs, s = m["runs"], m["sampled_per_round"]
    assert set(runs) == {"FedAvg", "FedProx", "SCAFFOLD", "SCALLION rand-k", "SCAFCOM top-k", "MoDeST", "FedVote",
                         "PGFed"}
    for label, r in runs.items():
        assert r["rounds_completed"] == 6, label
        assert r["participants"] < 6 * s, label  # some sampled clients dropped out
        assert r["eval_accuracy"] > 0.2, label  # 10 classes: chance is 0.1
    server = [k for k in runs if k != "MoDeST"]
    assert len({runs[k]["participants"] for k in server}) == 1  # the same dropouts in every server-based run
    assert runs["SCAFFOLD"]["uplink_vs_fedavg"] == pytest.approx(2.0)  # model delta and control delta
    assert runs["SCALLION rand-k"]["uplink_vs_fedavg"] <= 0.1
    assert runs["FedVote"]["uplink_vs_fedavg"] < 1 / 32
    assert 0 < runs["PGFed"]["personal_accuracy"] <= 1
    # adapters fine-tune the same pre-trained backbone as full fine-tuning, for a fraction of its uplink
    adapters = m["adapters"]
    assert set(adapters) == {"full fine-tuning", "FedPEFT (LoRA)", "FedEx-LoRA", "DP-LoRA", "CELLM"}
    for label, a in adapters.items():
        assert a["status"] == "finished" and a["accuracy"] > 0.2, label
        if label != "full fine-tuning":
            assert a["uplink_vs_full"] < 0.5, label
