"""The MoE training techniques: expert parallelism trains the same model as replicated experts (moe_dp) and FSSDP,
sends fewer bytes than replicating the experts, learns the character corpus, and refuses bad settings before it
allocates anything; the simulated run equals the run on 4 gloo processes."""
import numpy as np
import pytest

from lab.config import ExperimentConfig
from lab.experiment import run

BASE = dict(num_workers=4, model="mlp", dataset="digits", num_experts=4, steps=6, eval_every=6, optimizer="adamw",
            lr=0.01, batch_size=8)


def metrics(technique, **kw):
    r = run(ExperimentConfig(technique=technique, **{**BASE, **kw}), save=False, progress=False)
    return r, r.metrics


@pytest.mark.parametrize("other", ["moe_dp", "fssdp"])
def test_expert_parallel_training_equals_other_expert_layouts(other):
    ep, m_ep = metrics("moe_ep")
    ot, m_ot = metrics(other)
    assert np.allclose(m_ep.loss, m_ot.loss, atol=1e-5)  # fp32; only summation order differs (E1)
    assert (ep.model - ot.model).abs().max() <= 1e-4  # after 6 AdamW steps
    assert m_ep.aux_loss.iloc[-1] == pytest.approx(m_ot.aux_loss.iloc[-1], abs=1e-5)
    if other == "moe_dp":  # replicating the experts all-reduces their gradients: more bytes than moving tokens
        assert m_ep.bytes.iloc[-1] < m_ot.bytes.iloc[-1]
        assert m_ot.load_imbalance.eq(1.0).all() and m_ep.load_imbalance.ge(1.0).all()


def test_capacity_drops_tokens_and_reports_them():
    _, dropless = metrics("moe_ep")
    _, tight = metrics("moe_ep", capacity_factor=0.5)
    assert dropless.dropped_fraction.eq(0).all()
    assert tight.dropped_fraction.gt(0).all() and tight.dropped_fraction.le(1).all()
    assert tight.moe_bytes.iloc[-1] < dropless.moe_bytes.iloc[-1]  # dropped tokens are not sent


def test_moe_gpt_learns_the_corpus():
    r, m = metrics("moe_ep", model="gpt", dataset="chars", steps=25, eval_every=25, batch_size=4, lr=0.01)
    assert r.status == "finished"
    assert m.loss.iloc[-1] < m.loss.iloc[0] - 0.5  # from ~ln(vocab)
    assert m.eval_loss.iloc[-1] < m.eval_loss.dropna().iloc[0] + 1e-9


@pytest.mark.parametrize("kw,field", [
    (dict(technique="moe_ep", num_experts=6), "num_experts"),  # not a multiple of the 4 ranks
    (dict(technique="moe_ep", top_k=8), "top_k"),
    (dict(technique="moe_ep", model="cnn"), "model"),
    (dict(technique="moe_ep", optimizer="adam_mini"), "optimizer"),
    (dict(technique="fssdp", num_experts=16, fssdp_slots=3), "fssdp_slots"),  # 4 ranks x 3 slots < 16 experts
    (dict(technique="ppmoe", tp_size=3), "tp_size"),
    (dict(technique="ddp", num_experts=16), "num_experts"),  # a knob DDP does not read
    (dict(technique="moe_ep", capacity_factor=float("nan")), "capacity_factor"),
])
def test_bad_settings_are_refused_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ExperimentConfig(**{**BASE, **kw})


@pytest.mark.gloo
@pytest.mark.slow
def test_expert_parallel_training_on_gloo_equals_simulated():
    from lab.launch import compare_with_simulated

    eq = compare_with_simulated(ExperimentConfig(technique="moe_ep", **{**BASE, "steps": 3, "eval_every": 3}))
    assert eq.holds(atol=1e-5), eq
