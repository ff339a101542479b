"""Controls built from the config's declared knobs, and the panel of knobs the chosen technique reads.

`field_control(name, value)` turns one `lab.knobs.Knob` into an ipywidgets
control: a dropdown for choices, a checkbox for a flag, a log slider where
`Knob.scale == 'log'` (unless 0 is allowed, meaning 'off'), a slider for a
number in a unit-sized range, else a bounded number box — min and max always
from the Knob's bounds.

`TechniqueKnobs` holds one such control per technique-dependent field (every
field not in `lab.config.ALWAYS`) and shows exactly those the chosen
technique reads (`lab.config.reads`), grouped: the technique's own knobs,
knobs of a shared base class (e.g. the federated round), the local optimizer,
and compression, each a collapsible section (the first and compression open).
The compressor picker is always shown. A control the
technique does not read as configured — the compressor where the technique
has no `compressor_path`, a knob whose `read_when` does not hold — is
disabled, with the one-line reason of `lab.config.is_read` beside it.
"""
from __future__ import annotations

import html
import math
import re

import ipywidgets as w

from lab import registry
from lab.config import ALWAYS, COMPRESSOR_FIELDS, KNOBS, ExperimentConfig, draft as config_draft, is_read, reads
from lab.sharding.layout import divisors
from lab.technique import LOCAL_OPTIMIZER

_STYLE = {"description_width": "11em"}
#: groups shown open besides the first (the technique's own knobs); the others start collapsed
OPEN_GROUPS = ("compression",)
#: width of a control, so the reasons beside them line up
CONTROL_WIDTH = "24em"


def field_help(name: str) -> str:
    return KNOBS[name].help


def field_control(name: str, value=None, *, description: str | None = None, style=None,
                  width: str = CONTROL_WIDTH) -> w.Widget:
    """A control for config field `name` (value: default of its Knob), bounds and choices from the Knob."""
    k = KNOBS[name]
    value = k.default if value is None else value
    kw = dict(value=value, description=description or name.replace("_", " "), tooltip=k.help,
              style=style or _STYLE, layout=w.Layout(width=width))
    if k.choices is not None:
        return w.Dropdown(options=list(k.choices), **kw)
    if k.type is bool:
        return w.Checkbox(indent=True, **kw)
    if k.type is str:
        return w.Text(continuous_update=False, **kw)
    special = [s for s in k.special if isinstance(s, (int, float))]
    if k.type is int:
        low = int(k.low) + (1 if k.low_open else 0)
        high = int(k.high) - (1 if k.high_open else 0)
        return w.BoundedIntText(min=min([low, *special, value]), max=max(high, value), **kw)
    if k.scale == "log" and value > 0 and all(s > 0 for s in special):  # a log slider cannot hold 0 ('off')
        lo, hi = log_range(k, value)
        return w.FloatLogSlider(base=10, min=lo, max=hi, step=0.05, readout_format=".3", continuous_update=False,
                                **kw)
    step = 0.01
    on_grid = abs(value / step - round(value / step)) < 1e-6
    if k.high - k.low <= 1 and not special and on_grid:
        low = k.low + (step if k.low_open else 0.0)
        high = k.high - (step if k.high_open else 0.0)
        return w.FloatSlider(min=min(low, value), max=max(high, value), step=step, readout_format=".3",
                             continuous_update=False, **kw)
    return w.BoundedFloatText(min=min([k.low, *special, value]), max=max(k.high, value), **kw)


def log_range(k, value: float) -> tuple[float, float]:
    """Exponents (base 10) of a log slider: three decades under the value's, one over, within the Knob's bounds."""
    lo = math.floor(math.log10(value)) - 3
    hi = math.ceil(math.log10(value)) + 1
    if k.low > 0:
        lo = max(lo, math.log10(k.low))
    return lo, min(hi, math.log10(k.high))


