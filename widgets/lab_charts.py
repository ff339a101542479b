"""The Lab's charts and numbers: SI formatting, downsampling, labels from differences, the analytic views.

- `si(x, unit)` formats for tables ('20 MB', '3.3 s', '450 µs'); `si_axis(unit)` is the same as a Vega label
  expression, so chart ticks read '20 MB' instead of '2e+7'.
- `downsample(df, n)` keeps at most n rows per run (evenly spaced, first and last kept): charts redraw from it,
  the full rows stay in the Runs.
- `diff_labels(configs)` labels runs by what differs between the runs shown ('H=8 topk 0.1' vs 'H=64 topk 0.1').
- `analytic(config)` predicts, without training, what a config sends per step on each link class, how long a step
  takes on its topology and what each rank holds (lab.sharding.composed, lab.topology, lab.sharding.memory);
  `analytic_chart` draws the three as bar charts whose titles ask the question they answer.
- `runs_charts(df)` draws runs: loss vs steps, bytes per link class, simulated time; diverged runs are marked
  and their losses clipped to the range of the others.
"""
from __future__ import annotations

import math
from functools import lru_cache

import altair as alt
import numpy as np
import pandas as pd

#: per-series cap on the rows a chart carries
MAX_POINTS = 500
#: runs with at most this many rows get a dot on each row (a one-round run is then visible)
SPARSE_ROWS = 60
_PREFIX = {"B": ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")),
           "s": ((3600.0, "h"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))}
#: knobs shown short in labels and table headers
SHORT = {"sync_period": "H", "sharding_degree": "S", "zero_stage": "stage", "compression_ratio": "ratio",
         "num_workers": "P", "compressor": "", "technique": "", "topology": "", "error_feedback": "EF"}
LINKS = {"intra": "intra-node", "inter": "inter-node", "uplink": "uplink", "downlink": "downlink"}


def si(x: float, unit: str = "") -> str:
    """`x` with an SI prefix and unit: si(2e7, 'B') -> '20 MB', si(3.3, 's') -> '3.3 s', si(4.5e-4, 's') -> '450 µs'."""
    if x is None or not math.isfinite(x):
        return "—" if x is None or math.isnan(x) else ("∞" if x > 0 else "−∞")
    if x == 0:
        return f"0 {unit}".rstrip()
    if unit == "s" and abs(x) >= 3600:
        return f"{x / 3600:.3g} h"
    steps = [(k, p) for k, p in _PREFIX.get(unit, _PREFIX["B"]) if p != "h"]
    scale, p = next(((k, p) for k, p in steps if abs(x) >= k), steps[-1])
    return f"{x / scale:.3g} {p}{unit}".rstrip()


def si_axis(unit: str) -> str:
    """A Vega label expression printing an axis value with an SI prefix and `unit`."""
    steps = [(s, p) for s, p in _PREFIX.get(unit, _PREFIX["B"]) if p != "h"]
    expr = f"format(datum.value / {steps[-1][0]}, '.3~f') + ' {steps[-1][1]}{unit}'"
    for scale, p in reversed(steps[:-1]):
        expr = f"abs(datum.value) >= {scale} ? format(datum.value / {scale}, '.3~f') + ' {p}{unit}' : ({expr})"
    return f"datum.value == 0 ? '0' : ({expr})"


def downsample(df: pd.DataFrame, n: int = MAX_POINTS, by: str = "label") -> pd.DataFrame:
    """At most `n` rows per `by` group, evenly spaced, first and last kept."""
    if df.empty or by not in df:
        return df
    parts = []
    for _, g in df.groupby(by, sort=False):
        if len(g) > n:
            g = g.iloc[np.unique(np.linspace(0, len(g) - 1, n).round().astype(int))]
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def diff_fields(configs) -> list[str]:
    """The config fields whose values differ between `configs` (in field order)."""
    dicts = [c.to_dict() for c in configs]
    if len(dicts) < 2:
        return []
    return [k for k in dicts[0] if len({repr(d.get(k)) for d in dicts}) > 1]


def diff_labels(configs) -> list[str]:
    """One label per config from the fields that differ between them (the technique when alone)."""
    fields = diff_fields(configs)
    out = []
    for c in configs:
        parts = [(f"{SHORT[f]}=" if SHORT.get(f) else ("" if f in SHORT else f"{f}=")) + _short(getattr(c, f))
                 for f in fields]
        out.append(" ".join(parts) or c.technique)
    return out


# ---- analytic views ----------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def model_info(model: str, dataset: str, hidden: int) -> tuple[tuple, float]:
    """(parameter-tensor lengths, flops per example) of a model for a dataset, built once."""
    from lab.data import load_dataset
    from lab.models import build_model

    spec = build_model(model, load_dataset(dataset), seed=0, hidden=hidden)
    return tuple(p.numel() for p in spec.module.parameters()), float(spec.flops_per_example)


