"""Top-k gating with an expert capacity, the dropped-token count and the load-balancing loss.

Spec §B10 (step 1: "top-k with capacity C = cap_factor·k·T/E per expert, or
dropless"). Each rank's T tokens are one group, as in GShard (Lepikhin et al.
2020): capacity is counted per expert per group, so a rank sends at most C rows
to each expert whatever the others do.

- Scores: p = softmax(x·W_r) over the E experts (t, E). Selection takes the k
  largest of p + `bias` (the bias only moves the choice: LocMoE's locality term,
  `lab.moe.locmoe`), the gate weights come from p itself.
- Gates: top-1 uses the raw probability p_e as the gate (Switch Transformer,
  Fedus et al. 2021); top-k with k > 1 renormalizes the k probabilities to sum 1
  (Mixtral's "softmax over the top-k logits", the same numbers).
- Capacity: C = ceil(capacity_factor · k · T / E); capacity_factor = 0 is
  dropless (C = T: an expert cannot get a token twice). Slots are filled
  choice-major (every token's first choice, in token order, then the second
  choices), so a token's first choice wins over another token's second; an
  assignment past slot C is dropped (its gate contributes nothing; the residual
  carries the token on).
- Load-balancing loss (Switch, eq. 4, extended to top-k): aux = E · Σ_e f_e·P_e
  with f_e the fraction of the k·T assignments routed to e (before dropping) and
  P_e the mean router probability of e. It is 1 when routing is uniform and E
  when every token goes to one expert with probability 1; only P_e carries a
  gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Routing:
    """Where one group of tokens per rank goes. Shapes: n local ranks, T tokens, k choices, E experts."""

    expert: torch.Tensor  # (n, T, k) int64: the expert of each (token, choice)
    gate: torch.Tensor  # (n, T, k) float, differentiable: weight of each choice's output
    keep: torch.Tensor  # (n, T, k) bool: fits the expert's capacity
    position: torch.Tensor  # (n, T, k) int64: slot in the expert's buffer (meaningful where keep)
    counts: torch.Tensor  # (n, E) int64: assignments per expert before dropping
    probs: torch.Tensor  # (n, T, E) router probabilities
    capacity: int
    aux_loss: torch.Tensor  # (n,) load-balancing loss per rank, differentiable

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def dropped(self) -> torch.Tensor:
        """(n,) assignments past capacity on each rank."""
        return (~self.keep).sum(dim=(1, 2))

    def row(self, i: int) -> Routing:
        """The routing of local rank i alone (n = 1)."""
        return Routing(*(getattr(self, f)[i:i + 1] if f != "capacity" else self.capacity
                         for f in self.__dataclass_fields__))

    @property
    def kept_counts(self) -> torch.Tensor:
        """(n, E) assignments per expert that fit."""
        e = self.num_experts
        return torch.stack([torch.bincount(self.expert[i][self.keep[i]], minlength=e) for i in range(len(self.expert))])


def capacity(num_tokens: int, *, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert per group: ceil(capacity_factor·k·T/E), or T when dropless (capacity_factor = 0)."""
    if capacity_factor == 0:
        return num_tokens
    return max(1, math.ceil(capacity_factor * top_k * num_tokens / num_experts))


def route(logits: torch.Tensor, *, top_k: int, capacity_factor: float = 0.0,
          bias: torch.Tensor | None = None) -> Routing:
    """logits (n, T, E) -> Routing. bias: added to the scores for the choice only ((E,), (n, 1, E) or (n, T, E))."""
    n, t, e = logits.shape
    if not 1 <= top_k <= e:
        raise ValueError(f"top_k={top_k!r} is invalid: expected 1..{e} (the number of experts)")
    if capacity_factor < 0 or not math.isfinite(capacity_factor):
        raise ValueError(f"capacity_factor={capacity_factor!r} is invalid: expected a finite number >= 0 "
                         "(0 = dropless)")
    probs = torch.softmax(logits.float(), dim=-1)  # (n, T, E)
    score = probs.detach() if bias is None else probs.detach() + bias
    expert = score.topk(top_k, dim=-1).indices  # (n, T, k)
    picked = probs.gather(-1, expert)  # (n, T, k)
    gate = picked if top_k == 1 else picked / picked.sum(dim=-1, keepdim=True)
    cap = capacity(t, num_experts=e, top_k=top_k, capacity_factor=capacity_factor)
    onehot = torch.nn.functional.one_hot(expert.transpose(1, 2).reshape(n, top_k * t), e)  # (n, k·T, E) choice-major
    position = ((onehot.cumsum(dim=1) - 1) * onehot).sum(-1).view(n, top_k, t).transpose(1, 2)  # (n, T, k)
    counts = onehot.sum(dim=1)  # (n, E)
    keep = position < cap
    frac = counts.float() / (top_k * t)  # f_e
    aux = e * (frac * probs.mean(dim=1)).sum(-1)  # (n,)
    return Routing(expert, gate, keep, position, counts, probs, cap, aux)
