"""The planner: its step schedule is what the ZeRO technique sends, and for a 7B model on 4 nodes × 8 ranks
with 80 GB per rank its top choice fits."""
import pytest

from lab import topology as topo
from lab.comm.collective import group_cost
from lab.experiment import ExperimentConfig, run
from lab.sharding.memory import MODEL_SHAPES, zero_memory
from lab.sharding.options import parse_zeropp
from lab.sharding.planner import Candidate, evaluate, plan, step_collectives


@pytest.mark.parametrize("kw", [
    dict(num_workers=4, zero_stage=1), dict(num_workers=4, zero_stage=2, sharding_degree=2),
    dict(num_workers=4, zero_stage=3), dict(num_workers=8, zero_stage=3, sharding_degree=4),
    dict(num_workers=8, zero_stage=3, zeropp="hpz", topology="multinode_4x8"),
    dict(num_workers=8, zero_stage=3, zeropp="qwz+qgz", topology="multinode_4x8"),
    dict(num_workers=8, zero_stage=3, zeropp="qwz+hpz+qgz", topology="multinode_4x8", sharding_degree=0),
], ids=str)
def test_schedule_is_what_the_technique_sends(kw):
    cfg = ExperimentConfig(technique="zero", steps=1, **kw)
    r = run(cfg, save=False, progress=False)
    t = topo.preset(cfg.topology, cfg.num_workers)
    flags = parse_zeropp(cfg.zeropp)
    calls = step_collectives(4810, cfg.num_workers, stage=cfg.zero_stage,
                             sharding_degree=cfg.sharding_degree or cfg.num_workers, ranks_per_node=t.ranks_per_node,
                             hpz_size=t.ranks_per_node if "hpz" in flags else 0, qwz="qwz" in flags,
                             qgz="qgz" in flags, param_bytes=4, grad_bytes=4, quant_block=cfg.quant_block)
    predicted = {}
    for c in calls:
        cost = group_cost(t, c.op, int(c.payload), c.groups or [list(range(cfg.num_workers))])
        for cls in ("intra", "inter"):
            predicted[(c.tag, cls)] = predicted.get((c.tag, cls), 0) + int(cost.bytes[cls].sum())
    led = r.ledger.groupby("tag")[["bytes_intra", "bytes_inter"]].sum()
    sent = {(tag, cls): int(led.loc[tag, f"bytes_{cls}"]) for tag in led.index for cls in ("intra", "inter")}
    assert sent == predicted


def test_top_choice_for_7b_on_4x8_with_80gb_fits():
    shape, t = MODEL_SHAPES["llama2-7b"], topo.preset("multinode_4x8", 32)
    df = plan(shape, t, memory_cap=80e9)
    top = df.iloc[0]
    assert top.fits and top.memory_gb <= 80
    assert not df.fits.all()  # the cap matters: plain DDP (16 bytes per parameter, 108 GB of states) does not fit
    ddp = df[(df.stage == 0)]
    assert (ddp.states_gb > 80).all() and not ddp.fits.any()
    # the top choice is the fastest that fits, and its memory is the memory model's
    assert top.step_s == df[df.fits].step_s.min()
    mem = zero_memory(shape, int(top.stage), int(top.sharding_degree), hpz_size=int(top.hpz_size))
    assert top.states_gb == pytest.approx(mem.states / 1e9)


def test_time_and_bytes_respond_to_the_knobs():
    shape, t = MODEL_SHAPES["llama2-7b"], topo.preset("multinode_4x8", 32)
    ev = lambda **kw: evaluate(shape, t, Candidate(**kw), memory_cap=80e9)  # noqa: E731
    z3 = ev(stage=3, sharding_degree=32)
    assert ev(stage=3, sharding_degree=32, hpz_size=8)["bytes_inter"] < z3["bytes_inter"]
    assert ev(stage=3, sharding_degree=32, qwz=True, qgz=True)["bytes_inter"] < z3["bytes_inter"]
    # stage 3 moves 1.5x the bytes of stages 1-2, which move what DDP moves
    z1, ddp = ev(stage=1, sharding_degree=32), ev(stage=0, sharding_degree=1)
    total = lambda e: e["bytes_intra"] + e["bytes_inter"]  # noqa: E731
    assert total(z3) / total(z1) == pytest.approx(1.5, rel=0.02)
    assert total(z1) == pytest.approx(total(ddp), rel=0.02)
    # the step is never shorter than its compute, and full recomputation costs compute
    assert z3["step_s"] >= z3["compute_s"]
    assert ev(stage=3, sharding_degree=32, recompute="full")["compute_s"] > z3["compute_s"]
    assert ev(stage=3, sharding_degree=32, recompute="full")["activations_gb"] < z3["activations_gb"]


def test_bad_cap_is_a_clear_error():
    with pytest.raises(ValueError, match="memory_cap"):
        plan(MODEL_SHAPES["gpt2-124m"], topo.preset("nvlink_node", 8), memory_cap=0)
