"""Adam-mini: block rules and counts (spec §A7), the update against a per-block reference, sharded equals
unsharded, and training reaches AdamW's loss."""
import pytest
import torch

from lab.experiment import ExperimentConfig, run
from lab.sharding.adam_mini import AdamMini, adam_mini_profile, block_kind, block_sizes, layout_of, v_entries
from lab.sharding.memory import MIXED_ADAM, MODEL_SHAPES


def quiet(cfg):
    return run(cfg, save=False, progress=False)


def test_llama2_7b_second_moment_count_follows_the_block_rules():
    dim, heads, layers, vocab, ffn = 4096, 32, 32, 32000, 11008
    # q, k: one per head; v, o: one per row; gate, up, down: one per row; two RMSNorms: one each;
    # embedding and LM head: one per row; final norm: one (spec §A7, checks/check_mem.py)
    expected = layers * (heads + heads + dim + dim + ffn + ffn + dim + 2) + vocab + vocab + 1
    shape = MODEL_SHAPES["llama2-7b"]
    assert v_entries(shape) == expected == 1_163_841
    assert round(v_entries(shape) / shape.num_params, 5) == 1.7e-4
    # the optimizer states halve: m (4 bytes) + a negligible v instead of m + v (8 bytes)
    assert 4 < adam_mini_profile(shape, MIXED_ADAM).moments < 4.001


def test_block_rules():
    assert block_kind("model.layers.0.self_attn.q_proj.weight") == "head"
    assert block_kind("model.layers.0.self_attn.k_proj.weight") == "head"
    assert block_kind("model.layers.0.mlp.down_proj.weight") == "row"
    assert block_kind("model.layers.0.input_layernorm.weight") == "tensor"
    assert block_kind("blocks.0.fc.bias") == "element"
    assert block_sizes("x.k_proj.weight", (1024, 8192), heads=64, dim=8192) == [8192 * 8192 // 64] * 8  # GQA keys
    assert block_sizes("blocks.0.qkv.weight", (12, 4), heads=2, dim=4) == [8] * 2 + [8] * 2 + [4] * 4


def reference_adam_mini(p, grads, bounds, decay, *, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """A direct per-block loop over one flat vector."""
    p, m, v = p.clone(), torch.zeros_like(p), torch.zeros(len(bounds) - 1)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        p = p * (1 - lr * wd * decay)
        for b in range(len(bounds) - 1):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            v[b] = b2 * v[b] + (1 - b2) * (g[lo:hi] ** 2).mean()
            h = (v[b] / (1 - b2 ** t)).sqrt() + eps
            p[lo:hi] = p[lo:hi] - lr * m[lo:hi] / ((1 - b1 ** t) * h)
    return p


def test_update_equals_a_per_block_reference():
    named = [("fc1.weight", (4, 3)), ("fc1.bias", (4,)), ("ln.weight", (5,)), ("head.weight", (2, 5))]
    bounds = layout_of(named, heads=1, dim=1)
    decay = torch.tensor([1.0] * 12 + [0.0] * 4 + [0.0] * 5 + [1.0] * 10)
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(31, generator=gen)
    grads = [torch.randn(31, generator=gen) for _ in range(3)]
    param = p0.clone().unsqueeze(0)
    opt = AdamMini(param, bounds=bounds, decay=decay, lr=0.01, weight_decay=0.1)
    for g in grads:
        param.grad = g.unsqueeze(0)
        opt.step()
    assert torch.allclose(param[0], reference_adam_mini(p0, grads, bounds, decay, lr=0.01, wd=0.1), atol=1e-6)
    assert opt.v_count == 4 + 4 + 1 + 2


# The GPT's key biases have a zero gradient up to rounding noise, which Adam's per-element normalization turns
# into full-size steps: any 1-ulp difference in the gradient (hybrid sharding sums it in two levels) grows to
# 1e-4 within a few steps. So the GPT runs the schemes whose gradient sums are the same as DDP's (S = P);
# hybrid sharding (E1) runs on the MLP.
@pytest.mark.parametrize("model,dataset,schemes", [
    ("mlp", "digits", (dict(zero_stage=1), dict(zero_stage=3), dict(zero_stage=2, sharding_degree=2))),
    ("gpt", "chars", (dict(zero_stage=1), dict(zero_stage=3))),
])
def test_sharded_adam_mini_equals_unsharded(model, dataset, schemes):
    base = ExperimentConfig(technique="ddp", num_workers=4, model=model, dataset=dataset, optimizer="adam_mini",
                            lr=0.01, weight_decay=0.1, steps=4, eval_every=4, batch_size=4)
    ddp = quiet(base)
    for scheme in schemes:
        z = quiet(base.replace(technique="zero", **scheme))
        assert torch.allclose(z.worker_params, ddp.worker_params, atol=1e-6, rtol=0), scheme
        split = z.ledger[z.ledger.tag == "adam_mini"]
        assert len(split) == 4 and (split.payload_bytes <= 8 * 3).all()  # at most S-1 split blocks, fp64


def test_adam_mini_reaches_adamw_loss():
    base = ExperimentConfig(technique="ddp", num_workers=4, steps=100, eval_every=100, optimizer="adamw", lr=0.01)
    adamw = quiet(base).summary()["eval_loss"]
    mini = quiet(base.replace(optimizer="adam_mini")).summary()["eval_loss"]
    assert abs(mini - adamw) / adamw <= 0.05
