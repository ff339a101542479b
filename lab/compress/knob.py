"""The compression-ratio knob: how a target ratio maps to each compressor's own parameter, and what it measures.

`Probe(config)` holds the layout of the config's model (parameter shapes, and
what 3SFC decodes through). `probe.knob(name, ratio)` builds the compressor
the way the techniques do (`make_compressor`), compresses a probe gradient
(Gaussian, seeded) and reports the parameter (k, bits, rank, ...) and the
*measured* ratio of that packet. `probe.setting_for(name, target)` finds the
largest `compression_ratio` setting whose measured ratio does not exceed the
target — how to line several compressors up at the same measured ratio — or
None when the compressor cannot go that low (sign is fixed at 1/32 + a scale).
For data-dependent compressors (FedZip) the probe's ratio is an estimate; runs
report the ratio of every real message.
"""
from __future__ import annotations

import torch

from lab.cluster import Cluster
from lab.compress import COMPRESSORS, make_compressor
from lab.data import load_dataset
from lab.models import build_model


class Probe:
    def __init__(self, config, *, seed: int = 0):
        data = load_dataset(config.dataset, seed=config.seed, num_workers=config.num_workers)
        spec = build_model(config.model, data, seed=config.seed)
        self.cluster = Cluster(spec.module, num_workers=1, loss_fn=spec.loss_fn)
        self.shapes = self.cluster.shapes
        self.dim = self.cluster.dim
        self.extra = {}
        if data.kind == "classification" and data.x_train.dtype == torch.float32 and data.x_train.dim() == 2:
            self.extra = dict(model=self.cluster.model, unflatten=self.cluster.unflatten,
                              input_dim=data.x_train.shape[1], num_classes=data.num_classes)
        self.vector = torch.randn(1, self.dim, generator=torch.Generator().manual_seed(seed))
        self._cache: dict = {}

    def compressor(self, name: str, ratio: float):
        comp = make_compressor(name, ratio=ratio, shapes=self.shapes, dim=self.dim, **(
            self.extra if name == "3sfc" else {}))
        if hasattr(comp, "set_reference"):
            comp.set_reference(self.cluster.params.detach()[0])
        return comp

    def knob(self, name: str, ratio: float) -> dict:
        """{'compressor', 'target', 'parameter', 'measured_ratio', 'how'} for one setting (cached)."""
        key = (name, float(ratio))
        if key not in self._cache:
            if name not in COMPRESSORS:
                raise ValueError(f"compressor={name!r} is unknown; allowed: {list(COMPRESSORS)}")
            comp = self.compressor(name, ratio)
            probe = torch.zeros_like(self.vector) if name == "3sfc" else self.vector  # 3SFC's size needs no fit
            packet = comp.compress(probe)
            self._cache[key] = {"compressor": name, "target": float(ratio), "parameter": comp.describe(self.dim),
                                "measured_ratio": comp.measured_ratio(packet, self.dim), "how": comp.knob}
        return self._cache[key]

    def setting_for(self, name: str, target: float, *, iters: int = 30) -> float | None:
        """A compression_ratio setting in (0, 1] whose measured ratio is <= target: the target itself when the
        compressor's own mapping respects it, else the largest such setting (None if there is none)."""
        if self.knob(name, target)["measured_ratio"] <= target:
            return float(target)
        lo, hi = 1e-6, float(target)
        if self.knob(name, lo)["measured_ratio"] > target:
            return None
        for _ in range(iters):  # measured ratio is non-decreasing in the setting
            mid = (lo * hi) ** 0.5
            if self.knob(name, mid)["measured_ratio"] <= target:
                lo = mid
            else:
                hi = mid
        return lo