def analytic(config) -> dict:
    """Predicted bytes per step per link class, time per step and memory per rank of `config`, as frames:
    {'bytes', 'time', 'memory'} (None where the technique has no composed prediction, with 'why')."""
    from lab.optim import optimizer_name
    from lab.sharding.composed import TECHNIQUES, calls_for_config, predict_memory
    from lab.sharding.options import degree, hpz_size_of
    from lab.topology import for_config

    numels, flops = model_info(config.model, config.dataset, config.mlp_hidden)
    d = int(sum(numels))
    t = for_config(config)
    out = {"num_params": d, "why": ""}
    s = degree(config)
    mem = predict_memory(d, technique=config.technique, zero_stage=config.zero_stage if s > 1 else 0,
                         sharding_degree=s, optimizer=optimizer_name(config),
                         momentum=config.momentum, hpz_size=hpz_size_of(config, t) if s > 1 else 0)
    out["memory"] = pd.DataFrame({"category": list(mem), "bytes": list(mem.values())})
    compute = t.compute_seconds(flops * config.batch_size)
    if config.technique not in TECHNIQUES:
        out.update(bytes=None, time=None, why=f"no composed prediction for technique={config.technique!r} "
                                             f"(predicted: {', '.join(TECHNIQUES)})")
        return out
    rows = calls_for_config(config, num_params=d, numels=numels)
    out["bytes"] = pd.DataFrame([{"link": LINKS[k], "tag": r["tag"], "bytes": r[k] / r["every"]}
                                 for r in rows for k in LINKS if r[k] > 0] or
                                [{"link": "intra-node", "tag": "none", "bytes": 0.0}])
    out["time"] = pd.DataFrame([{"part": "compute", "seconds": compute}] +
                               [{"part": r["tag"], "seconds": r["seconds"] / r["every"]} for r in rows])
    return out


def analytic_chart(a: dict, *, width: int = 220, height: int = 150) -> alt.HConcatChart:
    """Three bar charts of `analytic(config)`: bytes per step per link class, time per step, memory per rank."""
    charts = []
    if a.get("bytes") is not None:
        by = a["bytes"].groupby("link", sort=False).bytes.sum()
        per_link = ", ".join(f"{si(v, 'B')} {k}" for k, v in by.items())
        charts.append(alt.Chart(a["bytes"], width=width, height=height, title=alt.Title(
            "How many bytes does a step send?", subtitle=f"per step, all ranks: {per_link}")).mark_bar().encode(
            x=alt.X("sum(bytes):Q", title="bytes per step (all ranks)", axis=alt.Axis(labelExpr=si_axis("B"),
                                                                                     tickCount=4)),
            y=alt.Y("link:N", title=None), color=alt.Color("tag:N", title="collective",
                                                           legend=alt.Legend(orient="bottom", columns=2)),
            tooltip=["link:N", "tag:N", alt.Tooltip("bytes:Q", format=".3s")]))
        step = a["time"].seconds.sum()
        charts.append(alt.Chart(a["time"], width=width, height=height, title=alt.Title(
            "How long does a step take?", subtitle=f"{si(step, 's')} per step on the topology")).mark_bar().encode(
            x=alt.X("sum(seconds):Q", title="seconds per step", axis=alt.Axis(labelExpr=si_axis("s"), tickCount=4)),
            color=alt.Color("part:N", title="part", legend=alt.Legend(orient="bottom", columns=2)),
            tooltip=["part:N", alt.Tooltip("seconds:Q", format=".3s")]))
    else:
        charts.append(alt.Chart(pd.DataFrame({"text": [a["why"]]}), width=2 * width, height=height,
                                title="What does a step send?").mark_text(align="left", x=5).encode(text="text:N"))
    mem = a["memory"]
    charts.append(alt.Chart(mem, width=width, height=height, title=alt.Title(
        "How much memory does each rank hold?", subtitle=f"{si(mem.bytes.sum(), 'B')} per rank, "
                                                         f"{si(a['num_params'], '')} parameters")).mark_bar().encode(
        x=alt.X("sum(bytes):Q", title="bytes per rank", axis=alt.Axis(labelExpr=si_axis("B"), tickCount=4)),
        color=alt.Color("category:N", title="memory", legend=alt.Legend(orient="bottom", columns=3)),
        tooltip=["category:N", alt.Tooltip("bytes:Q", format=".3s")]))
    return alt.hconcat(*charts).resolve_scale(color="independent")


