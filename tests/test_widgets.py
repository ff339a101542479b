"""Headless widget tests: set `.value`s, start and stop runs, and check what the widgets show."""
from __future__ import annotations

import re
import time

import altair as alt
import ipywidgets as ipw
import pandas as pd

import widgets
from lab import registry, topology as topo
from lab.compress.registry import COMPRESSORS
from lab.config import KNOBS
from lab.experiment import ExperimentConfig, run

SMALL = ExperimentConfig(num_workers=4, steps=32, eval_every=8)


def test_knob_factories_come_from_lab_registries():
    s = widgets.sync_period_slider()
    assert isinstance(s, ipw.IntSlider) and (s.min, s.max) == (KNOBS["sync_period"].low, 128)
    r = widgets.compression_ratio_slider()
    assert KNOBS["compression_ratio"].scale == "log"
    assert isinstance(r, ipw.FloatLogSlider) and (r.base, r.min, r.max) == (10, -3, 0)  # 1e-3 .. the bound 1
    assert r.value == 1.0
    picker = widgets.technique_picker()
    assert [v for _, v in picker.options] == list(registry.techniques())
    assert ("Local SGD (local_sgd)", "local_sgd") in picker.options  # shown by the technique's label
    assert [v for _, v in widgets.topology_picker().options] == list(topo.PRESETS)
    assert list(widgets.compressor_picker().options) == list(COMPRESSORS)


def test_knob_panel_builds_the_config_from_its_values():
    panel = widgets.KnobPanel(SMALL)
    panel.technique.value = "local_sgd"
    panel.sync_period.value = 32
    panel.topology.value = "wan_sites"
    panel.num_workers.value = 16
    panel.steps.value = 64
    panel.lr.value = 0.05
    panel.compressor.value = "topk"
    panel.compression_ratio.value = 0.01
    config = panel.config()
    assert config == SMALL.replace(technique="local_sgd", sync_period=32, topology="wan_sites", num_workers=16,
                                   steps=64, lr=0.05, compressor="topk", compression_ratio=0.01)
    assert config.eval_every == SMALL.eval_every  # fields without a knob come from the base
    assert panel.error == "" and panel.message.value == ""
    assert not panel.compression_ratio.disabled
    panel.compressor.value = "int8"
    assert panel.compression_ratio.disabled  # int8 has a fixed size: the ratio is not read
    assert panel.config().compression_ratio == 1.0  # ... and not passed


def test_knob_panel_disables_the_budget_the_technique_ignores():
    panel = widgets.KnobPanel(SMALL)
    panel.technique.value = "fedavg"
    assert panel.steps.disabled and not panel.rounds.disabled
    assert "steps: the technique is budgeted in rounds" in panel.notes.value
    panel.technique.value = "ddp"
    assert not panel.steps.disabled and panel.rounds.disabled
    assert "rounds: the technique is budgeted in steps" in panel.notes.value


def test_bad_combination_shows_the_error_and_does_not_raise():
    panel = widgets.KnobPanel(SMALL)
    panel.topology.value = "nvlink_node"
    panel.num_workers.value = 16  # one NVLink node holds 8 ranks: ExperimentConfig raises
    assert panel.config() is None
    assert "num_workers=16" in panel.error
    assert "num_workers=16" in panel.message.value
    panel.num_workers.value = 8
    assert panel.config() is not None
    assert panel.error == "" and panel.message.value == ""


def test_sharding_degree_offers_only_divisors():
    panel = widgets.KnobPanel(SMALL.replace(num_workers=8))
    panel.technique.value = "zero"
    assert [v for _, v in panel.sharding_degree.options] == [0, 1, 2, 4, 8]
    panel.sharding_degree.value = 4
    panel.num_workers.value = 6
    assert [v for _, v in panel.sharding_degree.options] == [0, 1, 2, 3, 6]
    assert panel.sharding_degree.value == 0  # 4 does not divide 6
    assert panel.config().sharding_degree == 0


def test_run_label_is_what_the_technique_applied():
    qsr = SMALL.replace(technique="qsr", sync_period=4)
    label = widgets.run_label(qsr)
    assert label == f"{registry.technique('qsr').describe(qsr)} ×4 nvlink_node"
    assert label.startswith("QSR") and "H=4" in label
    topk = SMALL.replace(compressor="topk", compression_ratio=0.1)
    assert widgets.run_label(topk).startswith("DDP topk r=0.1")
    assert "topk" not in widgets.run_label(SMALL)


