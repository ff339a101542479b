"""Streaming DiLoCo: DiLoCo as a special case, 1/P of the bytes per sync, packed 4-bit outer gradients, the
overlap on the simulated clock, the loss on the character LM, and gloo equivalence."""
import math

import pytest
import torch

from lab.experiment import ExperimentConfig, run
from lab.launch import compare_with_simulated
from lab.sync.streaming_diloco import fragment_slices

DIGITS = dict(num_workers=4, steps=40, sync_period=8, optimizer="adamw", lr=3e-3, eval_every=40)
# the character LM: d = 111690 = 3 x 37230, so three fragments are exactly a third each
LM = dict(num_workers=4, steps=45, sync_period=15, dataset="chars", model="gpt", optimizer="adamw", lr=3e-3,
          batch_size=8, eval_every=60, topology="wan_sites")


def quick(**kw):
    return run(ExperimentConfig(**kw), save=False, progress=False)


def sync_bytes(r):
    """Bytes all ranks sent in each sync (one Ledger entry per all-reduce / all-gather)."""
    return r.ledger.filter(like="bytes_").sum(axis=1)


@pytest.fixture(scope="module")
def lm_runs():
    return {"diloco": quick(technique="diloco", **LM),
            "stream": quick(technique="streaming_diloco", num_fragments=3, overlap_steps=1, **LM),
            "stream4": quick(technique="streaming_diloco", num_fragments=3, overlap_steps=2, outer_bits=4, **LM)}


def test_one_fragment_no_overlap_no_merge_full_precision_is_diloco_bit_for_bit():
    a = quick(technique="diloco", **DIGITS)
    b = quick(technique="streaming_diloco", num_fragments=1, overlap_steps=0, merge_alpha=0.0, **DIGITS)
    assert torch.equal(a.model, b.model) and torch.equal(a.worker_params, b.worker_params)
    assert a.ledger.payload_bytes.tolist() == b.ledger.payload_bytes.tolist()


def test_fragments_cut_the_row_into_near_equal_slices_synced_at_staggered_steps():
    sl = fragment_slices(10, 3)
    assert [(s.start, s.stop) for s in sl] == [(0, 3), (3, 7), (7, 10)]
    r = quick(technique="streaming_diloco", num_fragments=4, **{**DIGITS, "steps": 32})
    # H = 8, P = 4: offsets 2, 4, 6, 8, so one fragment every 2 steps after step 2
    assert r.metrics.fragment.tolist() == [0, 1, 2, 3] * 4
    assert sorted(set(r.ledger.step)) == list(range(1, 32, 2))  # the ledger step is the step just taken


def test_each_sync_sends_a_third_and_the_total_equals_diloco(lm_runs):
    d = lm_runs["diloco"].model.numel()
    assert d % 3 == 0
    dil, stream = sync_bytes(lm_runs["diloco"]), sync_bytes(lm_runs["stream"])
    assert stream.max() * 3 <= dil.max()  # at most 1/P of DiLoCo's bytes in any single sync
    assert stream.sum() == dil.sum()  # the same total
    assert len(stream) == 3 * len(dil)


def test_four_bit_outer_gradients_send_a_quarter_of_the_fp32_bytes_counted_from_packed_payloads(lm_runs):
    full, q4 = sync_bytes(lm_runs["stream"]).sum(), sync_bytes(lm_runs["stream4"]).sum()
    payload = lm_runs["stream4"].ledger.payload_bytes
    d_p = 111690 // 3
    assert (payload == math.ceil(d_p / 2) + 4 * math.ceil(d_p / 256)).all()  # 4-bit codes + one fp32 scale per 256
    # 4 workers: an all-gather of 4-bit codes (3 x d/2 bytes per rank) against a ring all-reduce of fp32 (1.5 x 4d)
    assert 0.25 <= q4 / full <= 0.25 * (1 + 0.035)  # + the block scales
    assert lm_runs["stream4"].metrics.measured_ratio.iloc[-1] == pytest.approx(payload.iloc[0] / (4 * d_p))


def test_streaming_ends_within_five_percent_of_diloco_loss_on_the_character_lm(lm_runs):
    ref = lm_runs["diloco"].summary()["eval_loss"]
    assert ref < 3.0  # it trained (a uniform guess over the vocabulary is about 4.1)
    for key in ("stream", "stream4"):
        assert abs(lm_runs[key].summary()["eval_loss"] - ref) <= 0.05 * ref, key


def test_overlap_hides_communication_behind_tau_steps_of_compute(lm_runs):
    r = lm_runs["stream4"]
    m = r.metrics
    # the clock's makespan: compute + communication - what ran behind compute (equal rank speeds; float rounding)
    expected = m.compute_seconds + m.comm_seconds - m.comm_hidden_seconds
    assert ((m.sim_seconds - expected).abs() <= 1e-9 * expected).all()
    assert m.sim_seconds.iloc[-1] < m.compute_seconds.iloc[-1] + m.comm_seconds.iloc[-1]
    step_s = m.compute_seconds.iloc[0] / m.step.iloc[0]
    per_sync = r.ledger.seconds
    last = r.ledger.step.max()
    hidden = sum(min(s, 2 * step_s) for s, t in zip(per_sync, r.ledger.step) if t < last)
    # the last sync ends training: nothing is left to overlap with, so it is not counted
    assert m.comm_hidden_seconds.iloc[-1] == pytest.approx(hidden, rel=1e-9)
    assert m.comm_hidden_seconds.iloc[-1] > 0
    assert (lm_runs["stream"].metrics.comm_hidden_seconds > 0).any()


def test_invalid_fragment_and_overlap_settings_are_refused():
    with pytest.raises(ValueError, match="num_fragments=9 .*at most sync_period=8"):
        ExperimentConfig(technique="streaming_diloco", num_fragments=9, sync_period=8)
    with pytest.raises(ValueError, match="overlap_steps=4 .*fewer than sync_period/num_fragments = 4"):
        ExperimentConfig(technique="streaming_diloco", num_fragments=2, sync_period=8, overlap_steps=4)


@pytest.mark.gloo
def test_streaming_diloco_on_four_gloo_processes_equals_the_simulated_run():
    cfg = ExperimentConfig(technique="streaming_diloco", num_fragments=2, overlap_steps=1, outer_bits=4,
                           **{**DIGITS, "steps": 24, "eval_every": 8})
    eq = compare_with_simulated(cfg, columns=("step", "round", "bytes", "sim_seconds", "comm_hidden_seconds"))
    assert eq.holds(atol=1e-6), eq
