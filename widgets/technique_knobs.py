"""The knobs a technique adds to the common ones, shown only while that technique is chosen.

`TechniqueKnobs` holds one control per technique-specific `ExperimentConfig`
field (built from the field's type, choices and help text) and shows the ones
`TECHNIQUE_FIELDS` lists for the chosen technique; federated techniques also
get the client-sampling and client-fault knobs (`FEDERATED_FIELDS`). The
common sync-period knob drives every technique: the step-budgeted ones read
`sync_period` (QSR as H_base), and for the federated ones `values()` maps it
to `local_steps`, their local steps per round.
"""
from __future__ import annotations

from dataclasses import fields

import ipywidgets as w

from lab.experiment import TECHNIQUES, ExperimentConfig
from lab.sync.options import FEDERATED

#: technique -> its own ExperimentConfig fields, in display order
TECHNIQUE_FIELDS = {
    "qsr": ("qsr_alpha", "lr_schedule", "warmup_steps"),
    "diloco": ("outer_lr", "outer_momentum", "lr_schedule"),
    "streaming_diloco": ("num_fragments", "overlap_steps", "merge_alpha", "outer_bits", "outer_lr", "outer_momentum"),
    "fedprox": ("prox_mu",),
    "scaffold": ("server_lr",),
    "scallion": ("server_lr", "cv_alpha"),
    "scafcom": ("server_lr", "cv_alpha", "scafcom_beta"),
    "modest": ("modest_aggregators", "success_fraction"),
    "dimat": ("dimat_graph", "dimat_matching"),
    "fedvote": ("fedvote_k", "fedvote_levels"),
    "pgfed": ("pgfed_mu", "pgfed_lambda", "pgfed_beta"),
    # sharding family (lab/sharding); the sharding degree is a common knob of the panel
    "zero": ("zero_stage", "zeropp", "hpz_size", "reduce_levels", "dies_per_gpu", "quant_block"),
    # compression family (lab/compress, lab/zeroth_order, lab/lora)
    "ddp": ("error_feedback", "econtrol_eta"),
    "local_sgd": ("error_feedback", "econtrol_eta"),
    "fedavg": ("error_feedback", "econtrol_eta"),
    "fedkseed": ("zo_seeds", "zo_eps", "zo_seed_sampling", "client_fraction", "local_steps"),
    "justonebyte": ("zo_samples", "zo_eps", "zo_scalar_format"),
    "ferret": ("ferret_seeds", "ferret_server_lr", "client_fraction", "local_steps"),
    "fzoos": ("fzoos_features", "fzoos_candidates", "client_fraction", "local_steps"),
    "fedpeft": ("peft_mode", "lora_rank", "lora_alpha", "client_fraction", "local_steps"),
    "fedex_lora": ("lora_rank", "lora_alpha", "client_fraction", "local_steps"),
    "dp_lora": ("dp_clip", "dp_noise", "dp_delta", "lora_rank", "lora_alpha", "client_fraction", "local_steps"),
    "cellm": ("cellm_up_density", "cellm_down_density", "error_feedback", "lora_rank", "lora_alpha",
              "client_fraction", "local_steps"),
}
#: knobs every federated technique shares: sampling, data skew and the client-fault model
FEDERATED_FIELDS = ("client_fraction", "partition", "dirichlet_alpha", "dropout_prob", "straggler_prob",
                    "round_deadline", "clients_stop", "stop_round", "byzantine_clients")

_FIELDS = {f.name: f for f in fields(ExperimentConfig)}
_STYLE = {"description_width": "11em"}


def field_control(name: str, value) -> w.Widget:
    """A control for one ExperimentConfig field: a dropdown for choices, else a number or text box."""
    f = _FIELDS[name]
    kw = dict(value=value, description=name.replace("_", " "), tooltip=f.metadata.get("help", ""), style=_STYLE)
    if "choices" in f.metadata:
        return w.Dropdown(options=list(f.metadata["choices"]), **kw)
    if f.type in ("int", int):
        return w.IntText(**kw)
    if f.type in ("float", float):
        return w.FloatText(**kw)
    return w.Text(**kw)


class TechniqueKnobs(w.VBox):
    """Controls for the technique-specific fields of `base`; `.show(technique)` picks which are visible."""

    def __init__(self, base: ExperimentConfig | None = None):
        base = base if base is not None else ExperimentConfig()
        names = sorted({n for group in TECHNIQUE_FIELDS.values() for n in group} | set(FEDERATED_FIELDS))
        self.controls = {n: field_control(n, getattr(base, n)) for n in names}
        self.technique = None
        super().__init__([])
        self.show(base.technique)

    def fields_for(self, technique: str) -> tuple[str, ...]:
        own = TECHNIQUE_FIELDS.get(technique, ())
        return own + (FEDERATED_FIELDS if technique in FEDERATED else ())

    def show(self, technique: str) -> None:
        """Show the controls of `technique` (none for DDP and Local SGD)."""
        if technique == self.technique:
            return
        if technique not in TECHNIQUES:
            raise ValueError(f"technique={technique!r} is unknown; allowed: {list(TECHNIQUES)}")
        self.technique = technique
        self.children = [self.controls[n] for n in self.fields_for(technique)]

    def observe_values(self, handler) -> None:
        for control in self.controls.values():
            control.observe(handler, names="value")

    def values(self, technique: str, sync_period: int | None = None) -> dict:
        """The fields `technique` uses, as ExperimentConfig values; the sync period becomes a federated
        technique's `local_steps`."""
        out = {n: self.controls[n].value for n in self.fields_for(technique)}
        if technique in FEDERATED and sync_period is not None:
            out["local_steps"] = sync_period
        return out
