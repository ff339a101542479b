"""The tiny GPT's sequence-parallel mode: its loss and gradients equal the single-device model's, and
`sequence_parallel` training equals single-device training on the same sequences (fp32; 1e-5)."""
from __future__ import annotations

import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.config import ExperimentConfig
from lab.data import RankBatches, load_chars, partition
from lab.experiment import run
from lab.models import TinyGPT, build_model
from lab.sequence.gpt import gpt_sp_loss, sp_gradients
from lab.sequence.layout import sp_groups
from lab.sequence.memory import activation_bytes, measured_activation_bytes
from lab.sequence.technique import GPT_METHODS
from lab.topology import preset

TOL = 1e-5


@pytest.fixture(scope="module")
def data():
    return load_chars()


@pytest.mark.parametrize("method", GPT_METHODS)
def test_sp_loss_and_gradient_equal_single_device(method, data):
    spec = build_model("gpt", data, seed=0)
    x, y = data.x_train[:2], data.y_train[:2]
    ref = spec.loss_fn(spec.module(x), y)
    ref_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref, list(spec.module.parameters()))])
    for p, layout in ((4, "zigzag"), (2, "contiguous")):
        coll = SimulatedCollective(world_size=p, ledger=Ledger(preset("leaf_spine" if p == 4 else "ethernet", p)))
        shares, cluster = gpt_sp_loss(spec.module, x, y, collective=coll, method=method, layout=layout)
        shares.sum().backward()
        grad = sp_gradients(coll, cluster.params.grad, groups=sp_groups(p, p), double_averaging=method == "lss")
        assert abs(float(shares.detach().sum()) - float(ref.detach())) < TOL
        assert (grad - ref_grad).abs().max() < TOL


def single_device_losses(data, *, steps, batch_size, lr, seed=0):
    """AdamW on one device over the stream an SP group of the same seed draws."""
    spec = build_model("gpt", data, seed=seed)
    opt = torch.optim.AdamW(spec.module.parameters(), lr=lr, weight_decay=0.0)
    batches = RankBatches(data.x_train, data.y_train,
                          partition(data.num_train, None, scheme="iid", num_workers=1, seed=seed),
                          batch_size=batch_size, seed=seed, ranks=[0])
    out = []
    for _ in range(steps):
        x, y = batches.next()
        loss = spec.loss_fn(spec.module(x[0]), y[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


BASE = dict(technique="sequence_parallel", model="gpt", dataset="chars", steps=3, batch_size=2, lr=0.01,
            optimizer="adamw", eval_every=3, topology="ethernet")


@pytest.mark.parametrize("method, layout", [("ring", "zigzag"), ("lss", "contiguous")])
def test_training_equals_single_device(method, layout, data):
    want = single_device_losses(data, steps=3, batch_size=2, lr=0.01)
    got = run(ExperimentConfig(num_workers=4, sp_method=method, sp_layout=layout, **BASE), save=False,
              progress=False)
    assert got.status == "finished"
    assert max(abs(a - b) for a, b in zip(got.metrics.loss, want)) < TOL
    assert got.metrics.sp_bytes.iloc[-1] > 0


def test_data_parallel_sp_groups_and_double_averaging():
    r = run(ExperimentConfig(num_workers=4, sp_degree=2, sp_method="lss", **BASE), save=False, progress=False)
    tags = set(r.ledger.tag)
    assert {"sp.grad.sp", "sp.grad.dp"} <= tags and "sp.grad" not in tags
    assert torch.equal(r.worker_params[0], r.worker_params[3])  # every rank steps to the same model
    r = run(ExperimentConfig(num_workers=4, sp_degree=2, sp_method="ring", **BASE), save=False, progress=False)
    assert "sp.grad" in set(r.ledger.tag)


@pytest.mark.parametrize("changes, field", [
    (dict(sp_degree=3), "sp_degree"),
    (dict(sp_method="ulysses", num_workers=8, topology="multinode_4x8"), "sp_degree"),
    (dict(sp_layout="zigzag", num_workers=32, topology="multinode_4x8"), "sp_degree"),
    (dict(model="mlp", dataset="digits"), "model"),
    (dict(sp_method="lasp"), "sp_method"),
])
def test_bad_config_is_refused(changes, field):
    with pytest.raises(ValueError, match=field):
        ExperimentConfig(**{**BASE, "num_workers": 4, **changes})


def test_sp_knobs_are_refused_for_other_techniques():
    with pytest.raises(ValueError, match="sp_method"):
        ExperimentConfig(technique="ddp", sp_method="ulysses")


@pytest.mark.parametrize("b, t, h, heads, layers, p, method", [
    (3, 32, 64, 4, 2, 2, "ring"), (2, 32, 32, 4, 3, 4, "lss"), (2, 32, 32, 8, 1, 4, "ulysses"),
    (1, 64, 16, 2, 2, 8, "token_ring"), (2, 32, 32, 4, 2, 4, "burst"),
])
def test_activation_bytes_equal_the_tensors_autograd_saves(b, t, h, heads, layers, p, method):
    torch.manual_seed(0)
    model = TinyGPT(20, block_size=t, n_layer=layers, n_head=heads, n_embd=h)
    x, y = torch.randint(0, 20, (b, t)), torch.randint(0, 20, (b, t))
    coll = SimulatedCollective(world_size=p, ledger=Ledger(preset("multinode_4x8" if p == 8 else "ethernet", p)))
    measured = measured_activation_bytes(model, x, y, collective=coll, method=method)
    assert measured == activation_bytes(batch=b, seq=t, hidden=h, layers=layers, heads=heads, sp_degree=p,
                                        method=method, vocab=20)


def test_activation_bytes_shrink_with_sp_degree_except_lss_kv():
    kw = dict(batch=1, seq=131072, hidden=4096, layers=32, heads=32, bytes_per_element=2)
    one = activation_bytes(sp_degree=1, method="ring", **kw)
    assert activation_bytes(sp_degree=8, method="ring", **kw) * 8 == one
    assert activation_bytes(sp_degree=8, method="lss", **kw) > activation_bytes(sp_degree=8, method="ring", **kw)
    with pytest.raises(ValueError, match="sp_degree"):
        activation_bytes(sp_degree=3, method="ring", **kw)
