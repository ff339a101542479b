"""Every compressor round-trips within its stated error, unbiased ones are unbiased, and the ratio is measured.

Stated errors (module docstrings): fp16/bf16 relative rounding 2^-11 / 2^-8; int8/int4 |e| <= scale/2;
top-k keeps its k entries exactly; random-k the seed's k entries (times d/k when scaled); QSGD |e_i| <= norm/s;
scaled sign is (||v||₁/d)·sign(v); PowerSGD is exact on a rank-r matrix after warm-started steps; FedZip decodes
to its quantized vector bit for bit; 3SFC's least-squares scale gives ||C(v) - v||² = (1 - cos²)||v||².
"""
import math

import pytest
import torch

from lab.compress import (
    QSGD,
    HalfPrecision,
    IntQuantizer,
    MajorityVote,
    PowerSGD,
    RandK,
    ScaledSign,
    TopK,
    make_compressor,
)
from lab.compress.fedzip import FedZip
from lab.compress.packing import pack_uint, unpack_uint
from lab.compress.registry import SPECS, spec

D = 1000
SHAPES = [(20, 40), (40,), (10, 16)]  # 800 + 40 + 160 = 1000


def vec(n=2, d=D, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_uint_round_trips_and_uses_packed_bytes(bits):
    v = torch.randint(0, 2 ** bits, (3, 37), generator=torch.Generator().manual_seed(bits))
    packed = pack_uint(v, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, math.ceil(37 * bits / 8))
    assert torch.equal(unpack_uint(packed, bits, 37).long(), v)


@pytest.mark.parametrize("fmt,rel", [("fp16", 2.0 ** -11), ("bf16", 2.0 ** -8)])
def test_half_precision_rounds_within_unit_roundoff(fmt, rel):
    v = vec()
    c = HalfPrecision(fmt)
    p = c.compress(v)
    assert p.nbytes() == 2 * D
    assert ((c.decompress(p) - v).abs() <= rel * v.abs() + 1e-30).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_int_quantizer_error_is_at_most_half_a_step_and_bytes_are_packed(bits):
    v = vec()
    c = IntQuantizer(bits=bits, block=128)
    p = c.compress(v)
    assert p.nbytes() == math.ceil(D * bits / 8) + 4 * math.ceil(D / 128)
    step = v.view(2, -1)[:, :896].reshape(2, 7, 128).abs().amax(2) / c.levels  # first 7 full blocks
    err = (c.decompress(p) - v)[:, :896].reshape(2, 7, 128).abs()
    assert (err <= step.unsqueeze(2) / 2 + 1e-6).all()


def test_topk_keeps_its_entries_and_contracts():
    v = vec()
    c = TopK(k=50)
    out = c.decompress(c.compress(v))
    idx = v.abs().topk(50, dim=1).indices
    assert torch.equal(out.gather(1, idx), v.gather(1, idx)) and int((out != 0).sum()) == 100
    assert ((out - v).norm(dim=1) ** 2 <= (1 - c.contraction(D)) * v.norm(dim=1) ** 2).all()


@pytest.mark.parametrize("scaled", [True, False])
def test_random_k_sends_values_and_a_seed_not_indices(scaled):
    v = vec()
    c = RandK(k=40, scaled=scaled)
    p = c.compress(v)
    assert set(p.tensors) == {"values", "seed"} and p.nbytes() == 4 * 40 + 8
    out = c.decompress(p)
    kept = out != 0
    assert int(kept.sum()) == 80
    assert torch.allclose(out[kept], (v * (D / 40 if scaled else 1.0))[kept])
    assert not torch.equal(kept[0], kept[1])  # ranks draw different coordinates


def test_qsgd_error_is_at_most_one_level():
    v = vec()
    c = QSGD(levels=7, bucket=256)
    p = c.compress(v)
    assert p.nbytes() == math.ceil(D * c.bits / 8) + 4 * math.ceil(D / 256)
    norms = torch.stack([v[:, i:i + 256].norm(dim=1) for i in range(0, D, 256)], 1).repeat_interleave(256, 1)[:, :D]
    assert ((c.decompress(p) - v).abs() <= norms / 7 + 1e-5).all()


def test_scaled_sign_and_majority_vote():
    v = vec()
    c = ScaledSign()
    p = c.compress(v)
    assert p.nbytes() == D // 8 + 4
    assert torch.allclose(c.decompress(p), v.abs().mean(1, keepdim=True) * torch.where(v < 0, -1.0, 1.0))
    m = MajorityVote()
    signs = m.decompress(m.compress(v))
    assert m.compress(v).nbytes() == D // 8 + 1 and torch.equal(signs, torch.where(v < 0, -1.0, 1.0))  # + a flag byte
    votes = torch.tensor([[1.0, 1, -1], [1, -1, -1], [1, -1, 1]])  # 3 workers, 3 coordinates
    assert torch.equal(m.aggregate(votes, torch.ones(3) / 3), torch.tensor([1.0, -1, -1]))


def test_powersgd_warm_start_converges_to_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(1)

    def matrix(a, b, spectrum):
        u = torch.linalg.qr(torch.randn(a, len(spectrum), generator=g))[0]
        w = torch.linalg.qr(torch.randn(b, len(spectrum), generator=g))[0]
        return u @ torch.diag(torch.tensor(spectrum)) @ w.T

    m1, m2 = matrix(20, 40, [10.0, 5.0, 1.0, 0.5]), matrix(10, 16, [4.0, 2.0, 0.3])
    dense = torch.randn(40, generator=g)
    v = torch.cat([m1.reshape(-1), dense, m2.reshape(-1)]).unsqueeze(0)
    best = math.sqrt(1.0 ** 2 + 0.5 ** 2 + 0.3 ** 2)  # Eckart–Young: the dropped singular values
    c = PowerSGD(shapes=SHAPES, rank=2)
    errs = []
    for _ in range(8):
        p = c.compress(v)
        out = c.decompress(p)
        errs.append(float((out - v).norm()))
    assert torch.equal(out[0, 800:840], dense)  # vectors travel uncompressed
    assert errs[0] > best * 1.01 and abs(errs[-1] - best) < 1e-4 * best
    assert p.nbytes() == 4 * ((20 + 40) * 2 + (10 + 16) * 2 + 40)


def test_fedzip_decodes_exactly_and_its_size_is_the_bit_length():
    v = vec(n=1, d=5000, seed=3)
    c = FedZip(keep=0.2)
    syms, cents = c.quantize(v)
    expected = cents[0][torch.from_numpy(syms[0])]  # the 3-means quantized vector
    p = c.compress(v)
    assert torch.equal(c.decompress(p)[0], expected)
    sizes = c.last_sizes[0]
    best = min(sizes.values())
    assert p.tensors["code"].shape[1] == math.ceil(best / 8)
    assert p.nbytes() == math.ceil(best / 8) + 1 + 8  # bit string, method byte, two fp32 centroids
    # every one of the three encodings decodes to the same symbols
    codes = FedZip.encode(syms[0])
    for method, bits in codes.items():
        assert len(bits) == sizes[method]
        assert (FedZip.decode(bits, method, 5000) == syms[0]).all()
    assert (expected == 0).float().mean() >= 0.8  # top-20% then a fixed zero centroid keeps the sparsity


def test_three_sfc_scale_is_least_squares():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def unflatten(row):
        return {n: t.view(s) for n, t, s in zip(names, row.split(sizes), shapes)}

    row = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    c = make_compressor("3sfc", ratio=0.5, dim=len(row), model=model, unflatten=unflatten, input_dim=8,
                        num_classes=3)
    c.set_reference(row)
    target = c.synthetic_grad(torch.randn(1, 8), torch.randn(1, 3)).unsqueeze(0) + 0.1 * torch.randn(1, len(row))
    p = c.compress(target)
    out = c.decompress(p)
    cos = float(c.last_cos[0])
    assert p.nbytes() == 4 * (c.samples * (8 + 3) + 1)
    assert abs(float((out - target).norm() ** 2) - (1 - cos ** 2) * float(target.norm() ** 2)) < 1e-4 * float(
        target.norm() ** 2)
    assert cos > 0.5


def _mean_of_draws(c, v, draws):
    acc = torch.zeros_like(v, dtype=torch.float64)
    sq = torch.zeros(v.shape[0], dtype=torch.float64)
    for _ in range(draws):
        out = c.decompress(c.compress(v)).double()
        acc += out
        sq += ((out - v.double()) ** 2).sum(1)
    return acc / draws, sq / draws


@pytest.mark.parametrize("make", [lambda: RandK(k=100), lambda: QSGD(levels=3, bucket=128),
                                  lambda: IntQuantizer(bits=4, block=64, stochastic=True)],
                         ids=["randk", "qsgd", "int4-stochastic"])
def test_unbiased_compressors_are_unbiased_within_their_variance(make):
    c = make()
    assert c.unbiased
    v = vec(n=1, d=400, seed=5)
    draws = 2000
    mean, mse = _mean_of_draws(c, v, draws)
    omega = c.variance(400)
    bound = omega * float(v.norm() ** 2)
    assert float(mse[0]) <= 1.05 * bound  # E||C(v) - v||² <= ω||v||²
    # E||mean - v||² = E||C(v) - v||² / draws <= ω||v||² / draws; allow 3x for sampling
    assert float(((mean - v.double()) ** 2).sum()) <= 3 * float(mse[0]) / draws + 1e-12


@pytest.mark.parametrize("name", [s.name for s in SPECS if "model" not in s.needs])
@pytest.mark.parametrize("ratio", [0.01, 0.1])
def test_payload_ratio_is_packet_bytes_over_dense_bytes(name, ratio):
    c = make_compressor(name, ratio=ratio, shapes=SHAPES)
    p = c.compress(vec())
    assert c.payload_ratio(p, D) == p.nbytes() / (4 * D)
    tensor_bytes = sum(t[0].numel() * t.element_size() for t in p.tensors.values())
    assert p.nbytes() == tensor_bytes + p.header_bytes
    if spec(name).sparse and name != "fedzip":
        assert c.payload_ratio(p, D) <= ratio
