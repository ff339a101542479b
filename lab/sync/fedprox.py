"""FedProx: FedAvg whose clients stay near the global model through a proximal term.

Paper: Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020. The baseline every federated-learning user
expects next to FedAvg.

Client i minimises F_i(y) + (μ/2)·||y − x||² from y = x, so each local step
follows g_i(y) + μ·(y − x): the larger μ, the less a client drifts towards its
own optimum on non-IID data (μ = 0 is FedAvg). Everything else — sampling,
weighting by n_i, client faults, bytes — is FedAvg's (`lab.sync.fedavg`).

Sent per round: the global model down (d fp32 per sampled client), the client's
model up (d fp32 per participant). Knobs: `prox_mu` μ and FedAvg's knobs.
"""
from __future__ import annotations

import torch

from lab.knobs import Knob
from lab.sync.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"
    label = "FedProx"
    knobs = {
        "prox_mu": Knob(0.01, "proximal term mu", low=0.0, high=1e3),
    }

    def direction(self, g: torch.Tensor, y: torch.Tensor, mine: list[int]) -> torch.Tensor:
        return g + self.config.prox_mu * (y - self.global_row)
