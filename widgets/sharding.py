"""The sharding explorer: memory per rank and bytes per step on each link class, for a model shape on a topology.

    from widgets.sharding import ShardingExplorer
    ShardingExplorer(model="llama2-7b", topology="multinode_4x8")

Knobs: model shape, topology preset and rank count, the sharding degree S (a
slider over the divisors of the rank count only), the ZeRO stage, the ZeRO++
toggles (qwZ, hpZ, qgZ: stage 3 only; qgZ needs S = all ranks), activation
recomputation, micro-batch and the memory cap. Two charts update on every
change: stacked bars of memory per rank (params, grads, optimizer, buffers,
activations) for DDP and ZeRO 1–3 at the chosen S, with the cap as a rule, and
bars of bytes per rank per step on each link class. Everything comes from
`lab.sharding.memory` and `lab.sharding.planner` (analytic, no training), so
an update takes milliseconds (`last_update_seconds`).
"""
from __future__ import annotations

import html
import time

import altair as alt
import ipywidgets as w
import pandas as pd

from lab import topology as topo
from lab.sharding.layout import divisors
from lab.sharding.memory import MODEL_SHAPES, RECOMPUTE
from lab.sharding.planner import Candidate, evaluate
from widgets.charts import LiveChart

_STYLE = {"description_width": "8em"}
CATEGORIES = ["params", "grads", "optimizer", "buffers", "activations"]
STAGES = [("DDP", 0), ("ZeRO-1", 1), ("ZeRO-2", 2), ("ZeRO-3", 3)]


def sharding_slider(num_ranks: int, value: int | None = None) -> w.SelectionSlider:
    """Sharding degree S: only the divisors of `num_ranks` (default: all ranks)."""
    options = divisors(num_ranks)
    return w.SelectionSlider(options=options, value=value if value in options else num_ranks,
                             description="sharding S", continuous_update=True, style=_STYLE)


def memory_chart(df: pd.DataFrame, cap_gb: float | None = None) -> alt.LayerChart:
    """Stacked bars: GB per rank by category, one bar per scheme; the selected scheme opaque; the cap a rule."""
    order = [label for label, _ in STAGES]
    bars = (alt.Chart(df, title="memory per rank (GB)", width=300, height=220).mark_bar()
            .encode(x=alt.X("scheme:N", sort=order, title=None),
                    y=alt.Y("sum(gb):Q", title="GB per rank"),
                    color=alt.Color("category:N", sort=CATEGORIES, legend=alt.Legend(orient="bottom", columns=3)),
                    order=alt.Order("order:Q"),
                    opacity=alt.condition("datum.selected", alt.value(1.0), alt.value(0.45)),
                    tooltip=["scheme:N", "category:N", alt.Tooltip("gb:Q", format=".3g")]))
    if cap_gb is None:
        return bars
    rule = alt.Chart(pd.DataFrame({"cap": [cap_gb]})).mark_rule(color="#b00020", strokeDash=[4, 3]).encode(
        y="cap:Q")
    return alt.layer(bars, rule)


def bytes_chart(df: pd.DataFrame) -> alt.Chart:
    """Bars: GB each rank sends per step on each link class, one group per scheme."""
    order = [label for label, _ in STAGES]
    return (alt.Chart(df, title="bytes per rank per step (GB)", width=300, height=220).mark_bar()
            .encode(x=alt.X("scheme:N", sort=order, title=None), xOffset="link:N",
                    y=alt.Y("gb:Q", title="GB per rank per step"),
                    color=alt.Color("link:N", scale=alt.Scale(domain=["intra", "inter"]),
                                    legend=alt.Legend(orient="bottom")),
                    opacity=alt.condition("datum.selected", alt.value(1.0), alt.value(0.45)),
                    tooltip=["scheme:N", "link:N", alt.Tooltip("gb:Q", format=".3g")]))


