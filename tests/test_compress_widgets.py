"""The compression knobs and the loss-against-bytes chart, headless: set values, observe the effects."""
import torch

import widgets
from lab.experiment import ExperimentConfig, run


def test_compression_knobs_show_the_mapping_and_measured_ratio():
    knobs = widgets.CompressionKnobs(ExperimentConfig(compressor="topk", compression_ratio=0.01))
    assert "k=24" in knobs.readout.value and "0.01" in knobs.readout.value
    knobs.ratio.value = 0.1
    # at 10% a bitmap (602 bytes) beats int32 indices: 4k + 602 <= 1924 bytes gives k = 330
    assert "k=330" in knobs.readout.value and abs(knobs.measured_ratio - 1922 / 19240) < 1e-9
    knobs.compressor.value = "powersgd"
    assert "rank" in knobs.readout.value
    knobs.compressor.value = "majority_vote"  # takes no error feedback: the picker follows
    assert knobs.feedback.value == "none" and knobs.feedback.disabled
    knobs.compressor.value = "topk"
    knobs.feedback.value = "econtrol"
    assert knobs.eta.layout.display == ""
    cfg = ExperimentConfig(**knobs.values())
    assert (cfg.compressor, cfg.error_feedback) == ("topk", "econtrol")


def test_loss_vs_bytes_chart_labels_each_run_with_its_measured_ratio():
    torch.set_num_threads(1)
    base = ExperimentConfig(technique="ddp", num_workers=2, steps=4, eval_every=4)
    runs = {"dense": run(base, save=False, progress=False),
            "topk": run(base.replace(compressor="topk", compression_ratio=0.05), save=False, progress=False)}
    df = widgets.compressor_frame(runs)
    assert set(df.label) == {"dense (r=1)", "topk (r=0.0499)"}
    spec = widgets.loss_vs_bytes_chart(df).to_dict()
    assert spec["encoding"]["x"]["field"] == "bytes" and spec["encoding"]["x"]["scale"]["type"] == "log"
