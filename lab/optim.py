"""The local optimizer of a run, built from the config over one rank-stacked flat tensor.

A stock `torch.optim` optimizer over the stacked parameters (n, d) behaves as n
independent optimizers because its arithmetic is elementwise; Adam-mini keeps
one second moment per block (lab/sharding/adam_mini.py).

`optimizer='auto'` (the default) is the technique's own choice
(`Technique.default_optimizer`: AdamW for DiLoCo and Streaming DiLoCo, as in
the DiLoCo paper; SGD elsewhere). AdamW and Adam-mini take their betas from
`adam_beta1` and `adam_beta2`; `adam_beta2 = 0` is the technique's own β2
(`Technique.default_adam_beta2`: 0.95 for DiLoCo, the paper's; torch's 0.999
elsewhere).
"""
from __future__ import annotations

import torch


def optimizer_name(config) -> str:
    """The optimizer a run uses: `config.optimizer`, or with 'auto' its technique's `default_optimizer`."""
    if config.optimizer != "auto":
        return config.optimizer
    from lab.registry import technique

    return technique(config.technique).default_optimizer


def adam_betas(config) -> tuple[float, float]:
    """(β1, β2) of AdamW / Adam-mini: `adam_beta1`, and `adam_beta2` or (0) the technique's default β2."""
    beta2 = config.adam_beta2
    if not beta2:
        from lab.registry import technique

        beta2 = technique(config.technique).default_adam_beta2
    return config.adam_beta1, beta2


def make_optimizer(config, param: torch.Tensor, *, cluster, layout=None) -> torch.optim.Optimizer:
    """The configured optimizer over `param` (n, ·): the cluster's parameters, or a sharding technique's
    slices of them (`layout`: the technique, which knows each row's slice)."""
    name = optimizer_name(config)
    if name == "sgd":
        return torch.optim.SGD([param], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if name == "adam_mini":  # one second moment per block (lab/sharding/adam_mini.py)
        from lab.sharding.adam_mini import AdamMini, cluster_layout

        bounds, decay = cluster_layout(cluster)
        slices = layout.adam_mini_slices(bounds) if layout is not None else {}
        return AdamMini(param, bounds=bounds, decay=decay, lr=config.lr, weight_decay=config.weight_decay,
                        betas=adam_betas(config), **slices)
    return torch.optim.AdamW([param], lr=config.lr, betas=adam_betas(config), weight_decay=config.weight_decay)
