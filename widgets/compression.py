"""Compression views: the ratio knob (log scale) with compressor and error-feedback pickers, and a chart of loss
against bytes for several compressors, each labelled with the ratio it really achieved.

Two ratios exist, and every view says which one it shows (`RATIOS`): the
*payload ratio* is one encoded message's bytes over its dense fp32 bytes; the
*traffic ratio* is the bytes the busiest rank sent over what the dense ring
all-reduce of the same tensor sends at the same worker count — the one that
decides time on the wire. Views prefer the traffic ratio and fall back to the
payload ratio for runs or probes that do not report it.

`CompressionKnobs(config)` shows what the knob becomes for the chosen
compressor on the config's model — its own parameter (k, bits, rank, ...) and
the ratios a packet measures (`lab.compress.knob.Probe`) — updated as the
knobs move; knobs the config's technique does not read are disabled with the
reason (`lab.config.is_read`); `.values()` are ExperimentConfig fields.
`compressor_frame` and `loss_vs_bytes_chart` turn runs into one table and one
chart whose legend names each run's ratio.
"""
from __future__ import annotations

import html
import math

import altair as alt
import ipywidgets as w
import pandas as pd

from lab.compress.error_feedback import FEEDBACK
from lab.compress.knob import Probe
from lab.compress.registry import NO_FEEDBACK
from lab.config import ExperimentConfig, is_read
from widgets.charts import frame, loss_chart
from widgets.knobs import compression_ratio_slider, compressor_picker
from widgets.technique_knobs import FieldRow, draft, field_control, field_help

_STYLE = {"description_width": "10em"}
FEEDBACK_LABELS = {"none": "none (drop what is not sent)", "ef": "EF (residual memory)",
                   "ef21": "EF21 (gradient estimate)", "econtrol": "EControl (estimate + fed-back error)"}
#: metrics columns (or probe keys) of a compression ratio, preferred first, with the name a view shows
RATIOS = (("traffic_ratio", "traffic ratio"), ("payload_ratio", "payload ratio"), ("measured_ratio", "payload ratio"))


def error_feedback_picker(value: str = "ef") -> w.Dropdown:
    """Error feedback around the compressor, one option per entry of `lab.compress.error_feedback.FEEDBACK`."""
    return w.Dropdown(options=[(FEEDBACK_LABELS.get(k, k), k) for k in FEEDBACK], value=value,
                      description="error feedback", tooltip=field_help("error_feedback"), style=_STYLE)


def ratio_of(source) -> tuple[str, float] | None:
    """(which ratio, its value) of a run's metrics table (its last reported value) or of a probe's dict,
    preferring the traffic ratio; None when neither ratio is there."""
    for key, name in RATIOS:
        if isinstance(source, pd.DataFrame):
            if key in source and source[key].notna().any():
                return name, float(source[key].dropna().iloc[-1])
        elif source.get(key) is not None and math.isfinite(source[key]):
            return name, float(source[key])
    return None


class CompressionKnobs(w.VBox):
    """Compressor, ratio (log slider), error feedback (and EControl's η) with a live readout of the mapping."""

    def __init__(self, config: ExperimentConfig | None = None):
        self.base = config if config is not None else ExperimentConfig()
        self.probe = Probe(self.base)
        self.compressor = compressor_picker(self.base.compressor)
        self.ratio = compression_ratio_slider(self.base.compression_ratio)
        self.feedback = error_feedback_picker(self.base.error_feedback)
        self.eta = field_control("econtrol_eta", self.base.econtrol_eta, description="EControl η", style=_STYLE)
        self.rows = {"compressor": FieldRow("compressor", self.compressor),
                     "compression_ratio": FieldRow("compression_ratio", self.ratio),
                     "error_feedback": FieldRow("error_feedback", self.feedback),
                     "econtrol_eta": FieldRow("econtrol_eta", self.eta)}
        self.readout = w.HTML()
        for knob in (self.compressor, self.ratio, self.feedback, self.eta):
            knob.layout.width = "30em"
            knob.observe(self._update, names="value")
        super().__init__([*self.rows.values(), self.readout])
        self._update()

    @property
    def setting(self) -> dict:
        """The probe's dict for the current compressor and ratio (parameter, ratios, how)."""
        return self.probe.knob(self.compressor.value, self.ratio.value)

    @property
    def payload_ratio(self) -> float:
        """Encoded bytes of one message over its dense fp32 bytes, measured on the probe's packet."""
        k = self.setting
        return float(k["payload_ratio"] if "payload_ratio" in k else k["measured_ratio"])

    @property
    def traffic_ratio(self) -> float | None:
        """Bytes the busiest rank sends over the dense ring all-reduce's, if the probe reports it."""
        return self.setting.get("traffic_ratio")

    def values(self) -> dict:
        """The knob values as ExperimentConfig fields (all four; `lab.config.config_for` drops unread ones)."""
        return {"compressor": self.compressor.value, "compression_ratio": self.ratio.value,
                "error_feedback": self.feedback.value, "econtrol_eta": self.eta.value}

    def _update(self, change=None) -> None:
        name = self.compressor.value
        if name in NO_FEEDBACK and self.feedback.value != "none":
            self.feedback.value = "none"  # the config refuses feedback here; re-enters _update
            return
        config = draft(self.base.technique, {**self.base.to_dict(), **self.values()})
        for field, row in self.rows.items():
            ok, why = is_read(config, field)
            if ok and field == "error_feedback" and name in NO_FEEDBACK:
                ok, why = False, f"{name} takes no error feedback"
            row.set_reason("" if ok else why)
        self.rows["econtrol_eta"].layout.display = "" if self.feedback.value == "econtrol" else "none"
        k = self.setting
        shown = [f"{label} <b>{k[key]:.4g}</b>" for key, label in RATIOS[:2] if k.get(key) is not None]
        if not shown and "measured_ratio" in k:
            shown = [f"payload ratio <b>{k['measured_ratio']:.4g}</b>"]
        via = f" via {html.escape(k['algorithm'])}" if k.get("algorithm") else ""
        self.readout.value = (f"<b>{html.escape(name)}</b>: {html.escape(k['parameter'] or '-')}{via} → "
                              + " · ".join(shown)
                              + (f" (knob {k['target']:.3g}; " if not self.ratio.disabled else " (")
                              + f"{html.escape(k['how'])})")


def compressor_frame(runs: dict) -> pd.DataFrame:
    """{label: Run} -> one tidy table whose labels carry each run's ratio, saying which (traffic, else payload;
    'uncompressed' for a run without a compressor)."""
    labelled = {}
    for label, r in runs.items():
        ratio = ratio_of(r.metrics) if len(r.metrics) else None
        if ratio is not None:
            labelled[f"{label} ({ratio[0]} {ratio[1]:.3g})"] = r
        else:
            labelled[f"{label} ({'uncompressed' if r.config.compressor == 'none' else 'ratio not reported'})"] = r
    return frame(labelled)


def loss_vs_bytes_chart(df: pd.DataFrame, *, y: str = "loss", title: str | None = None, width: int = 460,
                        height: int = 260) -> alt.Chart:
    """Loss against cumulative bytes (log) for several compressors, one line each."""
    return loss_chart(df, "bytes", y=y, title=title or f"{y} against bytes sent", width=width, height=height)
