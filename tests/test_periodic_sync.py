"""The periodic-sync base: Local SGD, QSR, DiLoCo, Streaming DiLoCo, D-PSGD and DIMAT share one round
(period() local steps, then sync()), one sync_period knob and one compressed path."""
import pytest
import torch

from lab import registry
from lab.config import KNOBS
from lab.experiment import ExperimentConfig, build_context, run
from lab.sync.local_sgd import LocalSGD
from lab.sync.periodic import PeriodicSync
from lab.sync.qsr import QSR

PERIODIC = ("local_sgd", "qsr", "diloco", "streaming_diloco", "dpsgd", "dimat")


def quick(**kw):
    return run(ExperimentConfig(**kw), save=False, progress=False)


@pytest.mark.parametrize("name", PERIODIC)
def test_every_periodic_technique_is_on_the_base_and_reads_its_one_sync_period_knob(name):
    cls = registry.technique(name)
    assert issubclass(cls, PeriodicSync)
    assert "sync_period" in cls.read_fields() and "sync_period" in cls.label_fields()
    assert cls.declared_knobs()["sync_period"] is PeriodicSync.knobs["sync_period"] is KNOBS["sync_period"]


def test_qsr_overrides_only_its_period_rule_and_inherits_compression():
    assert {k for k in vars(QSR) if callable(vars(QSR)[k])} == {"period"}
    assert QSR.compressor_path == LocalSGD.compressor_path == "pseudo_gradient"


@pytest.mark.parametrize("name,op", [("local_sgd", "all_reduce"), ("diloco", "all_reduce"), ("dpsgd", "mix")])
def test_a_round_is_period_local_steps_then_one_sync_the_last_cut_to_the_steps_left(name, op):
    r = quick(technique=name, num_workers=4, steps=20, sync_period=8, eval_every=20)
    assert r.metrics.step.tolist() == [8, 16, 20]
    assert r.metrics.sync_period.tolist() == [8, 8, 4]
    assert r.ledger.step.tolist() == [7, 15, 19] and set(r.ledger.op) == {op}  # after the round's last step


def test_sync_first_opens_the_round_instead_of_closing_it():
    class MergeThenTrain(LocalSGD):  # what a merge-then-train technique (e.g. DIMAT's schedule) declares
        sync_first = True

    cfg = ExperimentConfig(technique="local_sgd", num_workers=4, steps=8, sync_period=4)
    results = {}
    for cls in (LocalSGD, MergeThenTrain):
        ctx, _ = build_context(cfg)
        tech = cls(cfg)
        tech.setup(ctx)
        tech.round(ctx)
        rows = ctx.cluster.params.detach()
        agree = torch.equal(rows, rows[:1].expand_as(rows))
        results[cls] = (len(ctx.ledger.entries), ctx.ledger.entries[0].step, agree)
    assert results[LocalSGD] == (1, 3, True)  # trained 4 steps, then averaged: the workers agree
    assert results[MergeThenTrain] == (1, 0, False)  # averaged first, then trained apart


@pytest.mark.parametrize("name", ["local_sgd", "qsr", "diloco"])
def test_the_compressed_path_goes_through_the_channel_and_is_labelled(name):
    cfg = ExperimentConfig(technique=name, num_workers=4, steps=16, sync_period=8, eval_every=16, compressor="int8")
    dense = quick(**{**cfg.to_dict(), "compressor": "none"})
    r = run(cfg, save=False, progress=False)
    assert r.summary()["bytes"] < dense.summary()["bytes"]
    assert "payload_ratio" in r.metrics and (r.metrics.payload_ratio < 0.3).all()
    assert "payload_ratio" not in dense.metrics
    assert "int8" in registry.technique(name).describe(cfg)


@pytest.mark.parametrize("name", ["dpsgd", "dimat"])
def test_a_compressor_is_refused_where_the_technique_has_no_compressed_path(name):
    with pytest.raises(ValueError, match=f"compressor='topk' is not read: technique='{name}'"):
        ExperimentConfig(technique=name, compressor="topk", compression_ratio=0.1)
