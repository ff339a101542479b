"""Charts and an explorer for sequence parallelism (lab.sequence): which method wins at which length.

`time_chart`, `bytes_chart`, `memory_chart` draw one row per (topology, sequence length, method) from
`lab.sequence.cost.sweep`; `SequenceExplorer` puts a topology picker, the sequence-parallel degree and
the K/V heads (grouped-query attention) beside live charts. No training logic here.
"""
from __future__ import annotations

import altair as alt
import ipywidgets as w
import pandas as pd

from lab import topology as topo
from lab.sequence.cost import sweep
from widgets.charts import LiveChart

_STYLE = {"description_width": "initial"}
LABELS = {"ring": "Ring Attention", "token_ring": "TokenRing", "ulysses": "Ulysses", "usp": "USP (Ulysses × ring)",
          "burst": "BurstAttention", "lss": "LSS Transformer", "lasp": "LASP (linear)"}


def _base(df: pd.DataFrame, y: str, title: str, *, width: int, height: int) -> alt.Chart:
    data = df.assign(label=df.method.map(LABELS).fillna(df.method),
                     place=df.topology + " (" + df.ranks.astype(str) + " ranks)")
    pick = alt.selection_point(fields=["label"], bind="legend")
    lengths = sorted(int(n) for n in data.seq.unique())
    k_or_m = "datum.value >= 1048576 ? datum.value / 1048576 + 'M' : datum.value / 1024 + 'K'"
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("seq:Q", scale=alt.Scale(type="log", base=2),
                axis=alt.Axis(values=lengths, labelExpr=k_or_m), title="sequence length (tokens, log)"),
        y=alt.Y(f"{y}:Q", scale=alt.Scale(type="log"), axis=alt.Axis(format="~g", tickCount=6), title=title),
        color=alt.Color("label:N", title="method"),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=["place:N", "label:N", "seq:Q", alt.Tooltip(f"{y}:Q", format=".3~s")],
    ).add_params(pick).properties(width=width, height=height)


def time_chart(df: pd.DataFrame, *, width: int = 300, height: int = 220) -> alt.FacetChart:
    """Simulated seconds of one attention layer (forward + backward), one panel per topology."""
    data = df.assign(sim_ms=df.sim_seconds * 1e3)
    return _base(data, "sim_ms", "simulated ms per layer (fwd + bwd, log)", width=width,
                 height=height).facet(column=alt.Column("place:N", title=None))


def bytes_chart(df: pd.DataFrame, *, width: int = 300, height: int = 220) -> alt.FacetChart:
    """Bytes each rank sends per layer (forward + backward), one panel per topology."""
    data = df.assign(mb_per_rank=df.bytes_per_rank / 1e6)
    return _base(data, "mb_per_rank", "MB sent per rank per layer (fwd + bwd, log)", width=width,
                 height=height).facet(column=alt.Column("place:N", title=None))


def memory_chart(df: pd.DataFrame, *, width: int = 300, height: int = 220) -> alt.FacetChart:
    """Activation bytes each rank keeps per layer for the backward pass, in GB (every method but LSS keeps
    the same: its Q, K, V, output and log-sum-exp)."""
    data = df.assign(activation_gb=df.activation_bytes / 1e9)
    return _base(data, "activation_gb", "activation GB per rank per layer (log)", width=width,
                 height=height).facet(column=alt.Column("place:N", title=None))


def valid_degrees(name: str, candidates=(2, 4, 8, 16, 32, 64)) -> list[int]:
    """SP degrees (= ranks) the preset topology accepts."""
    out = []
    for p in candidates:
        try:
            topo.preset(name, p)
        except ValueError:
            continue
        out.append(p)
    return out


class SequenceExplorer(w.VBox):
    """Topology, SP degree and K/V heads -> live time and bytes charts over sequence lengths."""

    def __init__(self, *, methods=("ring", "token_ring", "ulysses", "usp", "burst", "lss"),
                 seq_lengths=(4096, 16384, 65536, 262144, 1048576), topology: str = "multinode_4x8",
                 degree: int = 32, heads: int = 32, head_dim: int = 128):
        self.methods, self.seq_lengths, self.heads, self.head_dim = list(methods), list(seq_lengths), heads, head_dim
        self.topology = w.Dropdown(options=[n for n in topo.PRESETS if valid_degrees(n)], value=topology,
                                   description="topology", style=_STYLE)
        self.degree = w.Dropdown(options=valid_degrees(topology), value=degree, description="SP degree (ranks)",
                                 style=_STYLE)
        kv = [d for d in (1, 2, 4, 8, 16, 32) if heads % d == 0]
        self.kv_heads = w.Dropdown(options=kv, value=heads if heads in kv else kv[-1],
                                   description="K/V heads (GQA)", style=_STYLE)
        self.summary = w.HTML()
        df = self.frame()
        self.time_view = LiveChart(df, build=lambda d: time_chart(d, width=320))
        self.bytes_view = LiveChart(df, build=lambda d: bytes_chart(d, width=320))
        self.topology.observe(self._on_topology, names="value")
        for knob in (self.degree, self.kv_heads):
            knob.observe(self.update, names="value")
        super().__init__([w.HBox([self.topology, self.degree, self.kv_heads]), self.summary,
                          w.HBox([self.time_view.widget, self.bytes_view.widget])])
        self.update()

    def _on_topology(self, change=None) -> None:
        options = valid_degrees(self.topology.value)
        keep = self.degree.value if self.degree.value in options else options[-1]
        self.degree.unobserve(self.update, names="value")
        try:
            self.degree.options, self.degree.value = options, keep
        finally:
            self.degree.observe(self.update, names="value")
        self.update()

    def frame(self) -> pd.DataFrame:
        t = topo.preset(self.topology.value, self.degree.value)
        return sweep(self.methods, self.seq_lengths, [t], heads=self.heads, head_dim=self.head_dim,
                     kv_heads=self.kv_heads.value)

    def update(self, change=None) -> None:
        df = self.frame()
        self.time_view.update(df)
        self.bytes_view.update(df)
        best = df.loc[df.groupby("seq").sim_seconds.idxmin()]
        self.summary.value = "fastest per length: " + ", ".join(
            f"{n:,} tokens: {LABELS.get(m, m)}" for n, m in zip(best.seq, best.method))
