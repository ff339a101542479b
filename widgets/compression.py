"""Compression views: the ratio knob (log scale) with compressor and error-feedback pickers, and a chart of loss
against bytes for several compressors at the same measured ratio.

`CompressionKnobs(config)` shows what the ratio becomes for the chosen
compressor on the config's model — its own parameter (k, bits, rank, ...) and
the ratio a packet actually measures (`lab.compress.knob.Probe`) — updated as
the knobs move; `.values()` are ExperimentConfig fields. `compressor_frame`
and `loss_vs_bytes_chart` turn runs into one table and one chart whose legend
names each run's measured ratio.
"""
from __future__ import annotations

import html

import altair as alt
import ipywidgets as w
import pandas as pd

from lab.compress import NO_FEEDBACK
from lab.compress.error_feedback import FEEDBACK
from lab.compress.knob import Probe
from lab.experiment import ExperimentConfig
from widgets.charts import frame, loss_chart
from widgets.knobs import compression_ratio_slider, compressor_picker

_STYLE = {"description_width": "9em"}
FEEDBACK_LABELS = {"none": "none (drop what is not sent)", "ef": "EF (residual memory)",
                   "ef21": "EF21 (gradient estimate)", "econtrol": "EControl (estimate + fed-back error)"}


def error_feedback_picker(value: str = "ef") -> w.Dropdown:
    """Error feedback around the compressor, one option per entry of `lab.compress.error_feedback.FEEDBACK`."""
    return w.Dropdown(options=[(FEEDBACK_LABELS.get(k, k), k) for k in FEEDBACK], value=value,
                      description="error feedback", style=_STYLE)


class CompressionKnobs(w.VBox):
    """Compressor, ratio (log slider), error feedback (and EControl's η) with a live readout of the mapping."""

    def __init__(self, config: ExperimentConfig | None = None):
        self.base = config if config is not None else ExperimentConfig()
        self.probe = Probe(self.base)
        self.compressor = compressor_picker(self.base.compressor)
        self.ratio = compression_ratio_slider(self.base.compression_ratio)
        self.feedback = error_feedback_picker(self.base.error_feedback)
        self.eta = w.FloatSlider(value=self.base.econtrol_eta, min=0.0, max=1.0, step=0.01, description="EControl η",
                                 continuous_update=False, style=_STYLE)
        self.readout = w.HTML()
        for knob in (self.compressor, self.ratio, self.feedback, self.eta):
            knob.observe(self._update, names="value")
        super().__init__([w.HBox([self.compressor, self.ratio]), w.HBox([self.feedback, self.eta]), self.readout])
        self._update()

    @property
    def measured_ratio(self) -> float:
        return self.probe.knob(self.compressor.value, self.ratio.value)["measured_ratio"]

    def values(self) -> dict:
        """The knob values as ExperimentConfig fields."""
        return {"compressor": self.compressor.value, "compression_ratio": self.ratio.value,
                "error_feedback": self.feedback.value, "econtrol_eta": self.eta.value}

    def _update(self, change=None) -> None:
        name = self.compressor.value
        if name in NO_FEEDBACK and self.feedback.value != "none":
            self.feedback.value = "none"  # re-enters _update
            return
        self.feedback.disabled = name in NO_FEEDBACK or name == "none"
        self.ratio.disabled = name == "none"
        self.eta.layout.display = "" if self.feedback.value == "econtrol" else "none"
        k = self.probe.knob(name, self.ratio.value)
        self.readout.value = (f"<b>{html.escape(name)}</b>: {html.escape(k['parameter'] or '-')} "
                              f"→ measured ratio <b>{k['measured_ratio']:.4g}</b> "
                              f"(target {k['target']:.3g}; {html.escape(k['how'])})")


def compressor_frame(runs: dict) -> pd.DataFrame:
    """{label: Run} -> one tidy table whose labels carry each run's measured ratio (its last message's)."""
    labelled = {}
    for label, r in runs.items():
        m = r.metrics
        ratio = float(m["measured_ratio"].dropna().iloc[-1]) if "measured_ratio" in m and len(m) else 1.0
        labelled[f"{label} (r={ratio:.3g})"] = r
    return frame(labelled)


def loss_vs_bytes_chart(df: pd.DataFrame, *, y: str = "loss", title: str | None = None, width: int = 460,
                        height: int = 260) -> alt.Chart:
    """Loss against cumulative bytes (log) for several compressors, one line each."""
    return loss_chart(df, "bytes", y=y, title=title or f"{y} against bytes sent", width=width, height=height)
