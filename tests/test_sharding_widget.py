"""The sharding explorer, headless: the slider offers only divisors, toggles follow the stage, the charts carry
the memory model's numbers."""
import pytest

from lab.sharding.memory import MODEL_SHAPES, zero_memory
from widgets.sharding import ShardingExplorer


@pytest.fixture(scope="module")
def ex():
    return ShardingExplorer(model="llama2-7b", topology="multinode_4x8", num_ranks=32, stage=3)


def test_slider_offers_only_divisors_of_the_rank_count(ex):
    assert list(ex.degree.options) == [1, 2, 4, 8, 16, 32] and ex.degree.value == 32
    ex.degree.value = 8
    ex.num_ranks.value = 16  # 8 still divides 16: kept
    assert list(ex.degree.options) == [1, 2, 4, 8, 16] and ex.degree.value == 8
    ex.num_ranks.value = 12  # 8 does not divide 12: back to all ranks
    assert list(ex.degree.options) == [1, 2, 3, 4, 6, 12] and ex.degree.value == 12
    ex.num_ranks.value = 32
    ex.degree.value = 32


def test_zeropp_toggles_follow_the_stage_and_degree(ex):
    ex.stage.value = 1
    assert ex.qwz.disabled and ex.hpz.disabled and ex.qgz.disabled
    ex.stage.value = 3
    assert not ex.qwz.disabled and not ex.qgz.disabled
    ex.degree.value = 8
    assert ex.qgz.disabled  # qgZ reduces over all ranks
    ex.degree.value = 32


def test_charts_show_the_memory_model(ex):
    ex.stage.value = 3
    ex.degree.value = 16
    mem, byt = ex.frames()
    shape = MODEL_SHAPES["llama2-7b"]
    for label, stage in (("DDP", 0), ("ZeRO-1", 1), ("ZeRO-2", 2), ("ZeRO-3", 3)):
        rows = mem[mem.scheme == label].set_index("category").gb
        expected = zero_memory(shape, stage, 16 if stage else 1)
        assert rows["params"] + rows["grads"] + rows["optimizer"] == pytest.approx(expected.states / 1e9)
    assert mem[mem.selected].scheme.unique().tolist() == ["ZeRO-3"]
    assert set(byt.link) == {"intra", "inter"}
    # ZeRO-3 moves 1.5x what ZeRO-1 moves; the charts were given the data
    per = byt.groupby("scheme").gb.sum()
    assert per["ZeRO-3"] > per["ZeRO-1"]
    assert ex.memory_view.num_values > 0 and ex.bytes_view.num_values > 0
    assert "GB per rank" in ex.summary.value


def test_hpz_moves_the_backward_gather_off_inter_node_links(ex):
    ex.stage.value, ex.degree.value = 3, 32
    before = ex.frames()[1].set_index(["scheme", "link"]).gb[("ZeRO-3", "inter")]
    ex.hpz.value = True
    after = ex.frames()[1].set_index(["scheme", "link"]).gb[("ZeRO-3", "inter")]
    ex.hpz.value = False
    assert after < before


def test_a_rank_count_the_topology_cannot_hold_is_explained():
    ex = ShardingExplorer(model="gpt2-124m", topology="nvlink_node", num_ranks=8)
    ex.num_ranks.value = 16
    assert "does not fit" in ex.summary.value
