"""The expert-placement explorer: where each layer's experts sit, and how many tokens then cross GPUs.

`ExpertPlacement` plants a routing trace with inter-layer affinity (`lab.moe.exflow.planted_trace`: a token
that used expert e at layer l goes to a few experts at l+1 with probability `stickiness`), and shows two
placements side by side — plain expert parallelism (expert e on GPU e // (E/G) in every layer) and ExFlow's
(`solve_placement`: the assignment that keeps the most layer-to-layer transitions on one GPU, solved exactly)
— with the cross-GPU transitions each leaves. No training logic here: every number comes from `lab.moe`.
"""
from __future__ import annotations

import altair as alt
import ipywidgets as w
import pandas as pd

from lab.moe.exflow import affinity, contiguous_placement, cross_gpu_transitions, planted_trace, solve_placement
from widgets.charts import LiveChart

_STYLE = {"description_width": "initial"}
PLACEMENTS = ("plain EP", "ExFlow")


def placement_frame(*, num_experts: int, num_gpus: int, num_layers: int, stickiness: float, tokens: int = 2048,
                    seed: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    """(one row per (placement, layer, expert) with its GPU, {placement: cross-GPU transitions})."""
    trace = planted_trace(tokens, num_layers, num_experts, stickiness=stickiness, seed=seed)
    aff = affinity(trace, num_experts)
    plans = {"plain EP": contiguous_placement(num_layers, num_experts, num_gpus),
             "ExFlow": solve_placement(aff, num_gpus)}
    rows = [{"placement": name, "layer": layer, "expert": e, "gpu": f"GPU {int(p[layer, e])}"}
            for name, p in plans.items() for layer in range(num_layers) for e in range(num_experts)]
    crossings = {name: cross_gpu_transitions(aff, p) for name, p in plans.items()}
    return pd.DataFrame(rows), crossings


def placement_chart(df: pd.DataFrame, crossings: dict[str, int], *, total: int) -> alt.HConcatChart:
    """Expert × layer grids coloured by GPU, one per placement, and the share of transitions crossing GPUs."""
    grid = alt.Chart(df).mark_rect(stroke="white").encode(
        x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)), y=alt.Y("expert:O", title="expert"),
        color=alt.Color("gpu:N", title="GPU"), tooltip=["placement:N", "layer:O", "expert:O", "gpu:N"],
    ).properties(width=120, height=160).facet(column=alt.Column("placement:N", title=None, sort=list(PLACEMENTS)))
    share = pd.DataFrame([{"placement": k, "share": v / total if total else 0.0} for k, v in crossings.items()])
    bars = alt.Chart(share).mark_bar(color="#6b6b6b").encode(
        x=alt.X("share:Q", title="token transitions that cross GPUs", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("placement:N", title=None, sort=list(PLACEMENTS)),
        tooltip=["placement:N", alt.Tooltip("share:Q", format=".1%")],
    ).properties(width=260, height=80, title="Which placement keeps tokens on their GPU?")
    return alt.hconcat(grid, bars)


class ExpertPlacement(w.VBox):
    """Experts, GPUs, layers and routing affinity -> the two placements and their GPU crossings, live."""

    def __init__(self, *, num_experts: int = 8, num_gpus: int = 4, num_layers: int = 3, stickiness: float = 0.8,
                 tokens: int = 2048):
        self.tokens = tokens
        self.experts = w.Dropdown(options=[4, 8], value=num_experts, description="experts per layer", style=_STYLE)
        self.gpus = w.Dropdown(options=[2, 4], value=num_gpus, description="GPUs (EP degree)", style=_STYLE)
        self.layers = w.IntSlider(value=num_layers, min=2, max=4, description="MoE layers", style=_STYLE)
        self.stickiness = w.FloatSlider(value=stickiness, min=0.0, max=1.0, step=0.05, readout_format=".0%",
                                        description="routing affinity", style=_STYLE)
        self.summary = w.HTML()
        df = self.frame()
        self.view = LiveChart(df, build=lambda d: placement_chart(d, self.crossings, total=self.total))
        for knob in (self.experts, self.gpus, self.layers, self.stickiness):
            knob.observe(self.update, names="value")
        super().__init__([w.HBox([self.experts, self.gpus, self.layers, self.stickiness]), self.summary,
                          self.view.widget])
        self.update()

    def frame(self) -> pd.DataFrame:
        """This setting's placements; sets `crossings` and `total` (token transitions between layers)."""
        df, self.crossings = placement_frame(num_experts=self.experts.value, num_gpus=self.gpus.value,
                                             num_layers=self.layers.value, stickiness=self.stickiness.value,
                                             tokens=self.tokens)
        self.total = self.tokens * (self.layers.value - 1)
        return df

    def update(self, change=None) -> None:
        self.view.update(self.frame())
        total = self.total
        plain, ex = self.crossings["plain EP"], self.crossings["ExFlow"]
        cut = 1 - ex / plain if plain else 0.0
        self.summary.value = (f"Cross-GPU transitions: plain EP {plain:,} of {total:,}, ExFlow {ex:,} "
                              f"({cut:.0%} fewer tokens leave their GPU between layers).")
