"""The technique-specific knobs appear with their technique, and the sync-period knob drives every technique."""
import pytest

import widgets
from lab.experiment import TECHNIQUES, ExperimentConfig
from widgets.technique_knobs import FEDERATED_FIELDS, TECHNIQUE_FIELDS, TechniqueKnobs

SMALL = ExperimentConfig(num_workers=4, steps=20, rounds=2)


def shown(panel):
    return [c.description for c in panel.technique_knobs.children]


def own(technique):
    return [n.replace("_", " ") for n in TECHNIQUE_FIELDS.get(technique, ())]


def test_every_listed_field_and_technique_exists():
    for technique, names in TECHNIQUE_FIELDS.items():
        assert technique in TECHNIQUES
        for n in names:
            assert hasattr(SMALL, n)
    assert all(hasattr(SMALL, n) for n in FEDERATED_FIELDS)


def test_knobs_follow_the_chosen_technique():
    panel = widgets.KnobPanel(SMALL)
    assert shown(panel) == own("ddp")
    panel.technique.value = "streaming_diloco"
    assert shown(panel)[:4] == ["num fragments", "overlap steps", "merge alpha", "outer bits"]
    panel.technique.value = "scafcom"
    assert "scafcom beta" in shown(panel) and "dropout prob" in shown(panel)
    panel.technique.value = "local_sgd"
    assert shown(panel) == own("local_sgd") and "dropout prob" not in shown(panel)


def test_technique_knob_values_reach_the_config_and_invalid_ones_are_explained():
    panel = widgets.KnobPanel(SMALL)
    panel.technique.value = "streaming_diloco"
    panel.sync_period.value = 8
    panel.technique_knobs.controls["num_fragments"].value = 4
    panel.technique_knobs.controls["outer_bits"].value = 4
    c = panel.config()
    assert (c.technique, c.sync_period, c.num_fragments, c.outer_bits) == ("streaming_diloco", 8, 4, 4)
    panel.technique_knobs.controls["overlap_steps"].value = 2  # tau must stay below H / P = 2
    assert panel.config() is None and "overlap_steps=2" in panel.error


@pytest.mark.parametrize("technique", ["fedavg", "scaffold", "modest", "fedvote", "pgfed"])
def test_sync_period_becomes_the_local_steps_of_federated_techniques(technique):
    panel = widgets.KnobPanel(SMALL)
    panel.technique.value = technique
    panel.sync_period.value = 7
    panel.technique_knobs.controls["dropout_prob"].value = 0.25
    c = panel.config()
    assert c.local_steps == 7 and c.dropout_prob == 0.25


def test_step_budgeted_techniques_read_the_sync_period_itself():
    knobs = TechniqueKnobs(SMALL)
    assert knobs.values("diloco", 9) == {"outer_lr": 0.7, "outer_momentum": 0.9, "lr_schedule": "constant"}
    assert "local_steps" not in knobs.values("qsr", 9)
