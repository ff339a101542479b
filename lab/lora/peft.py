"""Parameter-efficient fine-tuning over a frozen backbone, and the federated round the LoRA techniques share.

`PeftMap` describes a small trainable vector u (p,) and the full parameters it
yields over a frozen base θ0 (d,):

- `lora`: LoRA adapters W = W0 + s·B A (A: r × in, B: out × r, conv weights as
  out × rest; s = α / r), A from N(0, 1/in) drawn from the shared seed (every
  client starts alike), B = 0. Adapted weights: in the tiny GPT the query and
  value projections of every block (the rows of the fused `qkv` weight for q
  and for v), as LoRA (Hu et al. 2021) and FedEx-LoRA's default target
  modules do; in the other models every weight with ≥ 2 dims except the head;
- `bias`: the biases (BitFit, FedPEFT-Bias);
- `head`: nothing else;
- `full`: every parameter (the full fine-tuning baseline).

The head — the module of the model's last parameter — is trained and sent when
the task's outputs are new to the backbone: a classifier (FedPEFT's rule; the
digits backbone never saw classes 5–9). A language model fine-tunes on the
vocabulary it was pre-trained on, so its output layer stays frozen with the
rest of the backbone (LoRA's setting) except in modes `head` and `full`.

The frozen backbone is the model the run starts from: with `pretrained`
(lab.pretrain) a network pre-trained on the other part of the data, as these
papers fine-tune; it is downloaded once, not counted per round.

`PeftFederated` is a federated round (the sampling, fault model and step
accounting of `lab.sync.federated.Federated`) over u instead of θ: the server
sends the global u to the sampled clients, each runs its local steps of plain
SGD on u (`lr`, `momentum`), and `aggregate` (per technique) forms the new
global u. Only u is counted on the wire.
"""
from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad_and_value, vmap

from lab.knobs import Knob
from lab.sync.faults import RoundPlan
from lab.sync.federated import Federated, LocalTraining
from lab.technique import RoundResult, TrainContext

MODES = ("lora", "bias", "head", "full")


def lora_targets(cluster) -> list[tuple[int, int, int]]:
    """(flat offset, out, in) of every weight LoRA adapts (see the module docstring); the head never."""
    head = cluster.names[-1].rsplit(".", 1)[0]
    out = []
    for name, shape, lo in zip(cluster.names, cluster.shapes, cluster.offsets):
        if name.endswith("qkv.weight"):  # fused (3C, C): q rows first, then k, then v (lab.models.Block)
            c = shape[1]
            out += [(lo, c, c), (lo + 2 * c * c, c, c)]  # query and value
        elif len(shape) >= 2 and name.rsplit(".", 1)[0] != head and not _is_gpt(cluster):
            out.append((lo, shape[0], math.prod(shape[1:])))
    return out


def _is_gpt(cluster) -> bool:
    return any(n.endswith("qkv.weight") for n in cluster.names)


