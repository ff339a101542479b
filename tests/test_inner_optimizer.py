"""The local optimizer a config really builds: DiLoCo's paper default (AdamW, β = (0.9, 0.95)) and exposed betas.

`optimizer='auto'` is the technique's own optimizer (`Technique.default_optimizer`), `adam_beta2=0` its own β2;
DiLoCo and Streaming DiLoCo default to AdamW with β = (0.9, 0.95) at lr 3e-3, everything else to SGD and torch's
β = (0.9, 0.999) when AdamW is chosen.
"""
import copy

import pytest
import torch

from lab.experiment import ExperimentConfig, build_context, run
from lab.optim import adam_betas, optimizer_name


def built(**kw) -> torch.optim.Optimizer:
    ctx, _ = build_context(ExperimentConfig(**kw))
    return ctx.optimizer


@pytest.mark.parametrize("technique", ["diloco", "streaming_diloco"])
def test_diloco_defaults_to_adamw_with_the_papers_betas(technique):
    cfg = ExperimentConfig(technique=technique, num_workers=4)
    assert (optimizer_name(cfg), adam_betas(cfg), cfg.lr) == ("adamw", (0.9, 0.95), 3e-3)
    opt = built(technique=technique, num_workers=4)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["lr"] == 3e-3


def test_other_techniques_keep_sgd_and_torchs_adamw_betas():
    assert isinstance(built(technique="local_sgd", num_workers=4), torch.optim.SGD)
    opt = built(technique="ddp", num_workers=4, optimizer="adamw", lr=1e-3)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_betas_are_knobs_read_by_adam_type_optimizers_only():
    opt = built(technique="ddp", num_workers=4, optimizer="adamw", lr=1e-3, adam_beta1=0.8, adam_beta2=0.98)
    assert opt.param_groups[0]["betas"] == (0.8, 0.98)
    opt = built(technique="diloco", num_workers=4, adam_beta2=0.99)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert built(technique="ddp", num_workers=4, optimizer="adam_mini", lr=1e-3,
                 adam_beta2=0.95).param_groups[0]["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match="adam_beta2=0.95 is not read"):
        ExperimentConfig(technique="ddp", adam_beta2=0.95)  # SGD has no betas
    with pytest.raises(ValueError, match="adam_beta1=1.0 is invalid"):
        ExperimentConfig(technique="diloco", adam_beta1=1.0)


def test_diloco_with_one_worker_is_its_default_adamw_alone():
    cfg = ExperimentConfig(technique="diloco", num_workers=1, steps=21, sync_period=7, outer_lr=1.0,
                           outer_momentum=0.0, eval_every=21)
    r = run(cfg, save=False, progress=False)
    ctx, _ = build_context(cfg)  # the same init and the same batch stream
    model = copy.deepcopy(ctx.spec.module)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)  # the paper's betas
    for _ in range(21):
        x, y = ctx.batches.next()
        opt.zero_grad()
        ctx.spec.loss_fn(model(x[0]), y[0]).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert not torch.allclose(flat, ctx.cluster.params[0].detach(), atol=1e-3)  # it trained
    assert torch.allclose(r.model, flat, atol=1e-6, rtol=0)  # tolerance: the outer step's θ_g − (θ_g − θ_m)
