"""The committed bench/netlab.py results are what the code predicts from their raw measurements, and they hold.

The benchmark itself needs root and several minutes (bench/netlab.py); this test only re-runs its prediction
step on the stored measurements, so a hand-edited or stale results file fails here.
"""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "netlab.json"


@pytest.fixture(scope="module")
def netlab():
    spec = importlib.util.spec_from_file_location("netlab", REPO / "bench" / "netlab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_predictions_are_reproduced_from_the_raw_measurements(netlab):
    stored = json.loads(RESULTS.read_text())
    alg = netlab.reduce_scatter_algorithm(stored["raw"])
    rows = netlab.predict(stored["raw"], alg)
    assert alg == stored["reduce_scatter_algorithm"] == "via_all_reduce"  # gloo's reduce-scatter sends 2(P-1)/P·M
    assert len(rows) == len(stored["rows"]) == 5 * 6 * 3 * 2  # ops × sizes × rank counts × rates
    for new, old in zip(rows, stored["rows"]):
        assert (new["op"], new["ranks"], new["rate_mbit"], new["size"]) == (old["op"], old["ranks"],
                                                                            old["rate_mbit"], old["size"])
        assert new["predicted_s"] == pytest.approx(old["predicted_s"], rel=1e-12)
        assert new["measured_s"] == old["measured_s"]
    assert netlab.summarize(rows) == stored["summary"]


def test_the_measured_cases_meet_the_bar_and_the_wire_carries_the_modelled_bytes():
    stored = json.loads(RESULTS.read_text())
    s = stored["summary"]
    assert s["cases_at_least_1MB"] == 120 and s["median_abs_error_at_least_1MB"] <= 0.15 and s["passed"]
    for r in stored["rows"]:
        if r["size"] >= 2**20:  # interface tx bytes (with TCP/IP/Ethernet headers and ACKs) over modelled payload
            assert 1.0 <= r["wire_over_model_bytes"] <= 1.2, r
