"""The parts of the Lab a notebook shows (`widgets.Lab(base, focus=...)`): the four knob groups by name, the
heading that says which knobs stay fixed and at what, and the values the sweep row starts with."""
from __future__ import annotations

from lab.config import ExperimentConfig, is_read
from lab.sharding.layout import divisors

#: the four knobs (and their companions) in the top row, by the name `focus` gives them
GROUPS = {"sync_period": ("sync_period",), "compression": ("compression_ratio", "compressor"),
          "sharding": ("sharding_degree", "zero_stage"), "topology": ("topology",)}


def sweep_example(field: str, b: dict) -> str:
    """Values the sweep row starts with for `field`: a few around the base config's."""
    if field == "sharding_degree":
        return ", ".join(str(d) for d in divisors(b["num_workers"])[-3:])
    if field == "topology":
        return ", ".join(dict.fromkeys([b["topology"], "nvlink_node", "wan_sites"]))
    return {"sync_period": "4, 16, 64", "compression_ratio": "0.1, 0.01"}[field]


def title(focus: tuple[str, ...], knobs: dict, config: ExperimentConfig | None) -> str:
    """The top row's heading; for a notebook's part of the Lab (`focus`), what stays fixed and at which values."""
    if len(focus) == len(GROUPS):
        return "The four knobs"
    def shown(n):  # a dropdown's label (e.g. S's "all ranks"), else the value
        return f"{knobs[n].description} = {getattr(knobs[n], 'label', None) or knobs[n].value}"

    fixed = [", ".join(shown(n) for n in GROUPS[g] if config is None or is_read(config, n)[0])
             or f"{knobs[GROUPS[g][0]].description}: not read" for g in GROUPS if g not in focus]
    names = " and ".join(knobs[GROUPS[g][0]].description for g in focus)
    return (f"The {names} knob{'s' if len(focus) > 1 else ''} <span style='color:#6b6b6b;font-weight:normal'>"
            f"(fixed here: {'; '.join(fixed)}. All four: notebooks/dashboard.ipynb)</span>")