class PeftMap:
    def __init__(self, cluster, *, mode: str, rank: int = 4, alpha: float = 8.0, seed: int = 0,
                 train_head: bool = True):
        if mode not in MODES:
            raise ValueError(f"peft_mode={mode!r} is invalid: expected one of {list(MODES)}")
        self.cluster, self.mode, self.rank = cluster, mode, rank
        self.scale = alpha / rank
        head = cluster.names[-1].rsplit(".", 1)[0]
        train_head = train_head or mode in ("head", "full")
        direct = []  # flat indices trained as they are
        for name, shape, lo, hi in zip(cluster.names, cluster.shapes, cluster.offsets, cluster.offsets[1:]):
            is_head = name.rsplit(".", 1)[0] == head
            if mode == "full" or (is_head and train_head) or (mode == "bias" and len(shape) == 1 and not is_head):
                direct.append(torch.arange(lo, hi))
        #: (offset, out, in, r) of each adapted weight
        self.adapters = [(lo, out, inn, min(rank, out, inn)) for lo, out, inn in lora_targets(cluster)] \
            if mode == "lora" else []
        self.direct = torch.cat(direct) if direct else torch.zeros(0, dtype=torch.long)  # (p_direct,)
        self.num_direct = len(self.direct)
        self.size = self.num_direct + sum(r * (out + inn) for _, out, inn, r in self.adapters)  # p
        self.seed = seed

    def init(self, base: torch.Tensor) -> torch.Tensor:
        """The initial u (p,): the base's trained entries; A ~ N(0, 1/in) from the shared seed, B = 0."""
        g = torch.Generator().manual_seed(self.seed * 613 + 11)
        parts = [base[self.direct]]
        for _, out, inn, r in self.adapters:
            parts += [torch.randn(r * inn, generator=g) / math.sqrt(inn), torch.zeros(out * r)]
        return torch.cat(parts)

    def factors(self, u: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(A (..., r, in), B (..., out, r))] of each adapter, from u (..., p) (views)."""
        out_, j = [], self.num_direct
        lead = u.shape[:-1]
        for _, out, inn, r in self.adapters:
            a = u[..., j:j + r * inn].reshape(*lead, r, inn)
            j += r * inn
            b = u[..., j:j + out * r].reshape(*lead, out, r)
            j += out * r
            out_.append((a, b))
        return out_

    def adapter_slices(self) -> list[tuple[int, int, int, int]]:
        """(flat offset, out, in, r) of each adapted weight in θ."""
        return list(self.adapters)

    def full(self, base: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """θ (d,) from the base (d,) and u (p,); differentiable in u."""
        theta = base.scatter(0, self.direct, u[:self.num_direct])
        for (lo, out, inn, _), (a, b) in zip(self.adapters, self.factors(u)):
            theta = theta.index_add(0, torch.arange(lo, lo + out * inn), self.scale * (b @ a).reshape(-1))
        return theta

    def loss_and_grad(self, base: torch.Tensor, u: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss_fn):
        """Per-row loss (n,) and gradient (n, p) of the model full(base, u_i) on batch (x_i, y_i)."""
        cl = self.cluster

        def loss(u_row, xb, yb):
            params = cl.unflatten(self.full(base, u_row))
            return loss_fn(functional_call(cl.model, (params, cl.buffers), (xb,)), yb)

        grads, losses = vmap(grad_and_value(loss), in_dims=(0, 0, 0))(u.detach(), x, y)
        return losses.detach(), grads.detach()


class PeftFederated(Federated):
    reads = ("momentum",)  # its own SGD on the trainable vector (no weight decay)
    """A federated round over the trainable vector u of a `PeftMap` (mode from `peft_mode`, or fixed)."""
    default_lr = 0.2  # adapters at 0.5 diverge (DP-LoRA reaches NaN by round 3)
    knobs = {
        "lora_rank": Knob(4, "LoRA rank r", low=1, high=4096),
        "lora_alpha": Knob(8.0, "LoRA scale alpha (the update is alpha / r * B A)", low=0.0, low_open=True, high=1e6),
    }

    mode: str | None = None  # a fixed mode, or None to read config.peft_mode
    #: these papers fine-tune a pre-trained model: with pretrained='auto' the run starts from one (lab.pretrain)
    pretrained_backbone = True

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        c = self.config
        self.peft = PeftMap(ctx.cluster, mode=self.mode or c.peft_mode, rank=c.lora_rank, alpha=c.lora_alpha,
                            seed=c.seed, train_head=getattr(ctx.data, "kind", None) != "lm")
        self.base = self.global_row.clone()  # (d,) the frozen backbone
        self.u = self.peft.init(self.base)  # (p,) the global trainable vector

    def downlink(self, ctx: TrainContext, sampled: list[int]) -> None:
        ctx.collective.server_broadcast(self.u, ranks=sampled, tag="peft")

    def local_train(self, ctx: TrainContext, clients: list[int], start: torch.Tensor) -> tuple[LocalTraining,
                                                                                               torch.Tensor]:
        """Local SGD on u for the `clients` this process holds, from `start` (p,).

        Returns (the training record, u of every local row (n, p): the trained rows of these clients,
        `start` elsewhere). Writes the clients' full models into their cluster rows."""
        c = self.config
        mine = [r for r in clients if r in ctx.cluster.ranks]
        rows = [ctx.cluster.local_index(r) for r in mine]
        u_all = start.expand(ctx.cluster.num_local, -1).clone()  # (n, p)
        loss_sum = torch.zeros(len(mine), dtype=torch.float64)
        steps = torch.tensor([self.local_steps(r) for r in mine], dtype=torch.long)
        if mine:
            u = u_all[rows]
            buf = torch.zeros_like(u)
            for t in range(int(steps.max())):
                active = (steps > t).float().unsqueeze(1)
                xb, yb = ctx.batches.next(mine)
                losses, g = self.peft.loss_and_grad(self.base, u, xb, yb, ctx.spec.loss_fn)
                buf = c.momentum * buf + g
                u = u - c.lr * active * buf
                loss_sum += losses.double() * active.squeeze(1).double()
            u_all[rows] = u
            ctx.cluster.set_rows(torch.stack([self.peft.full(self.base, ui) for ui in u]), rows)
        out = LocalTraining(mine, rows, u_all[rows], loss_sum / steps.clamp(min=1).double(), None)
        return out, u_all

    def weights(self, ctx: TrainContext, clients: list[int]) -> torch.Tensor:
        """(P,) data-size weights over `clients`, zero elsewhere."""
        w = torch.zeros(ctx.collective.world_size, dtype=self.sizes.dtype)
        w[clients] = self.sizes[clients] / self.sizes[clients].sum()
        return w

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        out, u_all = self.local_train(ctx, plan.participants, self.u)
        extras = self.aggregate(ctx, u_all, plan.participants) or {}
        return RoundResult(self.mean_loss(ctx, out, plan.participants),
                           {"clients": len(plan.sampled), "trainable": self.peft.size, **extras})

    def aggregate(self, ctx: TrainContext, u_all: torch.Tensor, clients: list[int]) -> dict | None:
        """FedAvg on u: u ← Σ_i w_i u_i over the participants (uplink 4p bytes each)."""
        self.u = ctx.collective.server_reduce(u_all, weights=self.weights(ctx, clients), ranks=clients,
                                              tag="peft").clone()
        return None

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        return self.peft.full(self.base, self.u).detach()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "base": self.base, "u": self.u}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.base, self.u = state["base"], state["u"]
