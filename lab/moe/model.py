"""A small rank-stacked model whose feed-forward layers are mixtures of experts: the MoE transformer block.

Two bodies around the same block (spec §B10–§B13):

- ``gpt``: a character GPT — token + position embeddings, `num_layers` pre-LN
  blocks (causal multi-head attention, then the MoE FFN), a final LayerNorm and
  a linear head; inputs (n, B, T) token ids.
- ``mlp``: a classifier — a linear input projection, `num_layers` blocks of
  (LayerNorm, MoE FFN) with residuals, LayerNorm, linear head; inputs (n, B, d_in).

Block l (standard):  a = x + Attn(LN1(x));  x' = a + MoE(LN2(a)).
Block l (ScMoE, `shortcut=True`, lab.moe.scmoe): the MoE branch reads the
block's *input* and a dense shared expert reads the current representation:
a = x + Attn(LN1(x));  x' = a + Shared(LN2(a)) + MoE(LN3(x)), so the MoE's
dispatch can start before attention runs.

Everything carries a leading rank axis and is written with batched matmuls, so
one forward serves every local rank; the MoE FFN is a callable
`moe(layer, h (n, N, C), routing) -> (n, N, C)` that a strategy provides
(`lab.moe.strategies`: the single-device reference, expert parallelism, PPMoE,
FSSDP). Dense parameters live in one flat row per rank (`DenseLayout`) so DDP
all-reduces one buffer. The training loss is cross-entropy + `aux_loss_coef` ·
Σ_layers (load-balancing loss) (lab.moe.router).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lab.moe.layer import init_experts
from lab.moe.router import route


@dataclass(frozen=True)
class MoEShape:
    kind: str  # 'gpt' | 'mlp'
    d_in: int  # vocabulary (gpt) or input features (mlp)
    num_classes: int
    block_size: int = 1  # tokens per example (gpt)
    hidden: int = 32
    heads: int = 4
    num_layers: int = 2
    ffn: int = 64
    num_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 0.0
    shortcut: bool = False  # ScMoE

    def __post_init__(self):
        if self.kind not in ("gpt", "mlp"):
            raise ValueError(f"model={self.kind!r} is invalid for an MoE model: expected 'gpt' or 'mlp'")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")

    def dense_shapes(self) -> dict[str, tuple]:
        h, e, f = self.hidden, self.num_experts, self.ffn
        out = {"tok": (self.d_in, h), "pos": (self.block_size, h)} if self.kind == "gpt" else {
            "inp_w": (self.d_in, h), "inp_b": (h,)}
        for l in range(self.num_layers):
            if self.kind == "gpt":
                out.update({f"{l}.ln1_w": (h,), f"{l}.ln1_b": (h,), f"{l}.qkv_w": (h, 3 * h), f"{l}.qkv_b": (3 * h,),
                            f"{l}.proj_w": (h, h), f"{l}.proj_b": (h,)})
            out.update({f"{l}.ln2_w": (h,), f"{l}.ln2_b": (h,), f"{l}.router": (h, e)})
            if self.shortcut:
                out.update({f"{l}.ln3_w": (h,), f"{l}.ln3_b": (h,), f"{l}.shared_w1": (h, f),
                            f"{l}.shared_w2": (f, h)})
        out.update({"lnf_w": (h,), "lnf_b": (h,), "head_w": (h, self.num_classes), "head_b": (self.num_classes,)})
        return out

    @property
    def expert_numel(self) -> int:
        return 2 * self.hidden * self.ffn

    def forward_flops_per_token(self) -> dict[str, float]:
        """Forward FLOPs per token by part (2 per multiply-add): attention (projections + core), router,
        routed experts (top_k of them), shared expert, embeddings/head."""
        h, f, t = self.hidden, self.ffn, self.block_size
        attn = (2 * 4 * h * h + 4 * t * h) if self.kind == "gpt" else 0.0
        shared = 4 * h * f if self.shortcut else 0.0
        io = 2 * h * (self.num_classes + (self.d_in if self.kind == "mlp" else 0))
        return {"attention": self.num_layers * attn, "router": self.num_layers * 2 * h * self.num_experts,
                "experts": self.num_layers * self.top_k * 4 * h * f, "shared": self.num_layers * shared, "io": io}


class DenseLayout:
    """Names, shapes and offsets of the dense parameters in one flat row."""

    def __init__(self, shapes: dict[str, tuple]):
        self.names, self.shapes = list(shapes), list(shapes.values())
        self.offsets = [0]
        for s in self.shapes:
            self.offsets.append(self.offsets[-1] + math.prod(s))

    @property
    def dim(self) -> int:
        return self.offsets[-1]

    def unflatten(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n, d) -> {name: (n, *shape)} views."""
        n = rows.shape[0]
        return {k: rows[:, o:o2].view(n, *s) for k, o, o2, s in zip(self.names, self.offsets, self.offsets[1:],
                                                                    self.shapes)}

    def flatten(self, named: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: (*shape)} -> (d,)."""
        return torch.cat([named[k].reshape(-1) for k in self.names])


def init_model(shape: MoEShape, *, seed: int):
    """Dense parameters {name: tensor} and every layer's experts [(W1 (E, h, f), W2 (E, f, h))], from `seed`."""
    g = torch.Generator().manual_seed(seed)
    dense = {}
    for name, s in shape.dense_shapes().items():
        leaf = name.split(".")[-1]
        if leaf.endswith("_b"):
            dense[name] = torch.zeros(s)
        elif leaf.startswith("ln") and leaf.endswith("_w"):
            dense[name] = torch.ones(s)
        else:
            dense[name] = torch.randn(s, generator=g) * (0.02 if leaf in ("tok", "pos") else s[0] ** -0.5)
    experts = [init_experts(shape.num_experts, shape.hidden, shape.ffn, generator=g) for _ in range(shape.num_layers)]
    return dense, experts


