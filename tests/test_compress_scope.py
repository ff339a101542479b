"""Per-layer compression (the spec's default, Part B): top-k, scaled sign and QSGD work per parameter tensor with
compress_scope='layer', over the whole vector with 'global'; only those compressors read the knob."""
import math

import pytest
import torch

from lab.compress import QSGD, ScaledSign, TopK, make_compressor
from lab.compress.topk import split_count
from lab.config import ExperimentConfig
from lab.experiment import run

SHAPES = [(20, 40), (40,), (10, 16)]  # 800 + 40 + 160 = 1000
SEGMENTS = (800, 40, 160)


def skewed(n=2):
    """Rows whose first tensor is 100x larger than the others: global top-k would take only from it."""
    v = torch.randn(n, 1000, generator=torch.Generator().manual_seed(0))
    v[:, :800] *= 100
    return v


def test_layer_topk_splits_k_over_the_tensors_in_proportion_and_keeps_each_tensors_largest():
    assert split_count(50, SEGMENTS) == [40, 2, 8]
    assert split_count(7, (3, 3, 1)) == [3, 3, 1]  # largest remainders, capped at each length
    v = skewed()
    layer = make_compressor("topk", ratio=0.1, shapes=SHAPES, scope="layer")
    glob = make_compressor("topk", ratio=0.1, shapes=SHAPES, scope="global")
    pl, pg = layer.compress(v), glob.compress(v)
    assert pl.nbytes() == pg.nbytes()  # same k, same packet layout: only the selection differs
    k = pl.meta["k"]
    kept = layer.decompress(pl) != 0
    counts = [int(kept[0, a:a + n].sum()) for a, n in zip((0, 800, 840), SEGMENTS)]
    assert counts == split_count(k, SEGMENTS)
    for a, n, c in zip((0, 800, 840), SEGMENTS, counts):  # each tensor's own largest |values|
        seg = v[0, a:a + n].abs()
        assert set(kept[0, a:a + n].nonzero().flatten().tolist()) == set(seg.topk(c).indices.tolist())
    assert int((glob.decompress(pg)[:, 800:] != 0).sum()) == 0  # global: all from the dominant tensor


def test_layer_sign_sends_one_scale_per_tensor():
    v = skewed()
    comp = ScaledSign(scope="layer").piece(SEGMENTS)
    packet = comp.compress(v)
    assert packet.nbytes() == math.ceil(1000 / 8) + 4 * 3
    out = comp.decompress(packet)
    for a, n in zip((0, 800, 840), SEGMENTS):
        assert torch.allclose(out[:, a:a + n].abs(), v[:, a:a + n].abs().mean(1, keepdim=True).expand(2, n))
    assert ScaledSign().piece(SEGMENTS).compress(v).nbytes() == math.ceil(1000 / 8) + 4  # global: one scale


def test_layer_qsgd_starts_its_buckets_at_every_tensor_and_stays_unbiased():
    comp = QSGD(levels=7, bucket=128, scope="layer").piece(SEGMENTS)
    v = skewed(1)
    packet = comp.compress(v)
    assert packet.tensors["norms"].shape[1] == sum(math.ceil(n / 128) for n in SEGMENTS)  # 7 + 1 + 2
    assert QSGD(levels=7, bucket=128).piece(SEGMENTS).compress(v).tensors["norms"].shape[1] == math.ceil(1000 / 128)
    # the 40-value tensor has its own norm: its error is on its own scale, not the large tensor's
    draws = torch.stack([comp.decompress(comp.compress(v)) for _ in range(400)])  # (400, 1, d)
    small = v[0, 800:840]
    assert float((draws[:, 0, 800:840].mean(0) - small).abs().max()) < 0.5 * float(small.abs().max())


def test_only_scoped_compressors_read_compress_scope_and_the_label_says_global():
    with pytest.raises(ValueError, match="compress_scope"):
        ExperimentConfig(technique="ddp", compressor="int8", compress_scope="global")
    cfg = ExperimentConfig(technique="ddp", compressor="topk", compression_ratio=0.1, compress_scope="global")
    from lab.registry import technique

    assert "global" in technique("ddp").describe(cfg)


def test_scope_changes_training_not_bytes():
    base = ExperimentConfig(technique="ddp", num_workers=4, steps=5, eval_every=5, compressor="topk",
                            compression_ratio=0.05)
    layer, glob = (run(base.replace(compress_scope=s), save=False, progress=False) for s in ("layer", "global"))
    assert layer.ledger.payload_bytes.equals(glob.ledger.payload_bytes)
    assert not torch.equal(layer.model, glob.model)


def test_topk_with_an_explicit_k_scales_it_to_a_chunk():
    assert TopK(k=100).piece((250,), 0.25).k == 25 and TopK(k=3).piece((10,), 0.1).k == 1
