"""The expert-placement explorer: its numbers are lab.moe's, ExFlow never crosses GPUs more than plain EP,
and moving a knob redraws the chart with the new placements."""
import pytest

from lab.moe.exflow import affinity, contiguous_placement, cross_gpu_transitions, planted_trace, solve_placement
from widgets.moe import ExpertPlacement, placement_frame


def test_placement_frame_counts_what_lab_moe_counts():
    df, crossings = placement_frame(num_experts=8, num_gpus=4, num_layers=3, stickiness=0.8, tokens=512, seed=1)
    aff = affinity(planted_trace(512, 3, 8, stickiness=0.8, seed=1), 8)
    assert crossings["plain EP"] == cross_gpu_transitions(aff, contiguous_placement(3, 8, 4))
    assert crossings["ExFlow"] == cross_gpu_transitions(aff, solve_placement(aff, 4))
    assert len(df) == 2 * 3 * 8 and set(df.placement) == {"plain EP", "ExFlow"}
    # balanced: every GPU holds E/G experts of every layer in both placements
    assert (df.groupby(["placement", "layer", "gpu"]).size() == 2).all()


@pytest.mark.parametrize("stickiness", [0.0, 0.5, 0.9])
def test_exflow_never_crosses_more_than_plain_ep(stickiness):
    _, c = placement_frame(num_experts=8, num_gpus=4, num_layers=3, stickiness=stickiness, tokens=512)
    assert c["ExFlow"] <= c["plain EP"]


def test_moving_a_knob_redraws_with_the_new_placements():
    x = ExpertPlacement(tokens=512)
    before = (dict(x.crossings), x.view.num_values)
    x.stickiness.value = 0.1
    assert x.crossings != before[0]
    x.layers.value = 4
    assert x.view.num_values > before[1]  # 4 layers of experts instead of 3
    assert "ExFlow" in x.summary.value and "%" in x.summary.value
