"""Where the experts of every MoE layer live and how a layer is computed: the expert part of each rank's row.

A strategy stores the experts this process's ranks hold as one flat row per
rank (`init_rows`), computes a layer from them (`layer`), says what its expert
gradients need (`sync_grads`), and can rebuild every expert for evaluation
(`full_experts`: an observer's all-gather, not recorded).

- `Replicated`: every rank holds every expert and computes its own tokens
  (data-parallel MoE, and the single-device MoE when P = 1); expert gradients
  are all-reduced with the dense ones.
- `ExpertParallelExperts`: expert parallelism (lab.moe.layer.ExpertParallel):
  rank r holds the experts `hosts[r]` of every layer (E/P each, contiguous or a
  placement such as ExFlow's); tokens move, expert gradients stay.
- PPMoE and FSSDP: `lab.moe.ppmoe`, `lab.moe.fssdp`.

Gradient convention (all strategies): each rank back-propagates loss_r / P and
gradients are summed over ranks, so the update follows the mean loss over ranks.
"""
from __future__ import annotations

import torch

from lab.comm.collective import Collective
from lab.moe.layer import ExpertParallel, contiguous_hosts, reference
from lab.moe.model import MoEShape


class Strategy:
    name = ""

    def __init__(self, coll: Collective, shape: MoEShape):
        self.coll, self.shape = coll, shape
        self.load_history: list = []  # (P,) rows each rank computed, per layer call

    # ---- storage ----------------------------------------------------------------------------------
    def init_rows(self, experts: list) -> torch.Tensor:
        """Every layer's (W1 (E, h, f), W2 (E, f, h)) -> (n, d_e) what the local ranks store."""
        raise NotImplementedError

    def layer(self, rows: torch.Tensor, l: int, tokens: torch.Tensor, routing, *, tag: str) -> torch.Tensor:
        raise NotImplementedError

    def sync_grads(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def full_experts(self, rows: torch.Tensor) -> list:
        raise NotImplementedError

    def bias(self, l: int):
        """Routing bias of layer l for the local ranks (LocMoE), or None."""
        return None

    # ---- helpers ------------------------------------------------------------------------------------
    def _split(self, flat: torch.Tensor, num: int):
        """(n, L·num·2hf) -> per layer (W1 (n, num, h, f), W2 (n, num, f, h))."""
        s = self.shape
        n, k = flat.shape[0], s.hidden * s.ffn
        per = flat.view(n, s.num_layers, num, 2 * k)
        return [(per[:, l, :, :k].reshape(n, num, s.hidden, s.ffn), per[:, l, :, k:].reshape(n, num, s.ffn, s.hidden))
                for l in range(s.num_layers)]

    @staticmethod
    def _flat(experts: list, index) -> torch.Tensor:
        """experts [(W1, W2)] -> (L·len(index)·2hf,) the selected experts' weights, layer-major."""
        return torch.cat([torch.cat([w1[index].flatten(1), w2[index].flatten(1)], 1).reshape(-1)
                          for w1, w2 in experts])


class Replicated(Strategy):
    name = "replicated"

    def init_rows(self, experts):
        row = self._flat(experts, torch.arange(self.shape.num_experts))
        return row.unsqueeze(0).repeat(self.coll.num_local, 1)

    def layer(self, rows, l, tokens, routing, *, tag):
        w1, w2 = self._split(rows, self.shape.num_experts)[l]
        y = torch.cat([reference(tokens[i:i + 1], routing.row(i), w1[i], w2[i]) for i in range(tokens.shape[0])])
        self.load_history.append(self.coll.all_gather(routing.keep.sum(dim=(1, 2)), record=False)[0].numpy())
        return y

    def sync_grads(self, grad):
        return self.coll.all_reduce(grad, op="sum", tag="expert_grads")

    def full_experts(self, rows):
        return [(w1[0], w2[0]) for w1, w2 in self._split(rows, self.shape.num_experts)]


class ExpertParallelExperts(Strategy):
    name = "ep"

    def __init__(self, coll, shape, *, hosts: list[list[int]] | None = None, ranks_per_node: int | None = None):
        super().__init__(coll, shape)
        self.hosts = hosts or contiguous_hosts(shape.num_experts, coll.world_size)
        self.ep = ExpertParallel(coll, self.hosts, ranks_per_node=ranks_per_node)

    @property
    def slots(self) -> int:
        return len(self.hosts[0])

    def init_rows(self, experts):
        return torch.stack([self._flat(experts, torch.tensor(self.hosts[r])) for r in self.coll.ranks])

    def layer(self, rows, l, tokens, routing, *, tag):
        w1, w2 = self._split(rows, self.slots)[l]
        y = self.ep(tokens, routing, w1, w2, tag=tag)
        self.load_history.append(self.ep.load.copy())
        return y

    def full_experts(self, rows):
        every = self.coll.all_gather(rows.detach(), record=False)[0]  # (P, d_e)
        per = self._split(every, self.slots)  # per layer (P, S, ...)
        order = torch.tensor([e for hs in self.hosts for e in hs]).argsort()
        return [(w1.flatten(0, 1)[order], w2.flatten(0, 1)[order]) for w1, w2 in per]
