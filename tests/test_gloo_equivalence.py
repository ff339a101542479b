"""The same technique on 4 real gloo processes ends where the simulated run ends."""
import pytest

from lab.experiment import ExperimentConfig
from lab.launch import compare_with_simulated

pytestmark = pytest.mark.gloo


@pytest.mark.parametrize("technique,extra", [
    ("local_sgd", dict(sync_period=8, steps=48)),
    ("ddp", dict(steps=24, compressor="topk", compression_ratio=0.1)),
    ("fedavg", dict(rounds=3, client_fraction=0.5, partition="shards")),
])
def test_distributed_run_equals_simulated_run(technique, extra):
    cfg = ExperimentConfig(technique=technique, num_workers=4, eval_every=8, **extra)
    eq = compare_with_simulated(cfg, columns=("step", "round", "bytes", "bytes_uplink", "bytes_downlink",
                                              "sim_seconds"))
    # the Ledger is computed from payloads every process sees: identical bytes, calls and times
    assert eq.holds(atol=1e-6), eq
