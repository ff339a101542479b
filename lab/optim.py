"""The local optimizer of a run, built from the config over one rank-stacked flat tensor.

A stock `torch.optim` optimizer over the stacked parameters (n, d) behaves as n
independent optimizers because its arithmetic is elementwise; Adam-mini keeps
one second moment per block (lab/sharding/adam_mini.py).
"""
from __future__ import annotations

import torch


def make_optimizer(config, param: torch.Tensor, *, cluster, layout=None) -> torch.optim.Optimizer:
    """The configured optimizer over `param` (n, ·): the cluster's parameters, or a sharding technique's
    slices of them (`layout`: the technique, which knows each row's slice)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD([param], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam_mini":  # one second moment per block (lab/sharding/adam_mini.py)
        from lab.sharding.adam_mini import AdamMini, cluster_layout

        bounds, decay = cluster_layout(cluster)
        slices = layout.adam_mini_slices(bounds) if layout is not None else {}
        return AdamMini(param, bounds=bounds, decay=decay, lr=config.lr, weight_decay=config.weight_decay, **slices)
    return torch.optim.AdamW([param], lr=config.lr, weight_decay=config.weight_decay)
