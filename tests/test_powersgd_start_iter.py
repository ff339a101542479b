"""PowerSGD's start_powerSGD_iter: plain all-reduces first, then compression from the same state a fresh start has.

torch's powerSGD_hook all-reduces the uncompressed bucket for its first `start_powerSGD_iter` iterations and keeps
no error memory from them; `PowerSGD(start_iter=k)` (config `powersgd_start_iter`) does the same. Checked on the
compressor alone, through error feedback, in a DDP run, and against torch's hook on 2 gloo processes.
"""
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lab.comm import Ledger, SimulatedCollective
from lab.compress import PowerSGD, make_feedback
from lab.experiment import ExperimentConfig, run
from lab.launch import free_port
from lab.topology import preset

SHAPES = [(16, 12), (12,), (8, 16)]
D = sum(torch.Size(s).numel() for s in SHAPES)  # 332


def collective(n: int = 4):
    return SimulatedCollective(world_size=n, ledger=Ledger(preset("nvlink_node", n)))


def vectors(count: int, n: int = 4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, D, generator=g) for _ in range(count)]


def test_warm_up_calls_all_reduce_the_whole_vector_then_compression_starts_fresh():
    coll = collective()
    warm, fresh = PowerSGD(shapes=SHAPES, rank=2, start_iter=2), PowerSGD(shapes=SHAPES, rank=2)
    vs = vectors(3)
    for v in vs[:2]:
        local, mean = warm.reduce(v, coll, tag="g")
        assert torch.equal(local, v) and torch.allclose(mean, v.mean(0), atol=1e-6)
        assert warm.last_nbytes == 4 * D and not warm.error_vs_aggregate
    assert [(e.op, e.tag, e.payload_bytes) for e in coll.ledger.entries] == [("all_reduce", "g:warmup", 4 * D)] * 2
    a, b = warm.reduce(vs[2], coll, tag="g"), fresh.reduce(vs[2], coll, tag="g")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the same Q from the shared seed
    assert warm.error_vs_aggregate and warm.last_nbytes < 4 * D


def test_error_feedback_keeps_nothing_from_the_warm_up():
    coll = collective()
    comp = PowerSGD(shapes=SHAPES, rank=1, start_iter=3)
    fb = make_feedback("ef", comp)
    for t, v in enumerate(vectors(4)):
        p = fb.prepare(v)
        local, agg = comp.reduce(p, coll, tag="g")
        fb.commit(p, local, agg)
        if t < 3:
            assert torch.count_nonzero(fb.residual) == 0  # as torch: no error memory before compressing
    assert torch.count_nonzero(fb.residual) > 0  # rank 1 of 16 x 12 loses something once it compresses


def test_a_ddp_run_equals_uncompressed_ddp_during_the_warm_up():
    base = dict(technique="ddp", num_workers=4, steps=3, eval_every=3)
    dense = run(ExperimentConfig(**base), save=False, progress=False)
    warm = run(ExperimentConfig(compressor="powersgd", compression_ratio=0.1, powersgd_start_iter=3, **base),
               save=False, progress=False)
    assert torch.allclose(dense.model, warm.model, atol=1e-6, rtol=0)
    assert all(t.endswith(":warmup") for t in warm.ledger.tag) and len(warm.ledger) == 3
    assert (warm.ledger.payload_bytes == 4 * dense.model.numel()).all()  # one dense fp32 all-reduce per step
    with pytest.raises(ValueError, match="powersgd_start_iter=-1"):
        PowerSGD(shapes=SHAPES, rank=2, start_iter=-1)
    with pytest.raises(ValueError, match="powersgd_start_iter=3 is not read"):
        ExperimentConfig(**base, powersgd_start_iter=3)


# ---- against torch's hook on gloo ---------------------------------------------------------------------
START, RANK = 10, 2


def _worker(rank: int, port: int, out: str):
    from test_ddp_hook import train
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    from lab.compress.ddp_hook import ddp_comm_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    try:
        def torch_hook(model):
            state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=RANK,
                                       start_powerSGD_iter=START, use_error_feedback=True, warm_start=True)
            model.register_comm_hook(state, psgd.powerSGD_hook)
            return state

        def lab_hook(model):
            state, hook = ddp_comm_hook(PowerSGD(rank=RANK, start_iter=START), error_feedback="ef")
            model.register_comm_hook(state, hook)
            return state

        torch_loss, _ = train(rank, torch_hook)
        lab_loss, state = train(rank, lab_hook)
        torch.save({"torch": torch_loss, "lab": lab_loss, "ledger": state.ledger.table()},
                   os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.gloo
@pytest.mark.slow
def test_commlab_start_iter_matches_torchs_start_powersgd_iter():
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
        results = [torch.load(os.path.join(out, f"{r}.pt"), weights_only=False) for r in range(2)]
    for r in results:
        assert r["torch"] < 0.5 * math.log(10) and r["lab"] < 0.5 * math.log(10)  # both trained
        assert abs(r["lab"] - r["torch"]) / r["torch"] < 0.02
    table = results[0]["ledger"]
    warm = table[table.tag == "bucket0:warmup"]
    assert list(warm.step) == list(range(START)) and (warm.payload_bytes == 4 * 4810).all()
    assert table[table.tag == "bucket0:P"].step.min() == START
