"""The `device` knob (lab.device): where the cluster's tensors live. The suite runs on the CPU only."""
import pytest
import torch

from lab.config import config_for
from lab.device import resolve
from lab.experiment import build_context, run

SMALL = dict(num_workers=4, rounds=2, batch_size=8, eval_every=2)


def test_device_cpu_puts_the_cluster_the_data_and_the_model_on_the_cpu_and_changes_no_number():
    cfg = config_for("fedavg", device="cpu", **SMALL)
    ctx, data = build_context(cfg)
    assert ctx.cluster.params.device.type == "cpu" and data.x_train.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in ctx.spec.module.parameters())
    a = run(cfg, save=False, progress=False).metrics.drop(columns="wall_seconds")
    b = run(config_for("fedavg", **SMALL), save=False, progress=False).metrics.drop(columns="wall_seconds")
    assert a.equals(b)


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    assert resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    r = run(config_for("local_sgd", device="auto", num_workers=2, steps=4, sync_period=2, eval_every=4),
            save=False, progress=False)
    assert r.status == "finished" and r.worker_params.device.type == resolve("auto").type


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_by_name_before_anything_is_built():
    with pytest.raises(ValueError, match=r"device='cuda' is invalid: .*torch.cuda.is_available\(\) is False"):
        config_for("fedavg", device="cuda")


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device='tpu'"):
        config_for("ddp", device="tpu")
