"""The Lab dashboard headless: knobs redraw the analytic views, unread knobs are disabled with their reason, the
composed run's bytes per link class equal the prediction, Stop is prompt and keeps rows, runs overlay and compare.

Latencies measured here are logged, never asserted (bench/widget_latency.py measures them)."""
import time

import pandas as pd
import pytest

from lab.experiment import build_context
from lab.sharding.composed import predict_for_config
from widgets import Lab
from widgets.lab_charts import diff_labels, downsample, model_info, si

SMALL = dict(technique="local_sgd", num_workers=8, topology="multinode_2x4", sync_period=8, steps=16, eval_every=8,
             batch_size=16, compressor="topk", compression_ratio=0.1, zero_stage=2, sharding_degree=4)


@pytest.fixture
def lab(tmp_path):
    return Lab(SMALL, runs_dir=tmp_path / "runs", load_runs=False)


def _moved(lab, name, value):
    before = lab.analytic_chart.spec
    lab.knobs[name].value = value
    lab.flush()
    return lab.analytic_chart.spec != before


@pytest.mark.parametrize("name,value", [("sync_period", 32), ("compression_ratio", 0.01), ("sharding_degree", 2),
                                        ("topology", "nvlink_node"), ("compressor", "qsgd"), ("zero_stage", 3)])
def test_each_knob_changes_the_analytic_chart(lab, name, value):
    assert _moved(lab, name, value)
    assert lab.panel.controls[name].value == value  # linked to the panel that builds the config
    assert getattr(lab.config(), name) == value
    print(f"{name}: {1000 * lab.latencies[-1]:.0f} ms from change to spec (headless, log only)")


def test_analytic_views_follow_the_composed_prediction(lab):
    cfg = lab.config()
    numels, _ = model_info(cfg.model, cfg.dataset, cfg.mlp_hidden)
    predicted = predict_for_config(cfg, num_params=lab.analytic_data["num_params"], numels=numels)
    by = lab.analytic_data["bytes"].groupby("link").bytes.sum()
    assert by["intra-node"] == pytest.approx(predicted["intra"]) and by["inter-node"] == pytest.approx(
        predicted["inter"])
    # a longer sync period sends fewer inter-node bytes per step
    inter = by["inter-node"]
    lab.knobs["sync_period"].value = 64
    lab.flush()
    assert lab.analytic_data["bytes"].groupby("link").bytes.sum()["inter-node"] < inter


def test_unread_knobs_are_disabled_with_their_reason(lab):
    lab.knobs["technique"].value = "ddp"
    assert lab.knobs["sync_period"].disabled and "does not read it" in lab.reasons["sync_period"].value
    assert not lab.knobs["sharding_degree"].disabled and not lab.knobs["compressor"].disabled
    lab.knobs["technique"].value = "zero"
    assert lab.knobs["compressor"].disabled and "does not read it" in lab.reasons["compressor"].value
    lab.knobs["technique"].value = "local_sgd"
    lab.knobs["sharding_degree"].value = 1
    assert lab.knobs["zero_stage"].disabled and "sharding_degree" in lab.reasons["zero_stage"].value
    lab.knobs["compressor"].value = "sign"  # fixed size: no ratio to set
    assert lab.knobs["compression_ratio"].disabled and lab.reasons["compression_ratio"].value
    lab.knobs["compressor"].value = "topk"
    assert not lab.knobs["compression_ratio"].disabled and not lab.reasons["compression_ratio"].value
    assert lab.config() is not None


def test_composed_run_from_the_lab_sends_the_predicted_bytes(lab):
    assert lab.start() and lab.wait(120) and lab.error is None
    (run,) = lab.runs.runs.values()
    cfg = run.config
    assert (cfg.technique, cfg.sync_period, cfg.compressor, cfg.compression_ratio, cfg.zero_stage,
            cfg.sharding_degree, cfg.topology, cfg.num_workers) == ("local_sgd", 8, "topk", 0.1, 2, 4,
                                                                    "multinode_2x4", 8)
    assert run.status == "finished" and run.path is not None and run.path.parent == lab.runs.root  # saved
    ctx, _ = build_context(cfg)
    predicted = predict_for_config(cfg, num_params=ctx.cluster.dim, numels=tuple(ctx.cluster.numels))
    for cls in ("intra", "inter", "uplink", "downlink"):
        assert run.ledger[f"bytes_{cls}"].sum() == predicted[cls] * cfg.steps, cls
    assert "finished" in lab.status.value and "ETA" in lab.progress_text.value
    assert lab.progress.value == lab.progress.max == 16