def settings_of(base: ExperimentConfig | dict | None) -> dict:
    """Every field's value: a config's, or `base` (a dict of settings, possibly for several techniques, so
    not necessarily a valid config) over the Knob defaults."""
    if isinstance(base, ExperimentConfig):
        return base.to_dict()
    base = dict(base or {})
    unknown = sorted(set(base) - set(KNOBS))
    if unknown:
        raise ValueError(f"config has unknown fields {unknown}; allowed: {sorted(KNOBS)}")
    return {n: base.get(n, k.default) for n, k in KNOBS.items()}


def draft(technique: str, settings: dict):
    """An unvalidated config with `settings` over the defaults, to ask `is_read` (lab.config.draft)."""
    return config_draft(technique, **{k: v for k, v in settings.items() if k != "technique"})


class FieldRow(w.HBox):
    """A control and, beside it, why it is disabled (empty while it is read)."""

    def __init__(self, name: str, control: w.Widget):
        self.name, self.control = name, control
        control.layout.flex = "0 0 auto"  # a long reason wraps beside the control, never squeezes it
        self.note = w.HTML(layout=w.Layout(width="auto"))
        super().__init__([control, self.note], layout=w.Layout(align_items="center"))

    def set_reason(self, reason: str) -> None:
        self.control.disabled = bool(reason)
        self.control.tooltip = field_help(self.name) + (f" — not read: {reason}" if reason else "")
        self.note.value = (f"<span style='color:#6b6b6b;font-size:0.85em;line-height:1.2'>"
                           f"{html.escape(reason)}</span>" if reason else "")


def knob_groups(technique: str, fields=None) -> list[tuple[str, list[str]]]:
    """[(title, [field, ...]), ...]: the technique-dependent fields `technique` reads, grouped for display.

    The technique's own knobs (and those it inherits from a registered technique, e.g. QSR's from Local SGD)
    come first; knobs declared by a base class that is not itself a registered technique (e.g. the federated
    round) form a group of their own, and so do knobs it reads from another technique ('from ZeRO'); the
    local optimizer and compression come last. The compressor is always listed, so the panel can say why a
    technique takes none.
    """
    cls = registry.technique(technique)
    fields = [n for n in KNOBS if n not in ALWAYS] if fields is None else list(fields)
    read = reads(technique)
    wanted = [n for n in fields if n in read or n == "compressor"]
    registered = set(registry.techniques().values())
    own = cls.label or cls.name
    groups: dict[str, list[str]] = {own: []}
    for n in wanted:
        if n in COMPRESSOR_FIELDS:
            title = "compression"
        elif n in LOCAL_OPTIMIZER:
            title = "local optimizer"
        else:
            owner = _declarer(cls, n)
            if owner is None or owner is cls or (owner in registered and issubclass(cls, owner)):
                title = own
            elif issubclass(cls, owner):
                title = _humanize(owner.__name__)
            else:
                title = f"from {owner.label or owner.name}" if owner in registered else _humanize(owner.__name__)
        groups.setdefault(title, []).append(n)
    order = [t for t in groups if t not in ("local optimizer", "compression")] + ["local optimizer", "compression"]
    return [(t, groups[t]) for t in order if groups.get(t)]


def _declarer(cls, field: str):
    """The class that declares config field `field`: in `cls`'s lineage, else in any registered technique's."""
    for c in [*cls.__mro__, *(b for t in registry.techniques().values() for b in t.__mro__)]:
        if field in vars(c).get("knobs", {}):
            return c
    return None  # a common knob (lab.config.COMMON) the technique reads


