"""The 4-bit float E3M0 codec (Streaming DiLoCo's outer-gradient format): exact on its grid, nearest off it,
packed two codes a byte plus one fp32 scale per block."""
import math

import pytest
import torch

from lab.compress import make_compressor
from lab.compress.fp4 import FP4E3M0, MAGNITUDES


def roundtrip(c, v):
    return c.decompress(c.compress(v))


def test_the_grid_is_zero_and_seven_powers_of_two_below_the_block_maximum():
    assert MAGNITUDES.tolist() == [0.0] + [2.0 ** -e for e in range(6, -1, -1)]
    c = FP4E3M0(block=16)
    s = 3.0
    grid = torch.tensor([0.0] + [s * 2.0 ** -e for e in range(7)] + [-s * 2.0 ** -e for e in range(7)])  # (15,)
    v = grid.unsqueeze(0)  # (1, 15): one block, scale = s
    assert torch.equal(roundtrip(c, v), v)  # representable values come back exactly


def test_every_value_goes_to_the_nearest_grid_point_of_its_block():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 1000, generator=g) * torch.logspace(-4, 1, 1000)  # (3, 1000) across magnitudes
    c = FP4E3M0(block=256)
    out = roundtrip(c, v)
    for row in range(3):
        for start in range(0, 1000, 256):
            blk, dec = v[row, start:start + 256], out[row, start:start + 256]
            s = blk.abs().max()
            grid = torch.cat([-(s * MAGNITUDES), s * MAGNITUDES])  # (16,)
            best = (blk.unsqueeze(1) - grid).abs().min(dim=1).values  # distance to the nearest grid value
            assert torch.allclose((dec - blk).abs(), best, atol=1e-6 * float(s), rtol=0)
    assert torch.equal(out.sign()[out != 0], v.sign()[out != 0])


@pytest.mark.parametrize("d", [1, 255, 256, 257, 1000])
def test_packet_holds_half_a_byte_per_value_and_one_fp32_scale_per_block(d):
    c = make_compressor("fp4")
    assert isinstance(c, FP4E3M0) and c.name == "fp4"
    packet = c.compress(torch.randn(2, d))
    assert packet.nbytes() == math.ceil(d / 2) + 4 * math.ceil(d / 256)  # one rank's row
    assert packet.tensors["codes"].dtype == torch.uint8


def test_error_is_within_the_stated_contraction_and_zero_stays_zero():
    c = FP4E3M0(block=64)
    g = torch.Generator().manual_seed(1)
    for v in (torch.randn(4, 640, generator=g), torch.randn(4, 640, generator=g) ** 5,
              torch.cat([torch.full((1, 63), 1e-4), torch.ones(1, 1)], dim=1)):  # one large, the rest flushed
        err = (roundtrip(c, v) - v).pow(2).sum()
        assert err <= (1 - c.contraction(v.shape[1])) * v.pow(2).sum() + 1e-9
    assert torch.equal(roundtrip(c, torch.zeros(2, 10)), torch.zeros(2, 10))


def test_a_bad_block_size_is_refused():
    with pytest.raises(ValueError, match="block=0"):
        FP4E3M0(block=0)