def test_stop_ends_a_run_within_a_second_and_keeps_its_rows(tmp_path):
    lab = Lab({**SMALL, "sync_period": 1, "steps": 100_000, "eval_every": 100_000}, runs_dir=tmp_path, load_runs=False)
    assert lab.start()
    deadline = time.monotonic() + 60
    while len(lab._live) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(lab._live) >= 3
    t = time.perf_counter()
    lab.stop()
    assert lab.wait(5)
    took = time.perf_counter() - t
    print(f"stop took {1000 * took:.0f} ms")
    assert took < 1.0
    (run,) = lab.runs.runs.values()
    assert run.status == "stopped" and len(run.metrics) >= 3


def test_two_runs_overlay_and_the_table_shows_their_differing_knobs(lab, tmp_path):
    assert lab.sweep("sync_period", [4, 16]) and lab.wait(120) and lab.error is None
    assert lab.progress.max == 32 and lab.progress.value == 32  # one bar over the sweep
    table = lab.runs.table()
    assert len(table) == 2 and list(table.sync_period) == [4, 16]
    assert "steps" in table and "final loss" in table and "simulated s" in table and "wall s" in table
    assert set(lab.runs.labels().values()) == {"H=4", "H=16"}
    values = [v for d in lab.runs_chart.spec["datasets"].values() for v in d]
    assert {v["label"] for v in values if "label" in v} >= {"H=4", "H=16"}
    assert "<th" in lab.runs.html.value and ">H<" in lab.runs.html.value
    # hide one, pin the other as baseline
    first, second = lab.runs.runs
    lab.runs.baseline.value = first
    assert "loss − baseline" in lab.runs.table()
    lab.runs.shown.value = (second,)
    assert len(lab.runs.table()) == 1
    # exports
    lab.runs.shown.value = (first, second)
    for suffix in ("csv", "parquet"):
        p = lab.runs.export_table(tmp_path / f"t.{suffix}")
        back = pd.read_csv(p) if suffix == "csv" else pd.read_parquet(p)
        assert len(back) == 2
    assert len(pd.read_csv(lab.runs.export_run(first, tmp_path / "r.csv"))) == len(lab.runs.runs[first].metrics)
    assert lab.export_chart(tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in lab.export_chart(tmp_path / "c.svg", which="analytic").read_bytes()[:400]
    # the store keeps them: a new Lab on the same directory lists both
    assert len(Lab(SMALL, runs_dir=lab.runs.root).runs.runs) == 2


def test_charts_carry_at_most_500_points_per_run():
    df = pd.DataFrame({"label": ["a"] * 2000 + ["b"] * 10, "step": list(range(2000)) + list(range(10))})
    out = downsample(df, 500)
    assert (out.groupby("label").size() <= 500).all() and out.step.max() == 1999 and (out.label == "b").sum() == 10


def test_si_format_and_labels_from_differences():
    assert (si(2e7, "B"), si(3.3, "s"), si(4.5e-4, "s"), si(0, "B")) == ("20 MB", "3.3 s", "450 µs", "0 B")
    from lab.config import ExperimentConfig

    a = ExperimentConfig(technique="local_sgd", sync_period=4)
    b = ExperimentConfig(technique="local_sgd", sync_period=16, lr=0.1)
    assert diff_labels([a, b]) == ["lr=0.5 H=4", "lr=0.1 H=16"]


def test_auto_run_starts_a_small_run_on_change(lab):
    lab.knobs["sync_period"].value = 4
    lab.flush()
    assert not lab.running and not lab.runs.runs  # off: moving a knob trains nothing
    lab.auto.value = True  # on: the change schedules a small run
    lab.flush()  # what the debounce timer does
    assert lab.running or lab.runs.runs
    assert lab.wait(60) and lab.error is None
    runs = list(lab.runs.runs.values())
    assert runs and runs[-1].config.sync_period == 4 and runs[-1].config.steps == min(SMALL["steps"], lab.auto_steps)
    assert f"({lab.auto_steps} steps)" in lab.auto.description  # its budget, shown
    lab.png_button.click()
    assert (lab.runs_dir / "exports" / "runs_chart.png").read_bytes()[:4] == b"\x89PNG"


def _chart_rows(lab) -> dict:
    """Rows per run label in the runs chart's spec (the loss/bytes/time data, not the memory bars)."""
    counts = {}
    for rows in lab.runs_chart.spec["datasets"].values():
        for v in rows:
            if v.get("step") is not None:
                counts[v["label"]] = counts.get(v["label"], 0) + 1
    return counts


def test_charts_are_downsampled_and_the_full_data_is_one_click_away(tmp_path):
    lab = Lab({**SMALL, "sync_period": 2}, runs_dir=tmp_path, load_runs=False, max_points=3)
    assert lab.start() and lab.wait(60) and lab.error is None
    (run_id, run), = lab.runs.runs.items()
    full = len(run.metrics)
    assert full == SMALL["steps"] // 2 > 3  # one row per round
    assert _chart_rows(lab) == {"local_sgd": 3}  # the chart: at most max_points per run
    assert "draw every point (else ≤ 3 per run)" == lab.all_points.description
    lab.all_points.value = True  # the toggle: every row on the chart
    assert _chart_rows(lab) == {"local_sgd": full}
    lab.all_points.value = False
    assert _chart_rows(lab) == {"local_sgd": 3}
    # "full data" buttons: every row of the shown runs, labelled, under the store's exports/
    lab.runs.rows_csv_button.click()
    lab.runs.rows_parquet_button.click()
    csv, parquet = (pd.read_csv(tmp_path / "exports" / "runs_rows.csv"),
                    pd.read_parquet(tmp_path / "exports" / "runs_rows.parquet"))
    for rows in (csv, parquet):
        assert len(rows) == full and set(rows.label) == {"local_sgd"}
        assert list(rows.step) == list(run.metrics.step) and (rows.loss.to_numpy() == run.metrics.loss.to_numpy()).all()
    assert "runs_rows.parquet" in lab.runs.exported.value
    lab.runs.shown.value = ()
    assert len(lab.runs.export_rows(tmp_path / "none.csv").read_text().strip()) == 0  # nothing shown, no rows


def test_the_bytes_chart_has_a_visible_link_class_legend(lab, tmp_path):
    """The link-class legend is drawn (it was once merged away with the loss charts' line dashes), with names a
    reader knows: both classes for the 2-node composed run, one for a run inside one node."""
    assert lab.start() and lab.wait(60) and lab.error is None
    lab.knobs["topology"].value = "nvlink_node"
    assert lab.start() and lab.wait(60) and lab.error is None
    multinode, one_node = lab.runs.runs
    for shown, classes in (((multinode, one_node), {"intra-node", "inter-node"}), ((one_node,), {"intra-node"})):
        lab.runs.shown.value = shown
        svg = lab.export_chart(tmp_path / "runs.svg").read_text()
        assert ">link class<" in svg
        assert {c for c in ("intra-node", "inter-node") if f">{c}<" in svg} == classes, shown
        assert "bytes_intra" not in svg and "bytes_inter" not in svg


def test_a_run_of_one_round_is_drawn_as_dots():
    """A run with one metrics row (H = steps) has no line to draw: it shows as a dot on each chart (one per link
    class on the bytes chart) instead of nothing."""
    import xml.etree.ElementTree as ET

    import vl_convert as vlc

    from widgets.lab_charts import runs_charts

    one = pd.DataFrame({"label": ["H=16"], "step": [16], "loss": [2.0], "sim_seconds": [1e-3], "bytes_peer": [100.0],
                        "bytes_inter": [10.0]})
    svg = ET.fromstring(vlc.vegalite_to_svg(runs_charts(one).to_dict()))
    dots = [len(g.findall("{http://www.w3.org/2000/svg}path")) for g in svg.iter("{http://www.w3.org/2000/svg}g")
            if "mark-symbol role-mark" in g.get("class", "")]
    assert dots == [1, 2, 1], dots  # loss, bytes (intra-node and inter-node), loss vs simulated time


def test_a_notebooks_part_of_the_lab_shows_its_knobs_and_says_what_is_fixed(tmp_path):
    part = Lab(SMALL, runs_dir=tmp_path / "runs", load_runs=False, focus="sync_period")
    row = part.children[1]  # the knobs' row: one group, H
    shown = [c.children[0] for col in row.children for c in col.children]
    assert shown == [part.knobs["sync_period"]]
    title = part.children[0].value
    assert "sync period H knob" in title and "topology = multinode_2x4" in title and "sharding degree S = 4" in title
    assert _moved(part, "sync_period", 32)  # the analytic view follows, as in the whole Lab
    both = Lab(SMALL, runs_dir=tmp_path / "runs", load_runs=False, focus=("sharding", "topology"))
    assert [c.children[0] for col in both.children[1].children for c in col.children] == [
        both.knobs["sharding_degree"], both.knobs["zero_stage"], both.knobs["topology"]]
    assert both.sweep_field.value == "sharding_degree" and both.sweep_values.value == "2, 4, 8"  # its own knob
    with pytest.raises(ValueError, match="focus=.*allowed: one or more of"):
        Lab(SMALL, runs_dir=tmp_path / "runs", load_runs=False, focus="H")


def test_sharding_degree_zero_is_labelled_with_what_it_means_for_the_technique(lab):
    label_of_zero = {v: k for k, v in lab.knobs["sharding_degree"].options}[0]
    assert label_of_zero == "none"  # Local SGD: S = 0 is no sharding
    lab.knobs["technique"].value = "zero"
    assert {v: k for k, v in lab.knobs["sharding_degree"].options}[0] == "all (8)"  # ZeRO: all workers
