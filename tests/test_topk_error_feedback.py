"""Top-k alone stalls or diverges across heterogeneous workers; with error feedback it converges.

The problem is the spec's three-client counterexample (sync_and_compression.md §B1,
Appendix A.1): f_i(x) = (a_i·x)² + ½||x||², a least-squares objective with optimum 0;
distributed gradient descent (step 0.05, 300 steps, float64) averaging each client's
Top-1 gradient through a compressed channel (packets all-gathered, decoded in rank order: the algorithm is
pinned to 'all_gather', since two-phase would compress each client's 3 coordinates in 3 one-value chunks).
"""
import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.compress import Channel, EControl, TopK, make_feedback
from lab.topology import preset

A = torch.tensor([[-3.0, 2, 2], [2, -3, 2], [2, 2, -3]], dtype=torch.float64)


def distributed_gd(feedback: str, steps: int = 300, lr: float = 0.05, eta: float = 0.2) -> float:
    comp = TopK(k=1)
    fb = EControl(comp, eta=eta) if feedback == "econtrol" else make_feedback(feedback, comp)  # eta=0.0 is EF21
    channel = Channel(comp, fb)
    topology = preset("nvlink_node", 3).pin({"compressed_all_reduce": "all_gather"})
    coll = SimulatedCollective(world_size=3, ledger=Ledger(topology))
    x = torch.ones(3, dtype=torch.float64)
    for _ in range(steps):
        g = 2 * (A @ x).unsqueeze(1) * A + x  # (3 clients, d) gradients at the shared x
        x = x - lr * channel.all_reduce_mean(g, coll, tag="grads")[0]
    return float(x.norm())


def test_top1_without_feedback_does_not_converge():
    assert distributed_gd("none") > 1.0


@pytest.mark.parametrize("feedback", ["ef", "ef21", "econtrol"])
def test_top1_with_error_feedback_converges(feedback):
    # spec Appendix A.1 (eta = 0.2 for EControl): ~3e-13 (EF), ~9e-13 (EF21), ~3e-11 (EControl)
    assert distributed_gd(feedback) < 1e-8


def test_econtrol_with_eta_zero_is_ef21():
    assert distributed_gd("econtrol", steps=50, eta=0.0) == distributed_gd("ef21", steps=50)


def test_topk_round_trip_keeps_the_largest_entries_and_measures_its_bytes():
    v = torch.tensor([[0.1, -5.0, 0.2, 3.0, 0.0, -0.3, 0.05, 1.0]])
    comp = TopK(k=2)
    pkt = comp.compress(v)
    assert torch.equal(comp.decompress(pkt), torch.tensor([[0, -5.0, 0, 3.0, 0, 0, 0, 0]]))
    assert pkt.nbytes() == 2 * 4 + 1  # a 1-byte bitmap beats two int32 indices
    assert TopK(k=2).compress(torch.randn(1, 1000)).nbytes() == 2 * 4 + 2 * 4  # here indices are smaller


def test_topk_switches_to_a_bitmap_when_it_is_smaller_and_decodes_exactly():
    v = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    comp = TopK(ratio=0.6)
    pkt = comp.compress(v)
    assert "bitmap" in pkt.tensors
    k = pkt.meta["k"]
    assert pkt.nbytes() == 4 * k + 125 <= 0.6 * 4000
    dec = comp.decompress(pkt)
    kept = v.abs().topk(k, dim=1).indices
    assert torch.equal(dec.gather(1, kept), v.gather(1, kept))
    assert int((dec != 0).sum(1).max()) == k


def test_payload_ratio_is_packet_bytes_over_dense_bytes():
    v = torch.randn(2, 10_000)
    comp = TopK(ratio=0.01)
    pkt = comp.compress(v)
    assert comp.payload_ratio(pkt, 10_000) == pkt.nbytes() / 40_000
    assert 0.0099 <= comp.payload_ratio(pkt, 10_000) <= 0.01