# ---- rank-stacked building blocks -----------------------------------------------------------------------
def _ln(x, w, b):  # x (n, ..., h), w/b (n, h)
    view = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[1],)
    return F.layer_norm(x, x.shape[-1:]) * w.view(view) + b.view(view)


def _linear(x, w, b=None):  # x (n, N, a), w (n, a, c), b (n, c)
    y = torch.bmm(x, w)
    return y if b is None else y + b.unsqueeze(1)


def _attention(x, p, l, heads):  # x (n, B, T, C)
    n, bsz, t, c = x.shape
    qkv = _linear(x.reshape(n, bsz * t, c), p[f"{l}.qkv_w"], p[f"{l}.qkv_b"]).view(n, bsz, t, 3, heads, c // heads)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (n, B, H, T, c/H)
    att = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5  # (n, B, H, T, T)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    y = att.masked_fill(~causal, float("-inf")).softmax(dim=-1) @ v  # (n, B, H, T, c/H)
    y = y.permute(0, 1, 3, 2, 4).reshape(n, bsz * t, c)
    return _linear(y, p[f"{l}.proj_w"], p[f"{l}.proj_b"]).view(n, bsz, t, c)


def forward(shape: MoEShape, p: dict, x: torch.Tensor, moe, *, bias=None, hooks=None):
    """Rank-stacked forward. p: dense {name: (n, *shape)}; x (n, B, T) ids or (n, B, d_in) features;
    moe(layer, h (n, N, C), routing) -> (n, N, C); bias(layer) -> a routing bias or None (LocMoE);
    hooks: optional dict of callables called at 'before_layer'/'after_attention' (the ScMoE clock).
    Returns logits (n, B, T, V) or (n, B, classes), the summed aux loss (n,), and each layer's Routing."""
    hooks = hooks or {}
    if shape.kind == "gpt":
        n, bsz, t = x.shape
        h = p["tok"][torch.arange(n).view(n, 1, 1), x] + p["pos"][:, :t].unsqueeze(1)  # (n, B, T, C)
    else:
        n, bsz, _ = x.shape
        h = _linear(x, p["inp_w"], p["inp_b"]).unsqueeze(2)  # (n, B, 1, C)
        t = 1
    c = shape.hidden
    aux = h.new_zeros(n)
    routings = []
    for l in range(shape.num_layers):
        if "before_layer" in hooks:
            hooks["before_layer"](l)
        inp = h
        if shape.kind == "gpt":
            h = h + _attention(_ln(h, p[f"{l}.ln1_w"], p[f"{l}.ln1_b"]), p, l, shape.heads)
        if "after_attention" in hooks:
            hooks["after_attention"](l)
        src = _ln(inp, p[f"{l}.ln3_w"], p[f"{l}.ln3_b"]) if shape.shortcut else _ln(h, p[f"{l}.ln2_w"], p[f"{l}.ln2_b"])
        tokens = src.reshape(n, bsz * t, c)
        routing = route(torch.bmm(tokens, p[f"{l}.router"]), top_k=shape.top_k,
                        capacity_factor=shape.capacity_factor, bias=bias(l) if bias else None)
        routings.append(routing)
        aux = aux + routing.aux_loss
        y = moe(l, tokens, routing).view(n, bsz, t, c)
        if shape.shortcut:
            cur = _ln(h, p[f"{l}.ln2_w"], p[f"{l}.ln2_b"]).reshape(n, bsz * t, c)
            y = y + torch.bmm(F.gelu(torch.bmm(cur, p[f"{l}.shared_w1"])), p[f"{l}.shared_w2"]).view(n, bsz, t, c)
        h = h + y
    h = _ln(h, p["lnf_w"], p["lnf_b"])
    logits = _linear(h.reshape(n, bsz * t, c), p["head_w"], p["head_b"])
    return (logits.view(n, bsz, t, -1) if shape.kind == "gpt" else logits.view(n, bsz, -1)), aux, routings


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, B, [T,] V) logits and targets -> (n,) mean cross-entropy per rank."""
    n, v = logits.shape[0], logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, v), y.reshape(-1), reduction="none").view(n, -1).mean(1)


def full_experts(shape: MoEShape, row: torch.Tensor):
    """A full model row (dense, then every layer's W1, W2) -> dense {name: (1, ...)} and [(W1, W2)] per layer."""
    layout = DenseLayout(shape.dense_shapes())
    d = layout.dim
    w = row[d:].view(shape.num_layers, shape.num_experts, -1)
    k = shape.hidden * shape.ffn
    experts = [(w[l, :, :k].reshape(-1, shape.hidden, shape.ffn), w[l, :, k:].reshape(-1, shape.ffn, shape.hidden))
               for l in range(shape.num_layers)]
    return layout.unflatten(row[:d].unsqueeze(0)), experts
