"""Topology views: a picker with a drawing of the network, a Gantt chart of the simulated clock, consensus
curves for gossip, and measured-against-predicted collective times from bench/netlab.py.

    from widgets.topology_view import TopologyView
    view = TopologyView("multinode_4x8", num_workers=8)
    view                      # preset picker, worker count, the drawing
    view.show_run(run)        # colour the links by the bytes the run's Ledger put on them

The drawing places ranks around their node (nodes on a circle; a torus on its
grid; a star's clients around the server). Without a run it draws the
wiring: each rank to its node's switch, the node switches to the fabric (or a
torus's neighbour links, or the clients' links to the server). With a run it
draws one line per pair of ranks that exchanged bytes, coloured by those
bytes (log scale), taken from `Run.traffic` — the cost model's messages, so a
ring all-reduce draws a ring and a hierarchical one its node rings plus the
rings across nodes.
"""
from __future__ import annotations

import html
import math

import altair as alt
import ipywidgets as w
import numpy as np
import pandas as pd

from lab import topology as topo
from widgets.charts import LiveChart, enable_offline
from widgets.knobs import topology_picker


# ---- layout and frames ------------------------------------------------------------------------------------
def layout(t: topo.Topology) -> pd.DataFrame:
    """One row per rank (and one for a star's server): rank, node, x, y, role."""
    p, d, n = t.num_ranks, t.ranks_per_node, t.num_nodes
    rows = []
    if t.star:
        for r in range(p):
            a = 2 * math.pi * r / p
            rows.append((r, r, math.cos(a), math.sin(a), "client"))
        rows.append((p, -1, 0.0, 0.0, "server"))
    elif t.shape == "torus":
        for r in range(p):
            rows.append((r, r // d, float(r % d), float(-(r // d)), "rank"))
    else:
        big = 1.0 if n > 1 else 0.0
        small = 0.28 * (1 if n > 1 else 3.5) * min(1.0, 4 / max(n, 1) + 0.25)
        for r in range(p):
            node, i = divmod(r, d)
            a, b = 2 * math.pi * node / n, 2 * math.pi * i / d
            rows.append((r, node, big * math.cos(a) + small * math.cos(b), big * math.sin(a) + small * math.sin(b),
                         "rank"))
    return pd.DataFrame(rows, columns=["rank", "node", "x", "y", "role"])


def wiring(t: topo.Topology) -> pd.DataFrame:
    """The physical links to draw when there is no traffic: (x, y, x2, y2, link)."""
    pos = layout(t).set_index("rank")
    out = []
    if t.star:
        for r in range(t.num_ranks):
            out.append((pos.x[r], pos.y[r], 0.0, 0.0, "uplink/downlink"))
    elif t.shape == "torus":
        x_size = t.ranks_per_node
        for r in range(t.num_ranks):
            for q, cls in (((r // x_size) * x_size + (r % x_size + 1) % x_size, "intra"), ((r + x_size) % t.num_ranks,
                                                                                           "inter")):
                if q != r and abs(pos.x[r] - pos.x[q]) + abs(pos.y[r] - pos.y[q]) <= 1.0 + 1e-9:
                    out.append((pos.x[r], pos.y[r], pos.x[q], pos.y[q], cls))
    else:
        centers = pos.groupby("node")[["x", "y"]].mean()
        for r in range(t.num_ranks):
            c = centers.loc[t.node_of(r)]
            out.append((pos.x[r], pos.y[r], c.x, c.y, "intra"))
        if t.num_nodes > 1:
            for _, c in centers.iterrows():
                out.append((c.x, c.y, 0.0, 0.0, "inter"))
    return pd.DataFrame(out, columns=["x", "y", "x2", "y2", "link"])


def traffic_edges(t: topo.Topology, traffic: np.ndarray) -> pd.DataFrame:
    """One row per unordered pair that exchanged bytes: x, y, x2, y2, bytes (both directions), link class."""
    pos = layout(t).set_index("rank")
    tr = np.asarray(traffic, dtype=float)
    both = tr + tr.T
    out = []
    for i in range(both.shape[0]):
        for j in range(i + 1, both.shape[0]):
            if both[i, j] > 0 and i in pos.index and j in pos.index:
                out.append((pos.x[i], pos.y[i], pos.x[j], pos.y[j], float(both[i, j]), t.link_class(i, j), i, j))
    return pd.DataFrame(out, columns=["x", "y", "x2", "y2", "bytes", "link", "a", "b"])


# ---- charts ------------------------------------------------------------------------------------------------
def topology_chart(t: topo.Topology, traffic: np.ndarray | None = None, *, width: int = 360,
                   height: int = 360, title: str | None = None) -> alt.LayerChart:
    """The network drawing: links (coloured by bytes when `traffic` is given) under the ranks."""
    nodes = layout(t)
    axis = alt.Axis(labels=False, ticks=False, grid=False, domain=False, title=None)
    x, y = alt.X("x:Q", axis=axis, scale=alt.Scale(padding=20)), alt.Y("y:Q", axis=axis, scale=alt.Scale(padding=20))
    if traffic is not None and np.asarray(traffic).sum() > 0:
        edges = traffic_edges(t, traffic)
        links = alt.Chart(edges).mark_rule(strokeWidth=2.5, opacity=0.85).encode(
            x=x, y=y, x2="x2:Q", y2="y2:Q",
            color=alt.Color("bytes:Q", scale=alt.Scale(type="log", scheme="viridis"), title="bytes carried"),
            tooltip=["a:O", "b:O", "link:N", alt.Tooltip("bytes:Q", format=".3s")])
    else:
        links = alt.Chart(wiring(t)).mark_rule(strokeWidth=1.5, opacity=0.5).encode(
            x=x, y=y, x2="x2:Q", y2="y2:Q", color=alt.Color("link:N", title="link"), tooltip=["link:N"])
    ranks = alt.Chart(nodes).mark_circle(size=160, stroke="black", strokeWidth=0.5).encode(
        x=x, y=y, fill=alt.Fill("node:N", legend=None, scale=alt.Scale(scheme="tableau20")),
        shape=alt.Shape("role:N", legend=None), tooltip=["rank:O", "node:O", "role:N"])
    label = alt.Chart(nodes).mark_text(fontSize=9, dy=-12).encode(x=x, y=y, text="rank:O")
    return alt.layer(links, ranks, label).properties(
        width=width, height=height, title=title or f"{t.name}: {t.description}").resolve_scale(color="independent")


def gantt_chart(timeline: pd.DataFrame, *, steps: tuple[int, int] | None = None, width: int = 560,
                height: int | None = None, title: str = "simulated clock: per-rank timeline") -> alt.Chart:
    """Compute and communication bars per rank against simulated seconds (only steps in `steps`, inclusive)."""
    df = timeline
    if steps is not None and len(df):
        df = df[(df.step >= steps[0]) & (df.step <= steps[1])]
    ranks = df["rank"].nunique() if len(df) else 1
    return alt.Chart(df).mark_bar(height=alt.RelativeBandSize(0.8)).encode(
        x=alt.X("start:Q", title="simulated seconds"), x2="end:Q",
        y=alt.Y("rank:O", title="rank"),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["compute", "comm"], range=["#4c78a8", "#f58518"]),
                        title=None),
        tooltip=["rank:O", "kind:N", "label:N", "step:Q", alt.Tooltip("start:Q", format=".3g"),
                 alt.Tooltip("end:Q", format=".3g")],
    ).properties(width=width, height=height or max(80, 18 * ranks), title=title)


def consensus_chart(df: pd.DataFrame, *, width: int = 360, height: int = 240, x: str = "step",
                    title: str = "consensus distance (log)") -> alt.Chart:
    """consensus_distance against `x` ('step' or 'round'), one line per `label`, log-y."""
    d = df[df.consensus_distance > 0] if "consensus_distance" in df else df
    return alt.Chart(d).mark_line(point=alt.OverlayMarkDef(size=10)).encode(
        x=alt.X(f"{x}:Q", title=x), y=alt.Y("consensus_distance:Q", scale=alt.Scale(type="log"),
                                             title="consensus distance"),
        color=alt.Color("label:N", title=None), tooltip=["label:N", f"{x}:Q", alt.Tooltip("consensus_distance:Q",
                                                                                          format=".3g")],
    ).properties(width=width, height=height, title=title)


def predicted_vs_measured_chart(rows: pd.DataFrame, *, width: int = 380, height: int = 380,
                                title: str = "netlab: predicted against measured seconds") -> alt.LayerChart:
    """bench/netlab.py rows on log-log axes, one colour per op, the diagonal = perfect prediction."""
    d = rows.assign(rate=rows.rate_mbit.map(lambda r: f"{r:g} Mbit/s"), MB=rows["size"] / 2**20)
    lo, hi = float(min(d.measured_s.min(), d.predicted_s.min())), float(max(d.measured_s.max(), d.predicted_s.max()))
    scale = alt.Scale(type="log", domain=[lo * 0.8, hi * 1.25])
    pts = alt.Chart(d).mark_point(filled=True, size=45, opacity=0.8).encode(
        x=alt.X("measured_s:Q", scale=scale, title="measured seconds (gloo, shaped veth)"),
        y=alt.Y("predicted_s:Q", scale=scale, title="predicted seconds (lab.topology)"),
        color=alt.Color("op:N", title=None), shape=alt.Shape("rate:N", title=None),
        tooltip=["op:N", "ranks:Q", "rate:N", alt.Tooltip("MB:Q", format=".3g"), "algorithm:N",
                 alt.Tooltip("measured_s:Q", format=".3g"), alt.Tooltip("predicted_s:Q", format=".3g"),
                 alt.Tooltip("error:Q", format="+.0%")])
    diag = alt.Chart(pd.DataFrame({"a": [lo * 0.8, hi * 1.25]})).mark_line(color="gray", strokeDash=[4, 4]).encode(
        x="a:Q", y="a:Q")
    return alt.layer(diag, pts).properties(width=width, height=height, title=title)


# ---- the picker ---------------------------------------------------------------------------------------------
class TopologyView(w.VBox):
    """A topology picker (preset, workers) with the drawing, a line of facts, and the links of the last run.

    `.topology` is the chosen Topology (None while the combination is invalid,
    with the reason in `.message`); `.show_run(run)` switches to the run's
    topology and colours links by the bytes its Ledger recorded.
    """

    def __init__(self, topology: str = "nvlink_node", num_workers: int = 8, *, width: int = 360):
        enable_offline()
        self.width = width
        self.picker = topology_picker(topology)
        self.workers = w.BoundedIntText(value=num_workers, min=1, max=1024, description="workers",
                                        style={"description_width": "9em"})
        self.message = w.HTML()
        self.facts = w.HTML()
        self.topology: topo.Topology | None = None
        self.traffic: np.ndarray | None = None
        self.chart = LiveChart(pd.DataFrame(), build=lambda _: self._chart())
        for knob in (self.picker, self.workers):
            knob.observe(self._on_change, names="value")
        super().__init__([w.HBox([self.picker, self.workers]), self.message, self.facts, self.chart.widget])
        self._on_change()

    def show_run(self, run) -> None:
        """Show `run`'s topology with its links coloured by the bytes its Ledger recorded."""
        self.traffic = None
        self.picker.value, self.workers.value = run.config.topology, run.config.num_workers
        self.topology = topo.for_config(run.config)
        self.traffic = None if run.traffic is None else np.asarray(run.traffic)  # dense (P+1, P+1) for drawing
        self._redraw()

    def _on_change(self, change=None) -> None:
        self.traffic = None
        try:
            self.topology = topo.preset(self.picker.value, self.workers.value)
            self.message.value = ""
        except ValueError as e:
            self.topology = None
            self.message.value = f"<span style='color:#b00020'>⚠ {html.escape(str(e))}</span>"
        self._redraw()

    def _redraw(self) -> None:
        t = self.topology
        if t is not None:
            links = [f"{c}: {t.link(c).bandwidth * 8 / 1e9:g} Gb/s, {t.link(c).latency_s * 1e6:g} µs"
                     for c in (("uplink", "downlink") if t.star else ("intra", "inter"))]
            extra = f", oversubscribed {t.oversubscription:g}:1" if t.oversubscription > 1 else ""
            self.facts.value = html.escape(f"{t.num_ranks} ranks on {t.num_nodes} nodes ({t.shape}{extra}); "
                                           + "; ".join(links))
        self.chart.update(pd.DataFrame())

    def _chart(self):
        if self.topology is None:
            return alt.Chart(pd.DataFrame({"x": []})).mark_point()
        return topology_chart(self.topology, self.traffic, width=self.width, height=self.width)