# ---- runs --------------------------------------------------------------------------------------------------
def tidy_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs with per-link-class bytes columns and the loss clipped where a run diverged."""
    if df.empty:
        return pd.DataFrame(columns=["label", "step", "loss", "sim_seconds", "bytes_intra", "bytes_inter",
                                     "diverged"])
    df = df.copy()
    df["bytes_intra"] = df.get("bytes_peer", 0) - df.get("bytes_inter", 0)
    df["diverged"] = df.get("diverged", False)
    finite = df.loc[~df.diverged.astype(bool) & np.isfinite(df.loss), "loss"]
    if len(finite):
        hi = float(finite.max()) * 1.5 + 1e-12
        df["loss"] = df.loss.where(np.isfinite(df.loss), hi).clip(upper=hi)
    return df


def runs_charts(df: pd.DataFrame, *, width: int = 260, height: int = 180) -> alt.HConcatChart:
    """Loss vs steps, cumulative bytes per link class, loss vs simulated time; one colour per run, in the order of
    the rows (before any run: one line saying so, instead of three empty frames)."""
    if df.empty:
        return alt.Chart(pd.DataFrame({"text": ["No runs yet: press Run, or show saved runs in the table."]}),
                         width=3 * width, height=40).mark_text(align="left", x=0, fontSize=13).encode(
            text="text:N").properties(title="Runs")
    df = tidy_runs(df).rename(columns={f"bytes_{k}": v for k, v in LINKS.items()})  # legend: 'intra-node'
    df = df[[c for c in ["label", "step", "loss", "sim_seconds", *LINKS.values(), "diverged"] if c in df]]
    df["sparse"] = df.groupby("label").step.transform("size") <= SPARSE_ROWS
    runs = list(dict.fromkeys(df.label))
    color = alt.Color("label:N", title="run", sort=runs, legend=alt.Legend(
        orient="bottom", columns=1, labelLimit=360, symbolType="stroke", symbolStrokeWidth=2))
    base = alt.Chart(width=width, height=height)
    steps = alt.X("step:Q", title="local steps per worker", axis=alt.Axis(format="~s"))
    loss = alt.Y("loss:Q", title="training loss", scale=alt.Scale(zero=False))

    def lines(chart, title, x, y, **encoding):
        """Lines, and a dot on each row of runs with few rows (a run of one round is a dot, not nothing)."""
        line = chart.mark_line(clip=True).encode(x=x, y=y, color=color, **encoding)
        dots = chart.transform_filter("datum.sparse").mark_point(filled=True, size=18, opacity=1, clip=True).encode(
            x=x, y=y, color=alt.Color("label:N", sort=runs, legend=None), tooltip=encoding.get("tooltip", []))
        return alt.layer(line, dots, title=title)

    loss_chart = lines(base, "Is the loss going down?", steps, loss,
                       strokeDash=alt.StrokeDash("diverged:N", title="diverged", legend=None),
                       tooltip=["label:N", "step:Q", alt.Tooltip("loss:Q", format=".4f")])
    link_cols = [c for c in LINKS.values() if c in df]
    byte = lines(base.transform_fold(link_cols, as_=["link", "b"]).transform_filter("datum.b > 0"),
                 "How many bytes crossed each link class?", steps,
                 alt.Y("b:Q", title="bytes sent, all ranks (log)", scale=alt.Scale(type="log"),
                       axis=alt.Axis(labelExpr=si_axis("B"), tickCount=5, labelOverlap="greedy")),
                 strokeDash=alt.StrokeDash("link:N", title="link class", sort=list(LINKS.values()), legend=alt.Legend(
                     orient="bottom", symbolType="stroke", symbolStrokeWidth=2, symbolSize=300,
                     symbolStrokeColor="#555")),
                 tooltip=["label:N", "link:N", alt.Tooltip("b:Q", format=".3s")])
    sim = lines(base, "Which run reaches a low loss sooner?",
                alt.X("sim_seconds:Q", title="simulated time", axis=alt.Axis(labelExpr=si_axis("s"))), loss,
                tooltip=["label:N", alt.Tooltip("sim_seconds:Q", format=".3s"), alt.Tooltip("loss:Q", format=".4f")])
    # one colour per run across the three; the line dash means 'diverged' on the loss charts and 'link class' on
    # the bytes chart, so that scale (and its legend, under the bytes chart) is the bytes chart's own
    return alt.hconcat(loss_chart, byte, sim, data=df).resolve_scale(color="shared", strokeDash="independent"
                                                              ).resolve_legend(strokeDash="independent")


def memory_chart(rows: pd.DataFrame, *, width: int = 260, height: int = 120) -> alt.Chart:
    """Predicted memory per rank of each shown run, stacked by category (the run labels right of the bars: on the
    left they would push the runs charts above them sideways)."""
    title = "How much memory does each rank of a run hold?"
    return alt.Chart(rows, width=width, height=height, title=title).mark_bar().encode(
        x=alt.X("sum(bytes):Q", title="bytes per rank", axis=alt.Axis(labelExpr=si_axis("B"), tickCount=4)),
        y=alt.Y("label:N", title=None, sort=None, axis=alt.Axis(labelLimit=260, orient="right")),
        color=alt.Color("category:N", title="memory"),
        tooltip=["label:N", "category:N", alt.Tooltip("bytes:Q", format=".3s")])
