"""The compressor registry is the one list: every declaration (ratio, feedback, summable, chunked, unbiased, scoped)
matches what the compressor built from it does, and the config's knobs follow it."""
import pytest
import torch

import lab.compress.options
import lab.compress.packing
from lab.compress import Compressor, make_compressor, make_feedback
from lab.compress.registry import COMPRESSORS, NO_FEEDBACK, SPECS, spec
from lab.config import KNOBS, ExperimentConfig
from lab.data import load_dataset
from lab.models import build_model

SHAPES = [(20, 40), (40,), (10, 16)]


@pytest.fixture(scope="module")
def build():
    data = load_dataset("digits", seed=0, num_workers=2)
    model = build_model("mlp", data, seed=0).module
    shapes = [p.shape for p in model.parameters()]

    def make(name, ratio=0.1, **kw):
        extra = {}
        if "model" in spec(name).needs:
            extra = dict(model=model, unflatten=None, input_dim=64, num_classes=10)
        return make_compressor(name, ratio=ratio, shapes=shapes if name == "3sfc" else SHAPES, **extra, **kw)

    return make


def test_the_config_offers_exactly_the_registered_compressors():
    assert KNOBS["compressor"].choices == COMPRESSORS == tuple(s.name for s in SPECS)
    with pytest.raises(ValueError, match="compressor='zstd'"):
        make_compressor("zstd")


@pytest.mark.parametrize("name", COMPRESSORS)
def test_each_declaration_matches_the_compressor_it_builds(name, build):
    s, comp = spec(name), build(name)
    assert comp.name == name
    assert s.summable == (type(comp).reduce is not Compressor.reduce)  # crosses ranks its own way
    assert s.unbiased == comp.unbiased
    assert (name in NO_FEEDBACK) == (not s.feedback)
    if not s.feedback:
        with pytest.raises(ValueError, match="error_feedback"):
            make_feedback("ef", comp)
    if s.scoped:
        assert build(name, scope="layer").scope == "layer"
    if name == "3sfc":
        return
    v = torch.randn(1, 1000)
    small, large = build(name, ratio=0.02).compress(v).nbytes(), build(name, ratio=0.5).compress(v).nbytes()
    assert (small < large) == s.ratio  # only ratio compressors follow the knob
    if s.chunked:  # a chunk's packet layout depends on its length only (what two-phase sizes and decodes by)
        for d in (37, 600):
            chunk = build(name).piece((d,), d / 1000)
            assert chunk.compress(torch.zeros(2, d)).nbytes() == chunk.compress(torch.randn(2, d)).nbytes()


def test_fixed_size_compressors_refuse_a_ratio_and_unscoped_ones_a_scope():
    for s in SPECS:
        if s.name == "none":
            continue
        kw = {"error_feedback": "none"} if s.name in NO_FEEDBACK else {}
        if not s.ratio:
            with pytest.raises(ValueError, match="compression_ratio=0.5 is not read"):
                ExperimentConfig(technique="ddp", compressor=s.name, compression_ratio=0.5, **kw)
        if not s.scoped:
            with pytest.raises(ValueError, match="compress_scope='global' is not read"):
                ExperimentConfig(technique="ddp", compressor=s.name, compress_scope="global", **kw)


def test_dead_names_are_gone():
    assert not hasattr(lab.compress.packing, "packed_nbytes")
    assert not hasattr(lab.compress.options, "COMPRESSED_TECHNIQUES")
    assert not hasattr(Compressor, "measured_ratio")