def _humanize(class_name: str) -> str:
    """'PeftFederated' -> 'peft federated (shared)'."""
    return " ".join(re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", class_name)).lower() + " (shared)"


class TechniqueKnobs(w.VBox):
    """The knobs `lab.config.reads(technique)` lists beyond the common ones; `.show(technique)` switches.

    `.controls` maps every field to its control (hidden ones keep their values for when their technique
    comes back); `.values()` are the shown fields' values (pass them through `lab.config.config_for`,
    which drops those not read); `.refresh(settings)` re-evaluates which shown controls are read.
    """

    def __init__(self, base: ExperimentConfig | dict | None = None, *, exclude=()):
        values = settings_of(base)
        names = [n for n in KNOBS if n not in ALWAYS and n not in exclude]
        self.num_workers = values["num_workers"]
        self.rows = {n: FieldRow(n, self._control(n, values[n], values["num_workers"])) for n in names}
        self.controls = {n: row.control for n, row in self.rows.items()}
        self.technique: str | None = None
        self.groups: list[tuple[str, list[str]]] = []
        self.sections: dict[str, w.Accordion] = {}  # group title -> its collapsible section
        super().__init__([])
        self.show(values["technique"])
        self.refresh(values)

    @staticmethod
    def _control(name: str, value, num_workers: int) -> w.Widget:
        if name == "sharding_degree":
            return sharding_degree_control(num_workers, value)
        return field_control(name, value)

    def fields_for(self, technique: str) -> list[str]:
        """The fields shown for `technique`, in display order."""
        return [n for _, group in knob_groups(technique, self.rows) for n in group]

    def show(self, technique: str) -> None:
        """Show the controls of the fields `technique` reads (and the compressor picker), grouped."""
        if technique == self.technique:
            return
        self.groups = knob_groups(technique, self.rows)  # raises ValueError for an unknown technique
        self.technique = technique
        self.set_num_workers(self.num_workers)  # S = 0 means all workers for zero, no sharding for the others
        self.sections = {}
        for i, (title, group) in enumerate(self.groups):
            is_open = i == 0 or title in OPEN_GROUPS
            self.sections[title] = w.Accordion([w.VBox([self.rows[n] for n in group])], titles=(
                f"{title} ({len(group)})",), selected_index=0 if is_open else None)
        self.children = list(self.sections.values())

    def refresh(self, settings: dict) -> None:
        """Disable, with the reason, each shown control the chosen technique does not read under `settings`
        (the other knobs' values, e.g. the panel's)."""
        config = draft(self.technique, {**settings, **self.values()})
        for _, group in self.groups:
            for n in group:
                ok, why = is_read(config, n)
                self.rows[n].set_reason("" if ok else why)

    def set_num_workers(self, num_workers: int) -> None:
        self.num_workers = num_workers
        if "sharding_degree" in self.controls:
            set_sharding_options(self.controls["sharding_degree"], num_workers, technique=self.technique)

    def observe_values(self, handler) -> None:
        for control in self.controls.values():
            control.observe(handler, names="value")

    def values(self) -> dict:
        """{field: value} of the shown controls (read or not: `config_for` drops what is not read)."""
        return {n: self.controls[n].value for _, group in self.groups for n in group}


def sharding_degree_control(num_workers: int = 8, value: int = 0, *, technique: str | None = None) -> w.Dropdown:
    """Sharding degree S: 0 (the technique's default) or a divisor of `num_workers`; only valid values are
    offered."""
    picker = w.Dropdown(description="sharding degree", tooltip=field_help("sharding_degree"), style=_STYLE,
                        layout=w.Layout(width=CONTROL_WIDTH))
    set_sharding_options(picker, num_workers, value, technique=technique)
    return picker


def set_sharding_options(picker: w.Dropdown, num_workers: int, value: int | None = None, *,
                         technique: str | None = None) -> None:
    """Offer 0 and the divisors of `num_workers`; keep `value` (default: the current one) if still valid, else 0.
    0 is labelled with what it means for `technique` (lab.sharding.options.degree): all workers for a technique
    that always shards (zero), no sharding for the sync techniques that compose with it."""
    value = picker.value if value is None else value
    always = technique is None or getattr(registry.technique(technique), "shards_always", False)
    zero = f"all ({num_workers})" if always else "none"
    options = [(zero, 0)] + [(str(d), d) for d in divisors(num_workers)]
    picker.options = options
    picker.value = value if value in dict(options).values() else 0
