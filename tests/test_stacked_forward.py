"""The stacked path of `Cluster` (a model's `forward_stacked` with plain autograd) computes what the vmap path
computes: the same per-row losses, gradients and outputs, within float32 rounding (atol 1e-6 on values of
order 1), for every model that has it; models without it keep the vmap path."""
from __future__ import annotations

import pytest
import torch

from lab.cluster import Cluster
from lab.data import load_dataset
from lab.models import build_model

TOL = dict(rtol=1e-5, atol=1e-6)


def _pair(name: str, dataset: str, n: int = 5, seed: int = 0):
    data = load_dataset(dataset)
    spec = build_model(name, data, seed=seed, hidden=32)
    stacked = Cluster(spec.module, num_workers=n, loss_fn=spec.loss_fn)
    vmapped = Cluster(spec.module, num_workers=n, loss_fn=spec.loss_fn)
    vmapped.stacked = False
    g = torch.Generator().manual_seed(seed)
    params = stacked.params.detach() + 0.1 * torch.randn(stacked.params.shape, generator=g)  # distinct rows
    idx = torch.randint(0, data.num_train, (n, 7), generator=g)  # (n, B)
    return stacked, vmapped, params, data.x_train[idx], data.y_train[idx]


@pytest.mark.parametrize("name,dataset", [("mlp", "digits"), ("linear", "lstsq")])
def test_stacked_path_equals_vmap(name, dataset):
    stacked, vmapped, params, x, y = _pair(name, dataset)
    assert stacked.stacked
    loss_s, grad_s = stacked.loss_and_grad(params, x, y)
    loss_v, grad_v = vmapped.loss_and_grad(params, x, y)
    torch.testing.assert_close(loss_s, loss_v, **TOL)
    torch.testing.assert_close(grad_s, grad_v, **TOL)
    torch.testing.assert_close(stacked.losses(params, x, y), loss_v, **TOL)
    torch.testing.assert_close(stacked.forward(x, params), vmapped.forward(x, params), **TOL)


def test_each_row_is_its_own_model():
    """Row r's gradient is the gradient of r's loss at r's parameters alone (rows do not mix)."""
    stacked, _, params, x, y = _pair("mlp", "digits", n=4)
    _, grads = stacked.loss_and_grad(params, x, y)
    for r in range(4):
        _, alone = stacked.loss_and_grad(params[r:r + 1], x[r:r + 1], y[r:r + 1])
        torch.testing.assert_close(alone[0], grads[r], **TOL)


def test_gradient_written_into_out_buffer():
    stacked, _, params, x, y = _pair("mlp", "digits")
    out = torch.full_like(params, float("nan"))
    _, grads = stacked.loss_and_grad(params, x, y, out=out)
    assert grads.data_ptr() == out.data_ptr() and torch.isfinite(out).all()


def test_models_without_a_stacked_forward_keep_vmap():
    data = load_dataset("digits")
    spec = build_model("cnn", data, seed=0)
    assert not Cluster(spec.module, num_workers=2, loss_fn=spec.loss_fn).stacked
