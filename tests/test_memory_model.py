"""The memory model: the ZeRO paper's worked example, preset shapes, Korthikanti activations, and — for the lab
models — exactly the bytes of the tensors each rank holds."""
import pytest

from lab.experiment import ExperimentConfig, build_context
from lab.registry import technique as technique_class
from lab.sharding.memory import (
    MIXED_ADAM,
    MODEL_SHAPES,
    Partition,
    activation_bytes,
    flat_shape,
    lab_memory,
    memory_per_rank,
    zero_memory,
)


def test_zero_paper_worked_example():
    # 7.5B parameters, 64 ranks, K = 12: 120 GB -> 31.4 -> 16.6 -> 1.88 GB per rank (ZeRO paper, Fig. 1)
    shape = flat_shape(7_500_000_000)
    got = [zero_memory(shape, stage, 64, MIXED_ADAM).states / 1e9 for stage in range(4)]
    assert [round(got[0]), round(got[1], 1), round(got[2], 1), round(got[3], 2)] == [120, 31.4, 16.6, 1.88]


def test_model_states_follow_the_stage_formulas():
    psi, s = 6_400_000, 8
    shape = flat_shape(psi)
    assert zero_memory(shape, 1, s).states == 4 * psi + 12 * psi / s
    assert zero_memory(shape, 2, s).states == 2 * psi + 14 * psi / s
    for s in (1, 2, 4, 8, 64):  # HSDP: memory falls as 1/S
        assert zero_memory(shape, 3, s).states == 16 * psi / s
    hpz = zero_memory(shape, 3, 64, hpz_size=8, prefetch=0, unit=0)
    assert hpz.buffers == 2 * psi / 8  # ZeRO++ hpZ: + 2Ψ/D of bf16 secondary weights


def test_preset_parameter_counts():
    assert MODEL_SHAPES["gpt2-124m"].num_params == 124_439_808
    assert MODEL_SHAPES["llama2-7b"].num_params == 6_738_415_616
    assert MODEL_SHAPES["llama2-70b"].num_params == 68_976_648_192
    assert MODEL_SHAPES["mixtral-8x7b"].num_params == 46_702_792_704
    assert round(MODEL_SHAPES["mixtral-8x7b"].active_params / 1e9, 1) == 12.9


def test_activations_are_korthikanti_for_gpt_blocks():
    g = MODEL_SHAPES["gpt2-124m"]
    s, b, h, a, L = g.seq_len, 4, g.hidden, g.heads, g.num_layers
    assert activation_bytes(g, micro_batch=b, recompute="none") == L * s * b * h * (34 + 5 * a * s / h)
    assert activation_bytes(g, micro_batch=b, recompute="selective") == L * 34 * s * b * h
    assert activation_bytes(g, micro_batch=b, recompute="full") == L * 2 * s * b * h
    big = activation_bytes(MODEL_SHAPES["llama2-7b"], recompute="selective")
    assert 5e9 < big < 1e11  # SwiGLU/GQA generalization: same order as 34·sbh·L = 18 GB


def _technique_memory(cfg):
    ctx, _ = build_context(cfg)
    t = technique_class(cfg.technique)(cfg)
    t.setup(ctx)
    t.round(ctx)
    return t.memory, ctx.cluster.dim


@pytest.mark.parametrize("model,dataset", [("mlp", "digits"), ("cnn", "digits"), ("gpt", "chars")])
@pytest.mark.parametrize("stage,s,zeropp", [(1, 4, "none"), (2, 4, "none"), (3, 4, "none"), (1, 2, "none"),
                                            (3, 2, "none"), (3, 4, "hpz")])
def test_prediction_equals_the_tensors_each_rank_holds(model, dataset, stage, s, zeropp):
    cfg = ExperimentConfig(technique="zero", num_workers=4, model=model, dataset=dataset, zero_stage=stage,
                           sharding_degree=s, zeropp=zeropp, hpz_size=2 if zeropp == "hpz" else 0, optimizer="adamw",
                           steps=1, batch_size=8)
    held, d = _technique_memory(cfg)
    predicted = lab_memory(d, stage, s, optimizer="adamw", hpz_size=2 if zeropp == "hpz" else 0)
    assert held == {k: int(getattr(predicted, k)) for k in ("params", "grads", "optimizer", "buffers")}


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("sgd", 0.9)])
def test_prediction_follows_the_optimizer(optimizer, momentum):
    for stage in (1, 3):
        cfg = ExperimentConfig(technique="zero", num_workers=4, zero_stage=stage, optimizer=optimizer,
                               momentum=momentum, steps=1)
        held, d = _technique_memory(cfg)
        predicted = lab_memory(d, stage, 4, optimizer=optimizer, momentum=momentum)
        assert held["optimizer"] == predicted.optimizer and held["grads"] == predicted.grads


def test_ddp_holds_what_stage_0_predicts():
    cfg = ExperimentConfig(technique="ddp", num_workers=4, optimizer="adamw", steps=1)
    ctx, _ = build_context(cfg)
    t = technique_class("ddp")(cfg)
    t.setup(ctx)
    t.round(ctx)
    d, n = ctx.cluster.dim, ctx.cluster.num_local
    state = [v for s in ctx.optimizer.state.values() for v in s.values() if v.dim() >= 1]
    predicted = lab_memory(d, 0, 4)
    assert ctx.cluster.params.numel() * 4 // n == predicted.params
    assert sum(v.numel() * 4 for v in state) // n == predicted.optimizer
    assert d * 4 == predicted.grads  # the gradient DDP all-reduces, one row per rank


def test_partition_levels_can_be_set_per_state():
    # the Frontier scheme: optimizer states and primary params on all 64 ranks, secondary on 8, grads on 64
    shape = flat_shape(1_000_000_000)
    m = memory_per_rank(shape, Partition(params=64, grads=64, optimizer=64, secondary=8), MIXED_ADAM, unit=0)
    assert m.states == 16e9 / 64 and m.buffers == 2e9 / 8
