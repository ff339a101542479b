"""Compression config fields are validated, the ratio knob reports measured ratios, and majority vote is biased."""
import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.compress import Channel, MajorityVote, ScaledSign, make_feedback
from lab.compress.knob import Probe
from lab.experiment import ExperimentConfig
from lab.topology import preset

BAD = [
    ({"compressor": "majority_vote"}, "error_feedback='ef'", "'none'"),
    ({"compressor": "powersgd", "technique": "fedavg"}, "compressor='powersgd'", "fedavg"),
    ({"compressor": "3sfc", "dataset": "chars", "model": "gpt"}, "dataset='chars'", "'digits'"),
    ({"econtrol_eta": 1.5}, "econtrol_eta=1.5", "[0, 1]"),
    ({"zo_seeds": 0}, "zo_seeds=0", "an integer in [1, "),
    ({"zo_eps": 0}, "zo_eps=0.0", "in (0, "),
    ({"dp_delta": 1.0}, "dp_delta=1.0", "(0, 1)"),
    ({"cellm_up_density": 0}, "cellm_up_density=0.0", "(0, 1]"),
    ({"peft_mode": "prompt"}, "peft_mode='prompt'", "lora"),
    ({"zo_seed_sampling": "best"}, "zo_seed_sampling='best'", "importance"),
]


@pytest.mark.parametrize("changes,named,allowed", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_compression_values_name_field_value_and_what_is_allowed(changes, named, allowed):
    with pytest.raises(ValueError) as err:
        ExperimentConfig(**changes)
    assert named in str(err.value) and allowed in str(err.value)


def test_the_knob_targets_the_traffic_ratio_through_the_chosen_algorithm():
    probe = Probe(ExperimentConfig())  # DDP, 8 workers on one NVLink node: two-phase
    k = probe.knob("topk", 0.01)
    # chunks of ⌈4810/8⌉ = 602 values, 3 x (4 + 4) bytes each <= 0.01 x 4 x 602; 8 chunks = 24 values in all
    assert k["parameter"] == "k=3 per chunk of 602 (8 chunks)" and k["algorithm"] == "two_phase"
    assert 0.0099 < k["payload_ratio"] <= 0.01 and 0.0099 < k["traffic_ratio"] <= 0.01
    assert probe.knob("qsgd", 0.01)["traffic_ratio"] > 0.01  # 2 bits + a scale per bucket is QSGD's floor
    assert probe.setting_for("qsgd", 0.01) is None
    s = probe.setting_for("powersgd", 0.07)
    assert s is not None and probe.knob("powersgd", s)["traffic_ratio"] <= 0.07
    # 3SFC is all-gathered: traffic = payload x P/2, so a target of 0.2 gives payload 0.05, n_s = 3
    # (3 x (64 + 10) x 4 + 4 bytes <= 0.05 x 4 x 4810)
    sfc = probe.knob("3sfc", 0.2)
    assert sfc["parameter"] == "n_s=3" and sfc["algorithm"] == "all_gather" and sfc["traffic_ratio"] <= 0.2


def test_majority_vote_converges_to_the_median_and_scaled_sign_with_ef_to_the_mean():
    """Spec Appendix A.3: f_i = (x - b_i)²/2, b = (1, 1, -10); lr 0.01, 5000 steps (one coordinate: the
    messages are all-gathered, the vote is taken on every rank)."""
    b = torch.tensor([[1.0], [1.0], [-10.0]])
    topology = preset("nvlink_node", 3).pin({"compressed_all_reduce": "all_gather"})
    coll = SimulatedCollective(world_size=3, ledger=Ledger(topology))
    out = {}
    for comp, fb in ((MajorityVote(), "none"), (ScaledSign(), "ef")):
        channel = Channel(comp, make_feedback(fb, comp))
        x = torch.zeros(1)
        for _ in range(5000):
            x = x - 0.01 * channel.all_reduce_mean(x - b, coll, tag="g")[0]
        out[comp.name] = float(x)
    assert abs(out["majority_vote"] - 1.0) < 0.02  # the median client's optimum
    assert abs(out["sign"] - (-8 / 3)) < 1e-3  # the true optimum, the mean of b
