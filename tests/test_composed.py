"""Composed runs: sharding inside replicas, a sync technique across them, a compressor, a topology — exact where
it must be (H = 1, no compression, any S equals DDP within 1e-6), bytes per link class equal to the analytic
prediction (lab.sharding.composed), memory per rank as the memory model says, and every knob the combination
does not read refused."""
import pytest
import torch

from lab.config import ExperimentConfig, is_read
from lab.experiment import build_context, run
from lab.registry import technique as technique_class
from lab.sharding.composed import composed_calls, predict_for_config, predict_memory
from lab.sharding.memory import lab_memory
from lab.topology import preset

P = 4
BASE = dict(num_workers=P, steps=6, eval_every=3, batch_size=16, lr=0.01)
#: the issue's composed run: Local SGD H=8, top-k 0.1, ZeRO-2 S=4, 2 nodes x 4 ranks
COMPOSED = dict(technique="local_sgd", num_workers=8, topology="multinode_2x4", sync_period=8, steps=16,
                eval_every=8, batch_size=16, compressor="topk", compression_ratio=0.1, zero_stage=2,
                sharding_degree=4)


def quiet(cfg):
    return run(cfg, save=False, progress=False)


@pytest.fixture(scope="module")
def ddp_adamw():
    return quiet(ExperimentConfig(technique="ddp", optimizer="adamw", **BASE))


@pytest.fixture(scope="module")
def ddp_sgd():
    return quiet(ExperimentConfig(technique="ddp", optimizer="sgd", **{**BASE, "lr": 0.1}))


def _close(a, b):
    return float((a.worker_params - b.worker_params).abs().max()), float((a.model - b.model).abs().max())


# ---- exactness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s,stage", [(1, 3), (2, 1), (2, 2), (2, 3), (4, 2), (4, 3)])
def test_h1_uncompressed_ddp_with_any_sharding_equals_ddp(ddp_adamw, s, stage):
    # AdamW: the sharded optimizer steps on the gradient averaged over all P ranks, as DDP's does (1e-6)
    cfg = ExperimentConfig(technique="ddp", optimizer="adamw", sharding_degree=s, **BASE,
                           **({"zero_stage": stage} if s > 1 else {}))
    r = quiet(cfg)
    assert r.status == "finished"
    params, model = _close(r, ddp_adamw)
    assert params <= 1e-6 and model <= 1e-6, (s, stage, params, model)


@pytest.mark.parametrize("s,stage", [(1, 3), (2, 2), (4, 1), (4, 3)])
def test_h1_uncompressed_local_sgd_with_any_sharding_equals_ddp(ddp_sgd, s, stage):
    # plain SGD: averaging the replicas' parameters after one step is averaging their gradients (1e-6)
    cfg = ExperimentConfig(technique="local_sgd", optimizer="sgd", sync_period=1, sharding_degree=s,
                           **{**BASE, "lr": 0.1}, **({"zero_stage": stage} if s > 1 else {}))
    params, model = _close(quiet(cfg), ddp_sgd)
    assert params <= 1e-6 and model <= 1e-6, (s, stage, params, model)


def test_zero_is_ddp_across_replicas_through_the_same_sharded_step():
    kw = dict(optimizer="adamw", sharding_degree=2, zero_stage=3, **BASE)
    z, d = quiet(ExperimentConfig(technique="zero", **kw)), quiet(ExperimentConfig(technique="ddp", **kw))
    assert torch.equal(z.worker_params, d.worker_params) and torch.equal(z.model, d.model)
    assert z.ledger.equals(d.ledger)  # the same collectives, tags and bytes


# ---- the composed run: bytes per link class against the prediction --------------------------------
@pytest.fixture(scope="module")
def composed():
    cfg = ExperimentConfig(**COMPOSED)
    ctx, _ = build_context(cfg)
    return cfg, quiet(cfg), ctx.cluster.dim, tuple(ctx.cluster.numels)