def test_start_with_invalid_knobs_returns_false_and_says_why():
    panel = widgets.RunPanel(SMALL)
    panel.knobs.num_workers.value = 16
    assert panel.start() is False
    assert "num_workers=16" in panel.status.value
    assert panel.runs == [] and not panel.running


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stop_ends_the_run_and_keeps_finished_rows():
    config = SMALL.replace(technique="ddp", steps=100_000)
    panel = widgets.RunPanel(config, throttle_s=0.05)
    assert panel.start()
    assert panel.running and panel.run_button.disabled and not panel.stop_button.disabled
    _wait_for(lambda: len(panel.frame()) >= 3)
    panel.stop()
    assert panel.wait(60)
    run_ = panel.last_run
    assert run_.status == "stopped" and panel.runs == [run_]
    assert 3 <= len(run_.metrics) < config.steps
    assert run_.metrics.step.iloc[-1] < config.steps
    assert "stopped" in panel.status.value
    assert panel.progress.value == run_.metrics.step.iloc[-1]
    assert len(panel.frame()) == len(run_.metrics)  # every finished round is on the chart
    assert panel.chart.num_values == len(run_.metrics)
    assert not panel.run_button.disabled and panel.stop_button.disabled


def test_finished_runs_update_and_overlay_on_the_chart():
    panel = widgets.RunPanel(SMALL.replace(technique="local_sgd", sync_period=8))
    assert panel.chart.num_values == 0
    assert panel.start() and panel.wait(120)
    first = panel.last_run
    assert first.status == "finished" and "finished" in panel.status.value
    assert panel.progress.value == panel.progress.max == SMALL.steps
    assert panel.chart.num_values == len(first.metrics) == SMALL.steps // 8
    panel.knobs.technique.value = "ddp"
    assert panel.start() and panel.wait(120)
    assert len(panel.runs) == 2
    assert panel.chart.num_values == len(first.metrics) + len(panel.last_run.metrics)
    (dataset,) = panel.chart.spec["datasets"].values()
    assert len({row["label"] for row in dataset}) == 2  # one labelled line per run
    panel.clear()
    assert panel.chart.num_values == 0 and len(panel.runs) == 2


def test_errors_in_the_run_thread_are_shown():
    # 64 workers on digits leave about 22 examples each: a batch of 32 fails when the run builds its data
    panel = widgets.RunPanel(SMALL.replace(num_workers=64, topology="wan_sites", batch_size=32))
    assert panel.start() and panel.wait(60)
    assert isinstance(panel.error, ValueError)
    assert "batch_size" in panel.status.value and "failed" in panel.status.value
    assert panel.runs == [] and not panel.run_button.disabled


def test_charts_are_offline():
    assert widgets.enable_offline()
    live = widgets.LiveChart()
    assert alt.JupyterChart._is_offline
    esm = live.widget._esm
    assert "esm.sh" not in esm and "cdn.jsdelivr" not in esm
    assert not re.search(r"""(import|from)\s*\(?\s*["']https?://""", esm)  # no module loaded from the web


def test_charts_from_run_metrics():
    runs = {"DDP": run(SMALL.replace(steps=8), save=False, progress=False),
            "H=4": run(SMALL.replace(technique="local_sgd", steps=8, sync_period=4), save=False, progress=False)}
    df = widgets.frame(runs)
    assert set(df.label) == {"DDP", "H=4"} and len(df) == 8 + 2
    spec = widgets.loss_vs_bytes(df).to_dict()
    assert spec["encoding"]["x"]["field"] == "bytes" and spec["encoding"]["x"]["scale"]["type"] == "log"
    assert widgets.loss_vs_time(df).to_dict()["encoding"]["x"]["field"] == "sim_seconds"
    assert widgets.loss_vs_step(df, y="eval_loss").to_dict()["encoding"]["y"]["field"] == "eval_loss"
    live = widgets.LiveChart(df.iloc[:3])
    assert live.num_values == 3
    live.update(df)
    assert live.num_values == len(df)
    assert isinstance(widgets.show(widgets.loss_vs_bytes(df)), alt.JupyterChart)


def test_frame_labels_unlabelled_runs_uniquely():
    r = run(SMALL.replace(steps=4), save=False, progress=False)
    df = widgets.frame([r, r])
    assert df.label.nunique() == 2 and set(df.topology) == {SMALL.topology}
    assert isinstance(widgets.frame([]), pd.DataFrame)
