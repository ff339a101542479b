"""Altair charts of lab metrics: loss against steps, bytes on the wire and simulated seconds.

Every chart is built from a tidy DataFrame of metrics rows (`Run.metrics`, or
the rows a run streams to its callback); a `label` column, when present,
colours one line per run. `frame(runs)` stacks several Runs into such a table.

In a notebook the charts are shown through `LiveChart`, an altair
`JupyterChart` in offline mode: its JavaScript is bundled by vl-convert instead
of loaded from a CDN (JupyterLab 4 does not render altair 6's mimetype, and the
default renderer needs internet). `LiveChart.update(df)` swaps the data in place.
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from lab.registry import technique

#: x axes: column -> (title, log scale?, axis label format)
X_AXES = {
    "step": ("local steps per worker", False, "~d"),
    "bytes": ("bytes sent, all ranks (log)", True, "~s"),
    "sim_seconds": ("simulated seconds", False, "~g"),
}
#: pixels a legend label may take before it is cut with "…" (run labels carry the technique's settings)
LEGEND_LABEL_LIMIT = 520
#: the columns charts use; others are dropped so the spec stays small
COLUMNS = ["label", "topology", "step", "round", "loss", "eval_loss", "eval_accuracy", "bytes", "sim_seconds"]


def enable_offline() -> bool:
    """Make every JupyterChart created from now on load its JavaScript from vl-convert, not a CDN.

    Safe to call many times (the bundle is built once, about 2 s). Returns
    whether JupyterChart is offline.
    """
    if not getattr(alt.JupyterChart, "_is_offline", False):
        alt.JupyterChart.enable_offline()
    return bool(alt.JupyterChart._is_offline)


def frame(runs, label: str | None = None) -> pd.DataFrame:
    """One tidy table of metrics from Runs, with `label` and `topology` columns added.

    `runs` is a Run, a {label: Run} dict, or a list of Runs or (label, Run)
    pairs; unlabelled Runs are labelled by `run_label` (repeats get a #n).
    """
    if hasattr(runs, "metrics"):
        runs = [(label, runs)]
    elif isinstance(runs, dict):
        runs = list(runs.items())
    parts, seen = [], set()
    for item in runs:
        name, r = item if isinstance(item, tuple) else (None, item)
        if name is None:
            name = run_label(r.config)
            name = name if name not in seen else f"{name} #{len(parts) + 1}"
        seen.add(name)
        parts.append(r.metrics.assign(label=name, topology=r.config.topology))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def run_label(config) -> str:
    """A short legend label for an ExperimentConfig: what the technique says it applied
    (`Technique.describe`: its name, main knob, compressor if it takes one), then workers and topology."""
    return f"{technique(config.technique).describe(config)} ×{config.num_workers} {config.topology}"


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy() if len(df) else pd.DataFrame(columns=COLUMNS)
    if "label" not in df:
        df["label"] = "run"
    return df[[c for c in COLUMNS if c in df.columns]]


def loss_chart(df: pd.DataFrame | None, x: str = "step", *, y: str = "loss", log_x: bool | None = None,
               title: str | None = None, width: int = 260, height: int = 200) -> alt.Chart:
    """Line chart of `y` (default training loss) against `x` ('step', 'bytes' or 'sim_seconds'), one line per label.

    Log-x drops rows where x is 0; rows where y is missing (eval columns off
    eval rounds) are dropped too. With `df=None` the chart has no data of its
    own (for use inside a concatenation that carries it).
    """
    x_title, default_log, x_format = X_AXES.get(x, (x, False, "~g"))
    log_x = default_log if log_x is None else log_x
    x_enc = alt.X(f"{x}:Q", title=x_title, axis=alt.Axis(format=x_format, labelOverlap=True),
                  scale=alt.Scale(type="log") if log_x else alt.Scale())
    data = alt.Undefined if df is None else _tidy(df)
    chart = (alt.Chart(data, title=title or f"{y} vs {x}", width=width, height=height)
             .mark_line(point=alt.OverlayMarkDef(size=10), clip=True)
             .encode(x=x_enc,
                     y=alt.Y(f"{y}:Q", title=y, scale=alt.Scale(zero=False)),
                     color=alt.Color("label:N", title="run",
                                     legend=alt.Legend(orient="bottom", columns=2, labelLimit=LEGEND_LABEL_LIMIT)),
                     order=alt.Order("step:Q"),
                     tooltip=["label:N", "step:Q", "round:Q", alt.Tooltip(f"{y}:Q", format=".4f"),
                              alt.Tooltip("bytes:Q", format=".3s"), alt.Tooltip("sim_seconds:Q", format=".3g")])
             .transform_filter(f"isValid(datum['{y}'])"))
    if log_x:
        chart = chart.transform_filter(f"datum['{x}'] > 0")
    return chart


def loss_vs_step(df: pd.DataFrame, **kw) -> alt.Chart:
    """Training loss against local steps."""
    return loss_chart(df, "step", **kw)


def loss_vs_bytes(df: pd.DataFrame, **kw) -> alt.Chart:
    """Training loss against cumulative bytes sent by all ranks, log-x."""
    return loss_chart(df, "bytes", **kw)


def loss_vs_time(df: pd.DataFrame, **kw) -> alt.Chart:
    """Training loss against simulated seconds (compute from the device profile + communication)."""
    return loss_chart(df, "sim_seconds", **kw)


def dashboard(df: pd.DataFrame, xs=("step", "bytes", "sim_seconds"), **kw) -> alt.HConcatChart:
    """Loss against each of `xs`, side by side, sharing one dataset and one legend."""
    return alt.hconcat(*[loss_chart(None, x, **kw) for x in xs], data=_tidy(df)).resolve_scale(color="shared")


def show(chart) -> alt.JupyterChart:
    """`chart` as an offline JupyterChart widget (renders in JupyterLab 4 and Voila without internet)."""
    enable_offline()
    return alt.JupyterChart(chart)


class LiveChart:
    """An offline `alt.JupyterChart` whose data can be replaced while it is on screen.

    `build(df) -> altair chart` makes the chart (default: `dashboard`).
    `.update(df)` rebuilds it and assigns it to the JupyterChart, which sends
    the new spec to the browser; `.spec` is the current vega-lite spec dict and
    `.num_values` the number of data rows in it. Display it directly or put
    `.widget` in a layout.
    """

    def __init__(self, df: pd.DataFrame | None = None, build=dashboard):
        enable_offline()
        self.build = build
        self.widget = alt.JupyterChart(build(pd.DataFrame() if df is None else df))

    def update(self, df: pd.DataFrame) -> None:
        """Replace the chart's data with `df` (the whole table, not just new rows)."""
        self.widget.chart = self.build(df)

    @property
    def spec(self) -> dict:
        return self.widget.spec

    @property
    def num_values(self) -> int:
        """Rows of data in the spec (inline `data.values` plus named `datasets`)."""
        spec = self.spec or {}
        n = sum(len(v) for v in spec.get("datasets", {}).values())
        return n + len(spec.get("data", {}).get("values", []))

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)