def test_composed_run_bytes_per_link_class_equal_the_prediction(composed):
    cfg, r, d, numels = composed
    assert r.status == "finished" and r.metrics.loss.iloc[-1] < r.metrics.loss.iloc[0]
    predicted = predict_for_config(cfg, num_params=d, numels=numels)
    for cls in ("intra", "inter", "uplink", "downlink"):
        assert r.ledger[f"bytes_{cls}"].sum() == predicted[cls] * cfg.steps, cls
    # shards inside a node, replicas across nodes: sharding is all intra-node, the sync all inter-node
    led = r.ledger
    inner, sync = led[led.tag.isin(["grads", "params"])], led[led.tag == "pseudo_grad"]
    assert inner.bytes_inter.sum() == 0 and sync.bytes_intra.sum() == 0 and sync.bytes_inter.sum() > 0
    assert len(sync) == cfg.steps // cfg.sync_period and set(sync.algorithm) == {"two_phase[4x2]"}
    # each rank sends its shard's compressed pseudo-gradient: about 0.1 of the dense exchange of d/S values
    assert r.metrics.traffic_ratio.iloc[-1] == pytest.approx(0.1, rel=0.05)
    assert "S=4 ZeRO-2" in technique_class("local_sgd").describe(cfg)


@pytest.mark.parametrize("kw", [
    dict(technique="ddp", num_workers=8, topology="multinode_2x4", steps=3, compressor="topk", compression_ratio=0.1,
         zero_stage=3, sharding_degree=2, grad_clip=1.0),
    dict(technique="diloco", num_workers=8, topology="multinode_4x8", sync_period=2, steps=4, compressor="qsgd",
         compression_ratio=0.1, zero_stage=3, sharding_degree=2, zeropp="qwz+hpz"),
    dict(technique="streaming_diloco", num_workers=8, topology="multinode_2x4", sync_period=4, steps=4,
         num_fragments=2, fragment_pattern="contiguous", outer_bits=8, zero_stage=2, sharding_degree=4),
    dict(technique="local_sgd", num_workers=8, topology="multinode_2x4", sync_period=2, steps=4, compressor="topk",
         compression_ratio=0.1, compress_algorithm="all_gather", zero_stage=1, sharding_degree=2),
    dict(technique="local_sgd", num_workers=4, sync_period=2, steps=4, compressor="topk", compression_ratio=0.05),
    dict(technique="zero", num_workers=8, topology="multinode_2x4", steps=2, zero_stage=3, sharding_degree=4,
         zeropp="qwz"),
], ids=["ddp-topk-S2-stage3-clip", "diloco-qsgd-qwz-hpz", "streaming-int8-fragments", "local_sgd-allgather-S2",
        "local_sgd-unsharded", "zero-qwz"])
def test_other_combinations_match_their_prediction(kw):
    cfg = ExperimentConfig(eval_every=100, batch_size=16, **kw)
    r = quiet(cfg)
    ctx, _ = build_context(cfg)
    predicted = predict_for_config(cfg, num_params=ctx.cluster.dim, numels=tuple(ctx.cluster.numels))
    for cls in ("intra", "inter"):
        assert r.ledger[f"bytes_{cls}"].sum() == predicted[cls] * cfg.steps, cls


def test_prediction_is_analytic_and_follows_each_knob():
    t = preset("multinode_2x4", 8)
    kw = dict(technique="local_sgd", num_params=1_000_000, topology=t, sharding_degree=4, zero_stage=2,
              sync_period=8, compressor="topk", compression_ratio=0.1)
    rows = composed_calls(**kw)
    inter = sum(r["inter"] / r["every"] for r in rows)
    assert {r["tag"] for r in rows} == {"grads", "params", "pseudo_grad"}
    assert inter == pytest.approx(sum(r["inter"] for r in composed_calls(**{**kw, "sync_period": 1})) / 8)
    dense = sum(r["inter"] for r in composed_calls(**{**kw, "compressor": "none"}) if r["tag"] == "params")
    assert inter * 8 == pytest.approx(0.1 * dense, rel=0.02)  # the traffic ratio, on the links it crosses
    # each rank syncs its d/S values with R - 1 counterparts (S = 4, R = 2), against d values with P - 1 others
    d, sync = 1_000_000, lambda rows: sum(r["intra"] + r["inter"] for r in rows if r["tag"] == "pseudo_grad")
    assert sync(rows) == pytest.approx(8 * 0.1 * 2 * (1 / 2) * 4 * d / 4, rel=0.02)
    assert sync(composed_calls(**{**kw, "sharding_degree": 1})) == pytest.approx(8 * 0.1 * 2 * (7 / 8) * 4 * d,
                                                                                 rel=0.02)


