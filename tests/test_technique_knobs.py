"""The knob panel derives from the declarations: each technique shows exactly the fields it reads, controls take
their bounds, choices and scale from the Knob, and what is not read is disabled with the reason."""
import html

import ipywidgets as ipw
import pytest

import widgets
from lab import registry
from lab.config import ALWAYS, KNOBS, ExperimentConfig, config_for, is_read, reads
from widgets.technique_knobs import TechniqueKnobs, draft, field_control

#: settings for every technique at once (a dict: no single config holds both budgets)
SETTINGS = dict(num_workers=4, steps=20, rounds=2)


@pytest.fixture(scope="module")
def panel():
    return widgets.KnobPanel(SETTINGS)


@pytest.mark.parametrize("technique", list(registry.techniques()))
def test_each_technique_shows_exactly_the_knobs_it_reads(panel, technique):
    panel.technique.value = technique
    shown = set(panel.technique_knobs.values())
    assert shown == (reads(technique) - set(ALWAYS)) | {"compressor"}
    config = panel.config()  # None (reason shown) where the defaults do not suit it, e.g. a GPT-only technique
    assert (config is None) == bool(panel.error) and (config is None or config.technique == technique)
    config = config or draft(technique, panel.settings())
    for name in shown:  # a disabled control is one the technique does not read as configured, and says why
        row = panel.technique_knobs.rows[name]
        ok, why = is_read(config, name)
        assert row.control.disabled == (not ok), name
        assert (why in html.unescape(row.note.value)) if not ok else row.note.value == "", name


def test_compressor_is_disabled_with_the_reason_where_there_is_no_compressed_path(panel):
    without = [t for t, cls in registry.techniques().items() if cls.compressor_path is None]
    with_path = [t for t, cls in registry.techniques().items() if cls.compressor_path is not None]
    assert without and with_path
    for t in without:
        panel.technique.value = t
        row = panel.technique_knobs.rows["compressor"]
        assert row.control.disabled and f"technique={t!r} does not read it" in html.unescape(row.note.value)
    for t in with_path:
        panel.technique.value = t
        assert not panel.compressor.disabled, t


def test_controls_take_bounds_choices_and_scale_from_the_knob():
    for name, k in KNOBS.items():
        c = field_control(name)
        assert c.value == k.default, name
        if k.choices is not None:
            assert isinstance(c, ipw.Dropdown) and list(c.options) == list(k.choices), name
        elif k.type is int:
            assert isinstance(c, ipw.BoundedIntText), name
            assert c.max == k.high - k.high_open and c.min <= k.low + k.low_open, name
        elif k.type is float and k.scale == "log" and not any(s <= 0 for s in k.special):
            assert isinstance(c, ipw.FloatLogSlider) and 10 ** c.max <= k.high * (1 + 1e-9), name
        elif k.type is float:
            assert isinstance(c, (ipw.FloatSlider, ipw.BoundedFloatText)), name
            assert k.low <= c.min + 1e-9 or c.min in k.special, name
            assert c.max <= k.high, name
    lr = field_control("lr", 0.05)
    assert isinstance(lr, ipw.FloatLogSlider) and 10 ** lr.min < 0.05 < 10 ** lr.max


def test_conditional_knobs_follow_their_condition():
    panel = widgets.KnobPanel(SETTINGS)
    panel.technique.value = "ddp"
    buckets = panel.technique_knobs.rows["num_buckets"]
    assert buckets.control.disabled and buckets.note.value
    panel.controls["overlap"].value = True
    assert not buckets.control.disabled and buckets.note.value == ""
    assert panel.dirichlet_alpha.disabled and "dirichlet alpha" in panel.notes.value
    panel.partition.value = "dirichlet"
    panel.dirichlet_alpha.value = 0.3
    assert not panel.dirichlet_alpha.disabled
    assert panel.config().dirichlet_alpha == 0.3
    panel.partition.value = "iid"
    assert panel.config().dirichlet_alpha == KNOBS["dirichlet_alpha"].default  # not read: not passed


def test_switching_techniques_passes_only_what_each_reads():
    panel = widgets.KnobPanel(SETTINGS)
    panel.technique.value = "local_sgd"
    panel.sync_period.value = 8
    panel.compressor.value = "topk"
    panel.compression_ratio.value = 0.1
    assert panel.config() == ExperimentConfig(technique="local_sgd", num_workers=4, steps=20, sync_period=8,
                                              compressor="topk", compression_ratio=0.1)
    panel.technique.value = "fedavg"
    panel.controls["local_steps"].value = 7
    panel.controls["dropout_prob"].value = 0.25
    c = panel.config()
    assert (c.rounds, c.local_steps, c.dropout_prob, c.sync_period) == (2, 7, 0.25, KNOBS["sync_period"].default)
    assert c == config_for("fedavg", **panel.settings())
    panel.technique.value = "local_sgd"  # hidden knobs kept their values
    assert panel.config().sync_period == 8


def test_technique_knob_values_reach_the_config_and_invalid_ones_are_explained():
    panel = widgets.KnobPanel(SETTINGS)
    panel.technique.value = "streaming_diloco"
    panel.sync_period.value = 8
    panel.technique_knobs.controls["num_fragments"].value = 2
    panel.technique_knobs.controls["outer_bits"].value = 4
    c = panel.config()
    assert (c.technique, c.sync_period, c.num_fragments, c.outer_bits) == ("streaming_diloco", 8, 2, 4)
    panel.technique_knobs.controls["overlap_steps"].value = 4  # tau must stay below H / P = 4
    assert panel.config() is None and "overlap_steps=4" in panel.error


def test_technique_knobs_alone_and_a_draft_config():
    knobs = TechniqueKnobs(ExperimentConfig(technique="diloco", num_workers=4))
    assert {"outer_lr", "outer_momentum", "sync_period"} <= set(knobs.values())
    assert "local_steps" not in knobs.values()
    d = draft("fedavg", {"local_steps": 3})
    assert is_read(d, "local_epochs")[0] is False  # local_steps > 0 sets the steps instead
    with pytest.raises(ValueError, match="technique='nope'"):
        knobs.show("nope")
