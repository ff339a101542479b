"""The compressed all-reduce on real gloo processes — a real all-to-all of the compressed chunks and an all-gather
of the re-compressed ones — ends where the simulated run ends (1e-6), with identical Ledgers."""
import pytest

from lab.config import ExperimentConfig
from lab.launch import compare_with_simulated

pytestmark = [pytest.mark.gloo, pytest.mark.slow]

COLUMNS = ("step", "round", "bytes", "sim_seconds", "payload_ratio", "traffic_ratio")


@pytest.mark.parametrize("technique,extra", [
    ("ddp", dict(steps=6, compressor="int8")),  # two-phase, 3 chunks of 1604 (the last zero-padded)
    ("ddp", dict(steps=4, compressor="topk", compression_ratio=0.1, compress_algorithm="star")),
    ("diloco", dict(steps=12, sync_period=4, compressor="topk", compression_ratio=0.1, error_feedback="ef")),
])
def test_compressed_runs_on_gloo_equal_simulated_runs(technique, extra):
    cfg = ExperimentConfig(technique=technique, num_workers=3, eval_every=100, topology="ethernet", **extra)
    eq = compare_with_simulated(cfg, columns=COLUMNS)
    assert eq.holds(atol=1e-6), eq
