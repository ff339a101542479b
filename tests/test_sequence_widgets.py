"""The sequence-parallel charts and explorer, headless: knobs change the charts' data and the summary."""
from __future__ import annotations

import pandas as pd

from lab import topology as topo
from lab.sequence.cost import sweep
from widgets.sequence import SequenceExplorer, bytes_chart, memory_chart, time_chart, valid_degrees


def test_charts_have_units_on_their_axes():
    df = sweep(["ring", "ulysses"], [4096, 8192], [topo.preset("nvlink_node", 4)], heads=8, head_dim=16)
    for chart, unit in ((time_chart(df), "ms"), (bytes_chart(df), "MB"), (memory_chart(df), "GB")):
        spec = chart.to_dict()
        enc = spec["spec"]["encoding"]
        assert "tokens" in enc["x"]["title"] and unit in enc["y"]["title"]


def test_explorer_follows_its_knobs():
    ex = SequenceExplorer(methods=("ring", "ulysses", "usp"), seq_lengths=(4096, 65536), topology="multinode_4x8",
                          degree=8, heads=32, head_dim=128)
    first = ex.summary.value
    assert ex.degree.options == tuple(valid_degrees("multinode_4x8"))
    ex.degree.value = 32
    df = ex.frame()
    assert set(df.ranks) == {32} and ex.time_view.num_values == len(df)
    ex.kv_heads.value = 8  # grouped-query attention: Ring Attention sends less
    gqa = ex.frame()
    ring = lambda d: float(d[(d.method == "ring") & (d.seq == 65536)].bytes_per_rank.iloc[0])  # noqa: E731
    assert ring(gqa) < ring(df)
    ex.topology.value = "nvlink_node"  # 32 ranks do not fit one node: the degree falls back
    assert ex.degree.value in valid_degrees("nvlink_node") and ex.summary.value != first
    assert isinstance(ex.frame(), pd.DataFrame)