class ShardingExplorer(w.VBox):
    """Knobs and two live charts; `.frames()` returns the (memory, bytes) tables the charts show."""

    def __init__(self, *, model: str = "llama2-7b", topology: str = "multinode_4x8", num_ranks: int | None = None,
                 stage: int = 3, sharding_degree: int | None = None, memory_cap_gb: float = 80.0,
                 recompute: str = "selective", micro_batch: int = 1):
        self.model = w.Dropdown(options=[(f"{k} ({s.num_params / 1e9:.3g}B)", k) for k, s in MODEL_SHAPES.items()],
                                value=model, description="model", style=_STYLE)
        self.topology = w.Dropdown(options=[(f"{n} ({topo.preset(n).description})", n) for n in topo.PRESETS],
                                   value=topology, description="topology", style=_STYLE)
        p = num_ranks or topo.PRESET_SIZES[topology]
        self.num_ranks = w.BoundedIntText(value=p, min=1, max=4096, description="ranks", style=_STYLE)
        self.degree = sharding_slider(p, sharding_degree)
        self.stage = w.ToggleButtons(options=STAGES, value=stage, description="stage", style=_STYLE)
        self.qwz = w.Checkbox(value=False, description="qwZ (int8 weight gather)", indent=False)
        self.hpz = w.Checkbox(value=False, description="hpZ (secondary weights per node)", indent=False)
        self.qgz = w.Checkbox(value=False, description="qgZ (int4 2-hop gradients)", indent=False)
        self.recompute = w.ToggleButtons(options=list(RECOMPUTE), value=recompute, description="recompute",
                                         style=_STYLE)
        self.micro_batch = w.IntSlider(value=micro_batch, min=1, max=16, description="micro-batch", style=_STYLE)
        self.cap = w.BoundedFloatText(value=memory_cap_gb, min=1, max=10_000, description="cap GB/rank", style=_STYLE)
        self.summary = w.HTML()
        self.last_update_seconds = 0.0
        self._quiet = False
        mem, byt = self.frames()
        self.memory_view = LiveChart(mem, build=lambda df: memory_chart(df, self.cap.value))
        self.bytes_view = LiveChart(byt, build=bytes_chart)
        for knob in (self.model, self.topology, self.degree, self.stage, self.qwz, self.hpz, self.qgz, self.recompute,
                     self.micro_batch, self.cap):
            knob.observe(self.update, names="value")
        self.num_ranks.observe(self._on_ranks, names="value")
        super().__init__([
            w.HBox([self.model, self.topology, self.num_ranks]),
            w.HBox([self.degree, self.stage]),
            w.HBox([self.qwz, self.hpz, self.qgz]),
            w.HBox([self.recompute, self.micro_batch, self.cap]),
            self.summary,
            w.HBox([self.memory_view.widget, self.bytes_view.widget]),
        ])
        self.update()

    # ---- state ------------------------------------------------------------------------------------------
    def _on_ranks(self, change=None) -> None:
        p = self.num_ranks.value
        keep = self.degree.value if p % self.degree.value == 0 else p
        self._quiet = True  # one update at the end, not one per intermediate slider value
        try:
            self.degree.options = divisors(p)
            self.degree.value = keep
        finally:
            self._quiet = False
        self.update()

    def topology_obj(self) -> topo.Topology:
        return topo.preset(self.topology.value, self.num_ranks.value)

    def candidate(self, stage: int) -> Candidate:
        s = self.degree.value if stage else 1
        t = self.topology_obj()
        z3 = stage == 3
        hpz = t.ranks_per_node if z3 and self.hpz.value and t.ranks_per_node < s else 0
        qgz = z3 and self.qgz.value and s == t.num_ranks and t.num_nodes > 1
        return Candidate(stage, s, hpz, z3 and self.qwz.value, qgz, self.recompute.value)

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(memory: scheme, category, gb, selected, order; bytes: scheme, link, gb, selected)."""
        from lab.sharding.memory import Partition, activation_bytes, memory_per_rank

        t = self.topology_obj()
        shape = MODEL_SHAPES[self.model.value]
        mem_rows, byte_rows = [], []
        for label, stage in STAGES:
            cand = self.candidate(stage)
            acts = activation_bytes(shape, micro_batch=self.micro_batch.value, recompute=cand.recompute)
            m = memory_per_rank(shape, Partition.zero(stage, cand.sharding_degree, hpz_size=cand.hpz_size),
                                activations=acts)
            sel = stage == self.stage.value
            values = {"params": m.params, "grads": m.grads, "optimizer": m.optimizer,
                      "buffers": m.buffers + m.transient, "activations": m.activations}
            for i, cat in enumerate(CATEGORIES):
                mem_rows.append({"scheme": label, "category": cat, "gb": values[cat] / 1e9, "selected": sel,
                                 "order": i})
            ev = evaluate(shape, t, cand, memory_cap=self.cap.value * 1e9, micro_batch=self.micro_batch.value)
            for link in ("intra", "inter"):
                byte_rows.append({"scheme": label, "link": link, "gb": ev[f"bytes_{link}"] / 1e9, "selected": sel,
                                  "step_s": ev["step_s"], "fits": ev["fits"], "memory_gb": ev["memory_gb"]})
        return pd.DataFrame(mem_rows), pd.DataFrame(byte_rows)

    def update(self, change=None) -> None:
        if self._quiet:
            return
        t0 = time.perf_counter()
        try:
            t = self.topology_obj()
        except ValueError as e:
            self.summary.value = f"<span style='color:#b00020'>⚠ {html.escape(str(e))}</span>"
            return
        stage3 = self.stage.value == 3
        for box in (self.qwz, self.hpz, self.qgz):
            box.disabled = not stage3
        self.qgz.disabled = not stage3 or self.degree.value != t.num_ranks or t.num_nodes == 1
        mem, byt = self.frames()
        self.memory_view.update(mem)
        self.bytes_view.update(byt)
        sel = byt[byt.selected].iloc[0]
        cand = self.candidate(self.stage.value)
        fits = "fits" if sel.fits else "<b style='color:#b00020'>does not fit</b>"
        self.summary.value = (f"{html.escape(cand.label)} on {t.num_ranks} ranks ({t.num_nodes} nodes × "
                              f"{t.ranks_per_node}), R = {t.num_ranks // cand.sharding_degree} replicas: "
                              f"{sel.memory_gb:.3g} GB per rank ({fits} in {self.cap.value:g} GB), "
                              f"predicted step {sel.step_s * 1e3:.4g} ms")
        self.last_update_seconds = time.perf_counter() - t0
