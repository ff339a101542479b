"""Knob controls built from lab's declarations, and a `KnobPanel` that turns them into an ExperimentConfig.

Every control comes from its field's `lab.knobs.Knob` (help text, bounds,
choices, log scale; `widgets.technique_knobs.field_control`); the technique
picker lists `lab.registry.techniques()`, the topology picker
`lab.topology.PRESETS`, the compressor picker `lab.compress.registry.COMPRESSORS`.
A technique, preset or compressor added to lab shows up here without UI changes.
"""
from __future__ import annotations

import html

import ipywidgets as w

from lab import registry, topology as topo
from lab.config import KNOBS, ExperimentConfig, config_for, is_read
from widgets.technique_knobs import (
    TechniqueKnobs,
    draft,
    field_control,
    field_help,
    set_sharding_options,
    settings_of,
    sharding_degree_control,
)

_STYLE = {"description_width": "10em"}
#: the common knobs the panel shows above the technique's own, one row each
MAIN_ROWS = (("technique", "topology"), ("num_workers", "steps", "rounds"), ("lr", "batch_size"),
             ("partition", "dirichlet_alpha", "shards_per_worker"))
_DESCRIPTIONS = {"num_workers": "workers", "lr": "learning rate", "compression_ratio": "compression"}


def _control(name: str, value=None, **kw) -> w.Widget:
    return field_control(name, value, description=_DESCRIPTIONS.get(name), style=_STYLE, **kw)


def sync_period_slider(value: int = 16, *, max_value: int = 128) -> w.IntSlider:
    """Sync period H (local steps between syncs) as a slider from the Knob's minimum to `max_value`."""
    k = KNOBS["sync_period"]
    return w.IntSlider(value=value, min=int(k.low), max=int(min(k.high, max(max_value, value))),
                       description="sync period H", tooltip=k.help, continuous_update=False, style=_STYLE)


def compression_ratio_slider(value: float = 1.0) -> w.FloatLogSlider:
    """Target compression ratio on a log scale (range from the Knob's bounds around `value`)."""
    return _control("compression_ratio", value)


def technique_picker(value: str = "ddp") -> w.Dropdown:
    """Training technique: one option per `lab.registry.techniques()`, shown by its label."""
    options = [(f"{cls.label or name} ({name})", name) for name, cls in registry.techniques().items()]
    return w.Dropdown(options=options, value=value, description="technique", tooltip=field_help("technique"),
                      style=_STYLE)


def topology_picker(value: str = "nvlink_node") -> w.Dropdown:
    """Network preset for simulated time, one option per entry of `lab.topology.PRESETS`."""
    options = [(f"{name} ({topo.preset(name).description})", name) for name in topo.PRESETS]
    return w.Dropdown(options=options, value=value, description="topology", tooltip=field_help("topology"),
                      style=_STYLE)


def compressor_picker(value: str = "none") -> w.Dropdown:
    """Compressor, one option per entry of `lab.compress.registry.COMPRESSORS`."""
    return _control("compressor", value)


def sharding_degree_picker(num_workers: int = 8, value: int = 0) -> w.Dropdown:
    """Sharding degree S (ZeRO): 0 (all workers) or a divisor of `num_workers`; only valid values are offered."""
    return sharding_degree_control(num_workers, value)


class KnobPanel(w.VBox):
    """The knobs of one experiment, with a line that shows why a combination is invalid.

    The common knobs (`MAIN_ROWS`) come first; under them `TechniqueKnobs` shows
    exactly the knobs the chosen technique reads. A knob the technique does not
    read as configured (the budget it ignores, `dirichlet_alpha` without a
    Dirichlet partition, the compression ratio of a fixed-size compressor, the
    compressor of a technique without a compressed path) is disabled, with the
    reason. `base` is an ExperimentConfig or a dict of settings for several
    techniques (e.g. `{"steps": 64, "rounds": 4, "sync_period": 8}`, which
    no single config holds); `.base` keeps its fields set away from their
    defaults. `.config()` returns the config of the knob values over them,
    built with `lab.config.config_for` so only what the technique reads is
    passed, or None when ExperimentConfig rejects them; the ValueError's
    message is then shown in `.message` (an HTML widget) and kept in `.error`.
    The panel re-validates whenever a knob changes.
    """

    def __init__(self, base: ExperimentConfig | dict | None = None):
        #: the settings the knobs start from and the fields without a knob come from (see `settings`)
        self.base = {n: v for n, v in settings_of(base).items() if v != KNOBS[n].default}
        b = settings_of(self.base)
        main = [n for row in MAIN_ROWS for n in row]
        self.technique = technique_picker(b["technique"])
        self.topology = topology_picker(b["topology"])
        self.technique.layout.width, self.topology.layout.width = "28em", "46em"
        self.main = {"technique": self.technique, "topology": self.topology}
        for name in main:
            if name not in self.main:
                self.main[name] = _control(name, b[name], width="22em")
                setattr(self, name, self.main[name])
        self.technique_knobs = TechniqueKnobs(b, exclude=main)
        self.controls = {**self.main, **self.technique_knobs.controls}
        self.notes = w.HTML()
        self.message = w.HTML()
        self.error = ""
        for knob in self.controls.values():
            knob.observe(self._on_change, names="value")
        super().__init__([*(w.HBox([self.main[n] for n in row]) for row in MAIN_ROWS), self.notes,
                          self.technique_knobs, self.message])
        self._on_change()

    # the technique knobs most used from code, as attributes
    @property
    def sync_period(self) -> w.Widget:
        return self.controls["sync_period"]

    @property
    def compressor(self) -> w.Widget:
        return self.controls["compressor"]

    @property
    def compression_ratio(self) -> w.Widget:
        return self.controls["compression_ratio"]

    @property
    def sharding_degree(self) -> w.Widget:
        return self.controls["sharding_degree"]

    def values(self) -> dict:
        """The values of the shown knobs, as ExperimentConfig fields (read or not)."""
        return {**{n: c.value for n, c in self.main.items()}, **self.technique_knobs.values()}

    def settings(self, base: ExperimentConfig | dict | None = None) -> dict:
        """The knob values over `base`'s settings (default: the panel's), without the technique: what
        `config` passes to `config_for`."""
        base = self.base if base is None else {n: v for n, v in settings_of(base).items() if v != KNOBS[n].default}
        out = {**base, **self.values()}
        out.pop("technique", None)
        return out

    def config(self, base: ExperimentConfig | dict | None = None) -> ExperimentConfig | None:
        """The knobs over `base` (default: the panel's base), keeping only the fields the technique reads;
        None, with the reason shown, if ExperimentConfig rejects them."""
        try:
            config = config_for(self.technique.value, **self.settings(base))
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
            self.technique_knobs.set_num_workers(self.num_workers.value)
        settings = self.settings()
        self.technique_knobs.refresh(settings)
        config, notes = draft(t, settings), []
        for name, control in self.main.items():
            ok, why = is_read(config, name)
            control.disabled = not ok
            if not ok:
                notes.append(f"{control.description}: {why}")
        self.notes.value = ("<span style='color:#6b6b6b;font-size:0.85em'>not read: "
                            f"{html.escape(' · '.join(notes))}</span>" if notes else "")
        self.config()


__all__ = ["KnobPanel", "compression_ratio_slider", "compressor_picker", "set_sharding_options",
           "sharding_degree_picker", "sync_period_slider", "technique_picker", "topology_picker"]
