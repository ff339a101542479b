"""The rank-stacked cluster computes what N separate modules compute."""
import copy

import torch
import torch.nn.functional as F

from lab.cluster import Cluster
from lab.data import load_digits
from lab.models import build_model


def test_vmapped_gradients_equal_a_loop_over_modules():
    spec = build_model("mlp", load_digits(), seed=0)
    n = 3
    cl = Cluster(spec.module, num_workers=n, loss_fn=F.cross_entropy)
    with torch.no_grad():  # make the workers differ
        cl.params.add_(0.01 * torch.randn_like(cl.params))
    x, y = torch.randn(n, 5, 64), torch.randint(0, 10, (n, 5))
    losses = cl.backward(x, y)
    for r in range(n):
        m = copy.deepcopy(spec.module)
        for p, v in zip(m.parameters(), cl.unflatten(cl.params.detach()[r]).values()):
            p.data.copy_(v)
        loss = F.cross_entropy(m(x[r]), y[r])
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
        assert torch.allclose(losses[r], loss.detach(), atol=1e-6)
        assert torch.allclose(cl.params.grad[r], g, atol=1e-6)


def test_one_stock_optimizer_acts_as_independent_per_rank_optimizers():
    spec = build_model("mlp", load_digits(), seed=0)
    cl = Cluster(spec.module, num_workers=3, loss_fn=F.cross_entropy)
    stacked = torch.optim.AdamW([cl.params], lr=1e-2, weight_decay=0.1)
    rows = [cl.params.detach()[r].clone().requires_grad_(True) for r in range(3)]
    separate = [torch.optim.AdamW([row], lr=1e-2, weight_decay=0.1) for row in rows]
    for _ in range(3):
        x, y = torch.randn(3, 4, 64), torch.randint(0, 10, (3, 4))
        cl.backward(x, y)
        for r in range(3):
            rows[r].grad = cl.params.grad[r].clone()
            separate[r].step()
        stacked.step()
    for r in range(3):
        assert torch.allclose(cl.params[r], rows[r], atol=1e-7)
    assert not torch.allclose(cl.params[0], cl.params[1])


def test_gradient_clipping_is_per_rank():
    spec = build_model("mlp", load_digits(), seed=0)
    cl = Cluster(spec.module, num_workers=2, loss_fn=F.cross_entropy)
    cl.params.grad = torch.stack([torch.full((cl.dim,), 1.0), torch.full((cl.dim,), 1e-4)])
    small = cl.params.grad[1].clone()
    cl.clip_grad_norm_(1.0)
    assert torch.allclose(cl.params.grad[0].norm(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(cl.params.grad[1], small)
