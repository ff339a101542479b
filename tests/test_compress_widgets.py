"""The compression knobs and the loss-against-bytes chart, headless: set values, observe the effects."""
import html
import re

import pandas as pd
import torch

import widgets
from lab.experiment import ExperimentConfig, run
from widgets.compression import ratio_of


def test_compression_knobs_show_the_mapping_and_the_ratios():
    knobs = widgets.CompressionKnobs(ExperimentConfig(compressor="topk", compression_ratio=0.01))
    assert knobs.setting["parameter"].startswith("k=") and knobs.setting["parameter"] in knobs.readout.value
    assert "payload ratio" in knobs.readout.value
    knobs.ratio.value = 0.1
    assert 0.05 < knobs.payload_ratio <= 0.1  # measured on the probe's packet
    assert f"{knobs.payload_ratio:.4g}" in knobs.readout.value
    if knobs.traffic_ratio is not None:
        assert "traffic ratio" in knobs.readout.value
    knobs.compressor.value = "powersgd"
    assert "rank" in knobs.readout.value
    knobs.compressor.value = "majority_vote"  # takes no error feedback: the picker follows
    assert knobs.feedback.value == "none" and knobs.feedback.disabled
    knobs.compressor.value = "int8"  # a fixed size: the ratio knob is not read, and says why
    assert knobs.ratio.disabled and "fixed size" in knobs.rows["compression_ratio"].note.value
    knobs.compressor.value = "topk"
    knobs.feedback.value = "econtrol"
    assert knobs.eta.layout.display != "none" and not knobs.eta.disabled
    cfg = ExperimentConfig(**knobs.values())
    assert (cfg.compressor, cfg.error_feedback) == ("topk", "econtrol")


def test_compression_knobs_are_disabled_for_a_technique_without_a_compressed_path():
    knobs = widgets.CompressionKnobs(ExperimentConfig(technique="zero", num_workers=4))
    row = knobs.rows["compressor"]
    assert row.control.disabled and "technique='zero' does not read it" in html.unescape(row.note.value)


def test_ratio_of_prefers_the_traffic_ratio_and_falls_back():
    assert ratio_of(pd.DataFrame({"traffic_ratio": [0.2, 0.1], "payload_ratio": [0.05, 0.05]})) == \
        ("traffic ratio", 0.1)
    assert ratio_of(pd.DataFrame({"payload_ratio": [0.05, float("nan")]})) == ("payload ratio", 0.05)
    assert ratio_of(pd.DataFrame({"measured_ratio": [0.07]})) == ("payload ratio", 0.07)
    assert ratio_of(pd.DataFrame({"loss": [1.0]})) is None
    assert ratio_of({"payload_ratio": 0.3, "traffic_ratio": None}) == ("payload ratio", 0.3)


def test_loss_vs_bytes_chart_labels_each_run_with_its_ratio():
    torch.set_num_threads(1)
    base = ExperimentConfig(technique="ddp", num_workers=2, steps=4, eval_every=4)
    runs = {"dense": run(base, save=False, progress=False),
            "topk": run(base.replace(compressor="topk", compression_ratio=0.05), save=False, progress=False)}
    df = widgets.compressor_frame(runs)
    name, value = ratio_of(runs["topk"].metrics)
    assert f"topk ({name} {value:.3g})" in set(df.label)
    assert re.fullmatch(r"(traffic|payload) ratio", name) and value <= 0.05 * 1.1
    spec = widgets.loss_vs_bytes_chart(df).to_dict()
    assert spec["encoding"]["x"]["field"] == "bytes" and spec["encoding"]["x"]["scale"]["type"] == "log"
