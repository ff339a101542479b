"""Charts for the sync-period family: QSR's sync period over training, loss against rounds or uplink bytes,
and how many clients took part in each federated round. Each takes a tidy metrics table with a `label` column
(`widgets.frame(...)`) and returns an altair chart (show it with `widgets.show`).
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from widgets.charts import LEGEND_LABEL_LIMIT

#: metrics columns that count (rounds, steps, clients): their axes tick at integers only
COUNTS = ("round", "step", "sync_period", "num_participants")
INTEGER_AXIS = alt.Axis(format="d", tickMinStep=1)


def period_chart(df: pd.DataFrame, *, width: int = 300, height: int = 200, title: str = "sync period H over training"):
    """H of each round (`sync_period`) against the step the round ended at, one line per label."""
    d = df[["label", "step", "sync_period"]].dropna()
    return (alt.Chart(d, title=title, width=width, height=height).mark_line(point=True, interpolate="step-before")
            .encode(x=alt.X("step:Q", title="local steps", axis=INTEGER_AXIS),
                    y=alt.Y("sync_period:Q", title="H (local steps)", axis=INTEGER_AXIS),
                    color=alt.Color("label:N", title="run"), tooltip=["label:N", "step:Q", "sync_period:Q"]))


def loss_against(df: pd.DataFrame, x: str, *, y: str = "loss", log_x: bool = False, title: str | None = None,
                 width: int = 300, height: int = 220):
    """`y` against any metrics column `x` (e.g. 'round', 'bytes_uplink'), one line per label; rows without y are
    dropped."""
    d = df[["label", x, y]].dropna()
    if log_x:
        d = d[d[x] > 0]
    return (alt.Chart(d, title=title or f"{y} against {x}", width=width, height=height).mark_line(point=True)
            .encode(x=alt.X(f"{x}:Q", title=x.replace("_", " ") + (" (log)" if log_x else ""),
                            scale=alt.Scale(type="log") if log_x else alt.Scale(),
                            axis=INTEGER_AXIS if x in COUNTS else alt.Axis(format="~s" if log_x else "~g")),
                    y=alt.Y(f"{y}:Q", title=y.replace("_", " "), scale=alt.Scale(zero=False)),
                    color=alt.Color("label:N", title="run", legend=alt.Legend(orient="bottom", columns=2,
                                                                       labelLimit=LEGEND_LABEL_LIMIT)),
                    tooltip=["label:N", f"{x}:Q", alt.Tooltip(f"{y}:Q", format=".4f")]))


def participation_chart(df: pd.DataFrame, *, width: int = 300, height: int = 200,
                        title: str = "clients whose update was used"):
    """Participants per round (`num_participants`), one line per label; a stalled round shows 0."""
    d = df[["label", "round", "num_participants"]].dropna()
    return (alt.Chart(d, title=title, width=width, height=height).mark_line(point=True)
            .encode(x=alt.X("round:Q", axis=INTEGER_AXIS), y=alt.Y("num_participants:Q", title="participants",
                                                                 axis=INTEGER_AXIS),
                    color=alt.Color("label:N", title="run", legend=alt.Legend(orient="bottom", columns=2,
                                                                           labelLimit=LEGEND_LABEL_LIMIT)),
                    tooltip=["label:N", "round:Q", "num_participants:Q"]))