# ---- memory ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("technique,stage", [("local_sgd", 2), ("diloco", 3), ("ddp", 1)])
def test_memory_per_rank_follows_the_memory_model(technique, stage):
    extra = {"sync_period": 2} if technique != "ddp" else {}
    cfg = ExperimentConfig(technique=technique, num_workers=P, sharding_degree=2, zero_stage=stage,
                           optimizer="adamw", steps=2, batch_size=8, **extra)
    ctx, _ = build_context(cfg)
    t = technique_class(technique)(cfg)
    t.setup(ctx)
    t.round(ctx)
    d = ctx.cluster.dim
    sharded = lab_memory(d, stage, 2, optimizer="adamw")
    assert {k: v for k, v in t.memory.items() if k != "sync"} == \
        {k: int(getattr(sharded, k)) for k in ("params", "grads", "optimizer", "buffers")}
    assert t.memory["sync"] == predict_memory(d, technique=technique, zero_stage=stage, sharding_degree=2)["sync"]


# ---- what the combination does not read is refused -----------------------------------------------------------
@pytest.mark.parametrize("kw,field", [
    (dict(technique="ddp", zero_stage=2), "zero_stage"),  # no sharding: the stage is not read
    (dict(technique="local_sgd", zeropp="qwz"), "zeropp"),
    (dict(technique="ddp", sharding_degree=2, overlap=True), "overlap"),
    (dict(technique="dpsgd", sharding_degree=2), "sharding_degree"),  # gossip does not compose with sharding
    (dict(technique="local_sgd", sharding_degree=2, compressor="powersgd", compression_ratio=0.1), "compressor"),
    (dict(technique="local_sgd", sharding_degree=4, compressor="topk", compression_ratio=0.1), "compressor"),
    (dict(technique="diloco", sharding_degree=2, zeropp="qgz"), "zeropp"),
    (dict(technique="diloco", sharding_degree=2, zero_stage=2, zeropp="qwz"), "zeropp"),
    (dict(technique="local_sgd", sharding_degree=2, zeropp="hpz", hpz_size=4), "hpz_size"),
    (dict(technique="local_sgd", sharding_degree=2, compressor="topk", compression_ratio=0.1,
          compress_algorithm="star"), "compress_algorithm"),
    (dict(technique="streaming_diloco", sharding_degree=2, sync_period=4, num_fragments=2), "fragment_pattern"),
    (dict(technique="local_sgd", sharding_degree=3), "sharding_degree"),
    (dict(technique="ddp", sharding_degree=2, topology="phones"), "sharding_degree"),
])
def test_what_the_combination_does_not_read_is_refused(kw, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        ExperimentConfig(num_workers=P, **kw)


def test_reasons_for_the_dashboard():
    plain = ExperimentConfig(technique="local_sgd", num_workers=P)
    ok, why = is_read(plain, "zero_stage")
    assert not ok and "sharding_degree > 1" in why
    sharded = ExperimentConfig(technique="local_sgd", num_workers=P, sharding_degree=2)
    assert is_read(sharded, "zero_stage")[0] and is_read(sharded, "zeropp")[0]
    assert not is_read(sharded, "reduce_levels")[0]  # ZeRO's hierarchical reduction is over all ranks
    assert plain.as_technique("fedavg").technique == "fedavg"  # sharding knobs are dropped where not read
