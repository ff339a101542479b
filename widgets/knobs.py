"""Knob controls built from lab's registries, and a `KnobPanel` that turns them into an ExperimentConfig.

Each factory returns a plain ipywidgets control whose options and tooltip come
from `lab` (`ExperimentConfig` field help, `lab.experiment.TECHNIQUES`,
`lab.topology.PRESETS`, `lab.compress.COMPRESSORS`), so a technique or preset
added to lab shows up here without UI changes.
"""
from __future__ import annotations

import html
from dataclasses import fields

import ipywidgets as w

from lab import topology as topo
from lab.compress import COMPRESSORS
from lab.experiment import TECHNIQUES, ExperimentConfig
from lab.sharding.layout import divisors
from widgets.technique_knobs import TechniqueKnobs

_HELP = {f.name: f.metadata.get("help", "") for f in fields(ExperimentConfig)}
_STYLE = {"description_width": "9em"}


def sync_period_slider(value: int = 16) -> w.IntSlider:
    """Sync period H: local steps between parameter averages (Local SGD), 1..128."""
    return w.IntSlider(value=value, min=1, max=128, description="sync period H", tooltip=_HELP["sync_period"],
                       continuous_update=False, style=_STYLE)


def compression_ratio_slider(value: float = 1.0) -> w.FloatLogSlider:
    """Target compression ratio (encoded / dense bytes) on a log scale from 1e-3 to 1."""
    return w.FloatLogSlider(value=value, base=10, min=-3, max=0, step=0.25, readout_format=".3g",
                            description="compression", tooltip=_HELP["compression_ratio"],
                            continuous_update=False, style=_STYLE)


def technique_picker(value: str = "ddp") -> w.Dropdown:
    """Training technique, one option per entry of `lab.experiment.TECHNIQUES`."""
    return w.Dropdown(options=list(TECHNIQUES), value=value, description="technique", tooltip=_HELP["technique"],
                      style=_STYLE)


def topology_picker(value: str = "nvlink_node") -> w.Dropdown:
    """Network preset for simulated time, one option per entry of `lab.topology.PRESETS`."""
    options = [(f"{name} ({topo.preset(name).description})", name) for name in topo.PRESETS]
    return w.Dropdown(options=options, value=value, description="topology", tooltip=_HELP["topology"],
                      style=_STYLE)


def compressor_picker(value: str = "none") -> w.Dropdown:
    """Gradient compressor, one option per entry of `lab.compress.COMPRESSORS`."""
    return w.Dropdown(options=list(COMPRESSORS), value=value, description="compressor", tooltip=_HELP["compressor"],
                      style=_STYLE)


def sharding_degree_picker(num_workers: int = 8, value: int = 0) -> w.Dropdown:
    """Sharding degree S (ZeRO): 0 (all workers) or a divisor of `num_workers`; only valid values are offered."""
    picker = w.Dropdown(description="sharding S", tooltip=_HELP["sharding_degree"], style=_STYLE)
    set_sharding_options(picker, num_workers, value)
    return picker


def set_sharding_options(picker: w.Dropdown, num_workers: int, value: int | None = None) -> None:
    """Offer 0 and the divisors of `num_workers`; keep `value` (default: the current one) if still valid, else 0."""
    value = picker.value if value is None else value
    options = [(f"all ({num_workers})", 0)] + [(str(d), d) for d in divisors(num_workers)]
    picker.options = options
    picker.value = value if value in dict(options).values() else 0


class KnobPanel(w.VBox):
    """The knobs of one experiment, grouped, with a line that shows why a combination is invalid.

    `.config(base)` returns `base` with the knob values applied, or None when
    ExperimentConfig rejects them; the ValueError's message is then shown in
    `.message` (an HTML widget) and kept in `.error` instead of being raised.
    The panel re-validates whenever a knob changes. The budget the technique
    ignores (steps or rounds) is disabled, and so is the ratio while the
    compressor is 'none'; the sharding degree offers only divisors of the
    worker count. Every other field comes from `base`.
    """

    def __init__(self, base: ExperimentConfig | None = None):
        self.base = base if base is not None else ExperimentConfig()
        b = self.base
        self.technique = technique_picker(b.technique)
        self.topology = topology_picker(b.topology)
        self.num_workers = w.BoundedIntText(value=b.num_workers, min=1, max=4096, description="workers",
                                            tooltip=_HELP["num_workers"], style=_STYLE)
        self.steps = w.BoundedIntText(value=b.steps, min=1, max=1_000_000, description="steps",
                                      tooltip=_HELP["steps"], style=_STYLE)
        self.rounds = w.BoundedIntText(value=b.rounds, min=1, max=1_000_000, description="rounds",
                                       tooltip=_HELP["rounds"], style=_STYLE)
        self.lr = w.FloatLogSlider(value=b.lr, base=10, min=-4, max=0.5, step=0.05, readout_format=".3g",
                                   description="learning rate", tooltip=_HELP["lr"], continuous_update=False,
                                   style=_STYLE)
        self.sync_period = sync_period_slider(b.sync_period)
        self.compressor = compressor_picker(b.compressor)
        self.compression_ratio = compression_ratio_slider(b.compression_ratio)
        self.sharding_degree = sharding_degree_picker(b.num_workers, b.sharding_degree)
        self.technique_knobs = TechniqueKnobs(b)  # the chosen technique's own knobs
        self.technique_knobs.observe_values(self._on_change)
        self.message = w.HTML()
        self.error = ""
        self.knobs = {"technique": self.technique, "topology": self.topology, "num_workers": self.num_workers,
                      "steps": self.steps, "rounds": self.rounds, "lr": self.lr, "sync_period": self.sync_period,
                      "compressor": self.compressor, "compression_ratio": self.compression_ratio,
                      "sharding_degree": self.sharding_degree}
        for knob in self.knobs.values():
            knob.observe(self._on_change, names="value")
        super().__init__([
            w.HBox([self.technique, self.topology]),
            w.HBox([self.num_workers, self.steps, self.rounds]),
            w.HBox([self.sync_period, self.lr]),
            w.HBox([self.compressor, self.compression_ratio]),
            self.sharding_degree,
            self.technique_knobs,
            self.message,
        ])
        self._on_change()

    def values(self) -> dict:
        """The knob values as ExperimentConfig fields."""
        return {**{name: knob.value for name, knob in self.knobs.items()},
                **self.technique_knobs.values(self.technique.value, self.sync_period.value)}

    def config(self, base: ExperimentConfig | None = None) -> ExperimentConfig | None:
        """`base` (default: the panel's base) with the knobs applied; None, with the reason shown, if invalid."""
        base = self.base if base is None else base
        try:
            config = base.replace(**self.values())
        except ValueError as e:
            self._show_error(str(e))
            return None
        self._show_error("")
        return config

    def _show_error(self, text: str) -> None:
        self.error = text
        self.message.value = f"<span style='color:#b00020'>⚠ {html.escape(text)}</span>" if text else ""

    def _on_change(self, change=None) -> None:
        t = self.technique.value
        self.technique_knobs.show(t)
        if change is not None and change["owner"] is self.num_workers:
            set_sharding_options(self.sharding_degree, self.num_workers.value)
        self.compression_ratio.disabled = self.compressor.value == "none"
        self.steps.disabled = TECHNIQUES[t].budget != "steps"
        self.rounds.disabled = TECHNIQUES[t].budget != "rounds"
        self.config()
