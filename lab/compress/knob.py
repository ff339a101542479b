"""The compression-ratio knob: how a target maps to each compressor's own parameter, and what it measures.

`Probe(config)` holds the layout of the config's model (parameter shapes, and
what 3SFC decodes through), its number of workers P and its topology.
`probe.knob(name, ratio)` builds the channel the way the techniques do
(`lab.compress.build_channel`: `ratio` is the target *traffic* ratio, mapped
through the algorithm the topology chooses at this P), runs one exchange of
a probe vector (Gaussian, seeded) on a simulated collective, and reports the
compressor's parameter, the algorithm, and the two measured ratios —
`payload_ratio` (one message's encoded bytes over 4d) and `traffic_ratio`
(the busiest rank's bytes over the dense exchange's, the fp32 ring all-reduce
or, for a technique that compresses a federated uplink, the dense upload).
`probe.setting_for(name, target)` finds the largest `compression_ratio`
setting whose measured traffic ratio does not exceed the target — how to line
several compressors up at the same traffic — or None when the compressor
cannot go that low (sign is fixed at 1/32 + a scale). For data-dependent
compressors (FedZip) the probe's ratios are an estimate; runs report the
ratios of every real exchange.
"""
from __future__ import annotations

import torch

from lab.cluster import Cluster
from lab.comm import Ledger, SimulatedCollective
from lab.compress import COMPRESSORS, build_channel
from lab.compress.registry import spec
from lab.data import load_dataset
from lab.models import model_for
from lab.topology import for_config

#: the keys of one `Probe.knob` row
COLUMNS = ("compressor", "target", "parameter", "algorithm", "payload_ratio", "traffic_ratio", "how")


class Probe:
    def __init__(self, config, *, seed: int = 0):
        data = load_dataset(config.dataset, seed=config.seed, num_workers=config.num_workers)
        spec_ = model_for(config, data)
        self.cluster = Cluster(spec_.module, num_workers=1, loss_fn=spec_.loss_fn)
        self.shapes = self.cluster.shapes
        self.dim = self.cluster.dim
        self.topology = for_config(config)
        self.workers = config.num_workers
        self.scope = getattr(config, "compress_scope", "layer")
        from lab.registry import technique

        self.uplink = technique(config.technique).compressor_path in ("uplink", "downlink")
        self.extra = {}
        if data.kind == "classification" and data.x_train.dtype == torch.float32 and data.x_train.dim() == 2:
            self.extra = dict(model=self.cluster.model, unflatten=self.cluster.unflatten,
                              input_dim=data.x_train.shape[1], num_classes=data.num_classes)
        gen = torch.Generator().manual_seed(seed)
        self.vector = torch.randn(self.workers, self.dim, generator=gen)  # (P, d) one row per worker
        self._cache: dict = {}

    def channel(self, name: str, ratio: float):
        """The channel a technique would build for compressor `name` at target traffic ratio `ratio`."""
        if name not in COMPRESSORS:
            raise ValueError(f"compressor={name!r} is unknown; allowed: {list(COMPRESSORS)}")
        extra = self.extra if name == "3sfc" else {}
        feedback = "ef" if spec(name).feedback else "none"
        channel = build_channel(name, target=float(ratio), scope=self.scope, error_feedback=feedback, eta=0.0,
                                seed=0, shapes=self.shapes, **extra)
        channel.set_reference(self.cluster.params.detach()[0])
        return channel

    def knob(self, name: str, ratio: float) -> dict:
        """{'compressor', 'target', 'parameter', 'algorithm', 'payload_ratio', 'traffic_ratio', 'how'}
        for one setting (cached)."""
        key = (name, float(ratio))
        if key not in self._cache:
            channel = self.channel(name, ratio)
            coll = SimulatedCollective(world_size=self.workers, ledger=Ledger(self.topology))
            v = torch.zeros_like(self.vector) if name == "3sfc" else self.vector  # 3SFC's size needs no fit
            if self.uplink:
                w = torch.full((self.workers,), 1.0 / self.workers)
                channel.server_reduce(v, coll, weights=w, ranks=list(range(self.workers)), tag="probe")
            else:
                channel.all_reduce_mean(v, coll, tag="probe")
            plans = list(channel.plans.values())
            parameter = plans[0].describe() if plans else channel.compressor.describe(self.dim)
            self._cache[key] = {"compressor": name, "target": float(ratio), "parameter": parameter,
                                "algorithm": channel.algorithm, **channel.columns(), "how": channel.compressor.knob}
        return self._cache[key]

    def setting_for(self, name: str, target: float, *, iters: int = 30) -> float | None:
        """A compression_ratio setting in (0, 1] whose measured traffic ratio is <= target: the target itself
        when the compressor's own mapping respects it, else the largest such setting (None if there is none)."""
        if self.knob(name, target)["traffic_ratio"] <= target:
            return float(target)
        lo, hi = 1e-6, float(target)
        if self.knob(name, lo)["traffic_ratio"] > target:
            return None
        for _ in range(iters):  # the measured ratio is non-decreasing in the setting
            mid = (lo * hi) ** 0.5
            if self.knob(name, mid)["traffic_ratio"] <= target:
                lo = mid
            else:
                hi = mid
        return lo

    def left_out(self, names, target: float) -> dict:
        """{name: reason} of the compressors in `names` that no setting brings to a traffic ratio <= target."""
        floor = 1e-6  # the smallest setting setting_for tries
        return {name: f"its smallest traffic ratio is {self.knob(name, floor)['traffic_ratio']:.3g} "
                      f"({self.knob(name, floor)['parameter']}), above the target {target:g}"
                for name in names if self.setting_for(name, target) is None}
