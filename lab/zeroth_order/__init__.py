"""Shared-seed zeroth-order and projection methods: what travels is seeds and scalars, not vectors.

- `fedkseed`: FedKSeed — K candidate seeds, scalar two-point gradients, optional importance sampling of seeds.
- `justonebyte`: Just One Byte — decentralized SPSA, each projected gradient sent as one byte.
- `ferret`: Ferret — first-order local updates projected on shared random directions.
- `fedzo`: FedZO — FedAvg with random-direction finite-difference gradients (the federated ZO baseline).
- `fzoos`: FZooS — trajectory-informed GP surrogate gradients with a shared random-feature global surrogate.
"""
from lab.zeroth_order.fedkseed import FedKSeed
from lab.zeroth_order.fedzo import FedZO
from lab.zeroth_order.ferret import Ferret
from lab.zeroth_order.fzoos import FZooS
from lab.zeroth_order.justonebyte import JustOneByte

TECHNIQUES = (FedKSeed, JustOneByte, Ferret, FedZO, FZooS)

__all__ = ["TECHNIQUES", "FZooS", "FedKSeed", "FedZO", "Ferret", "JustOneByte"]
