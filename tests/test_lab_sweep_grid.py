"""The Lab's sweep over a small grid of knobs: the product of the values, in a row under one progress bar, each run
labelled by the knobs that differ; every config validated before the first run starts; at most MAX_SWEEP runs."""
import pytest

from lab.config import ExperimentConfig
from widgets import Lab
from widgets.lab_runs import MAX_SWEEP, sweep_configs

TINY = dict(technique="local_sgd", num_workers=8, topology="multinode_2x4", sync_period=4, steps=8, eval_every=8,
            batch_size=16, compressor="topk", compression_ratio=0.1, zero_stage=2, sharding_degree=4)


@pytest.fixture
def lab(tmp_path):
    return Lab(TINY, runs_dir=tmp_path / "runs", load_runs=False, save=False)


def _nothing_started(lab):
    return not lab.running and not lab.runs.runs and lab.progress.value == 0 and lab._thread is None


def test_a_grid_runs_the_product_under_one_progress_bar_labelled_by_what_differs(lab):
    grid = {"sync_period": [2, 4], "compression_ratio": [0.1, 0.01]}
    assert lab.sweep(grid) and lab.wait(120) and lab.error is None
    configs = [r.config for r in lab.runs.runs.values()]
    assert [(c.sync_period, c.compression_ratio) for c in configs] == [(2, 0.1), (2, 0.01), (4, 0.1), (4, 0.01)]
    assert all(r.status == "finished" for r in lab.runs.runs.values())
    assert lab.progress.max == lab.progress.value == 4 * TINY["steps"]  # one bar over the four runs
    labels = set(lab.runs.labels().values())  # the two knobs that differ, in config field order
    assert {frozenset(x.split()) for x in labels} == {frozenset({f"H={h}", f"ratio={r}"}) for h in (2, 4)
                                                      for r in (0.1, 0.01)}
    drawn = {v["label"] for d in lab.runs_chart.spec["datasets"].values() for v in d if "label" in v}
    assert labels <= drawn
    assert "sweep run 4/4" in lab.status.value


def test_every_point_is_validated_before_any_run_starts(lab):
    # the bad value is the grid's last point: a sweep that validated lazily would have started three runs
    with pytest.raises(ValueError, match=r"compression_ratio=2\.0 is invalid: expected .*\(0, 1\]") as e:
        lab.sweep({"sync_period": [2, 4], "compression_ratio": [0.1, 2.0]})
    assert "sweep point sync_period=2" in str(e.value)
    with pytest.raises(ValueError, match=r"sharding_degree=3 .*invalid"):  # a cross-field rule: 3 does not divide 8
        lab.sweep("sharding_degree", [2, 3])
    with pytest.raises(ValueError, match=r"field='sync_periods' is unknown; allowed: .*'sync_period'"):
        lab.sweep({"sync_periods": [2]})
    with pytest.raises(ValueError, match=r"values=\[\] of field='sync_period' are invalid: expected a non-empty"):
        lab.sweep({"sync_period": [], "compression_ratio": [0.1]})
    with pytest.raises(ValueError, match=r"values='4, 16' of field='sync_period' are invalid"):
        lab.sweep("sync_period", "4, 16")
    with pytest.raises(ValueError, match=r"grid=\[\('sync_period', \[2\]\)\] is invalid: expected \{field: values\}"):
        lab.sweep([("sync_period", [2])])
    with pytest.raises(ValueError, match=r"values=\[4\] is invalid: expected the values of one knob"):
        lab.sweep({"sync_period": [2]}, [4])
    assert _nothing_started(lab)


def test_the_grid_is_capped(lab):
    base = ExperimentConfig(**TINY)
    configs = sweep_configs(base, {"sync_period": [1, 2, 4, 8], "compression_ratio": [0.1, 0.2, 0.3, 0.4]})
    assert len(configs) == MAX_SWEEP == 16  # the cap itself is allowed
    with pytest.raises(ValueError, match=r"the sweep has 20 runs \(5 sync_period × 4 compression_ratio\); "
                                         r"allowed: at most 16 runs"):
        lab.sweep({"sync_period": [1, 2, 4, 8, 16], "compression_ratio": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(ValueError, match=r"17 runs"):
        lab.sweep("sync_period", list(range(1, 18)))
    assert _nothing_started(lab)


def test_the_sweep_row_sweeps_a_two_knob_grid(lab):
    lab.sweep_field.value, lab.sweep_values.value = "sync_period", "4"
    lab.sweep_field2.value, lab.sweep_values2.value = "compression_ratio", "0.1, 0.01"
    assert lab.sweep_grid() == {"sync_period": [4], "compression_ratio": [0.1, 0.01]}
    # errors show in the status line and start nothing
    lab.sweep_values2.value = "0.1, lots"
    lab.sweep_button.click()
    assert "compression_ratio=&#x27;lots&#x27; is invalid" in lab.status.value and _nothing_started(lab)
    lab.sweep_field2.value = "sync_period"
    lab.sweep_button.click()
    assert "given twice" in lab.status.value and _nothing_started(lab)
    lab.sweep_field2.value, lab.sweep_values2.value = "compression_ratio", "0.1, 0.01"
    lab.sweep_button.click()
    assert lab.wait(120) and lab.error is None
    assert [r.config.compression_ratio for r in lab.runs.runs.values()] == [0.1, 0.01]
    assert set(lab.runs.labels().values()) == {"ratio=0.1", "ratio=0.01"}
    assert lab.progress.value == lab.progress.max == 2 * TINY["steps"]
    # without a second knob ('—') the row sweeps one knob
    lab.sweep_field2.value = ""
    assert lab.sweep_grid() == {"sync_period": [4]}
