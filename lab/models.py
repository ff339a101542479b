"""Small models for the lab, each with its loss, its metric and its FLOPs per example.

- ``mlp``: 64 → hidden → 10 with ReLU, for digits.
- ``cnn``: two 3×3 convolutions with GroupNorm (no running statistics, so rank-stacked
  training and FedAvg averaging stay exact), global average pool, linear head; digits as 1×8×8.
- ``gpt``: a tiny character GPT (pre-LN blocks, causal softmax attention, no dropout), for ``chars``.
- ``linear``: a linear regressor for ``lstsq``.

The MLP and the linear model also have `forward_stacked`: the forward of n models whose parameters are stacked on
a leading axis, as batched matmuls; `lab.cluster.Cluster` uses it (with plain autograd) instead of vmap, which
costs about a millisecond of Python per call, more than the whole step of ten small clients.

FLOPs per example are the usual 6 × parameters × tokens estimate (2 forward, 4 backward)
plus attention's 12 · L · T · C per token for the GPT (Kaplan et al. 2020; the
PaLM/Chinchilla accounting).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.data import Dataset

MODELS = ("mlp", "cnn", "gpt", "linear")
COMPATIBLE = {"mlp": ("digits",), "cnn": ("digits",), "gpt": ("chars",), "linear": ("lstsq",)}


def stacked_linear(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """n linear layers at once, one per leading row: weight (n, out, in), bias (n, out), x (n, B, in) ->
    (n, B, out), one batched matmul (what vmap of `nn.Linear` computes, without vmap's per-call overhead).
    Computed as (W x^T)^T: with the weight as stored (out, in), the matmul and both of its backward matmuls run
    on plainly laid out operands (x W^T with the weight's transposed view is slower on CPU)."""
    return torch.bmm(weight, x.transpose(1, 2)).transpose(1, 2) + bias.unsqueeze(1)


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):  # (B, d_in) -> (B, d_out)
        return self.fc2(F.relu(self.fc1(x)))

    @staticmethod
    def forward_stacked(p: dict, x: torch.Tensor) -> torch.Tensor:
        """`forward` of n models at once: p = {name: (n, *shape)}, x (n, B, d_in) -> (n, B, d_out)."""
        h = stacked_linear(p["fc1.weight"], p["fc1.bias"], x).relu()  # (n, B, hidden)
        return stacked_linear(p["fc2.weight"], p["fc2.bias"], h)


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, channels)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.gn2 = nn.GroupNorm(4, 2 * channels)
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x):  # (B, 64) -> (B, classes)
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.max_pool2d(x, 2)  # (B, C, 4, 4)
        x = F.relu(self.gn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.fc_out = nn.Linear(4 * n_embd, n_embd)
        #: sequence-parallel hook (lab.sequence.gpt): attend(q, k, v) (B, H, T, c/H) -> (B, H, T, c/H) replaces
        #: the local causal attention below; None = this device holds the whole sequence
        self.attend = None

    def forward(self, x):  # (B, T, C)
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, c/H)
        if self.attend is not None:
            y = self.attend(q, k, v)  # (B, H, T, c/H), T = this rank's share of the sequence
        else:
            # explicit causal attention: under vmap, scaled_dot_product_attention has no batching rule
            # on CPU and falls back to a per-row loop
            att = (q @ k.transpose(-2, -1)) * (c // self.n_head) ** -0.5  # (B, H, T, T)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = att.masked_fill(~causal, float("-inf")).softmax(dim=-1) @ v  # (B, H, T, c/H)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int = 32, n_layer: int = 2, n_head: int = 4, n_embd: int = 64):
        super().__init__()
        self.block_size, self.n_layer, self.n_embd = block_size, n_layer, n_embd
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, pos=None):  # (B, T) -> (B, T, vocab); pos: (T,) absolute positions, default 0..T-1
        t = idx.shape[-1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device) if pos is None else pos)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


class Linear(nn.Module):
    def __init__(self, d_in: int):
        super().__init__()
        self.fc = nn.Linear(d_in, 1)

    def forward(self, x):  # (B, d) -> (B,)
        return self.fc(x).squeeze(-1)

    @staticmethod
    def forward_stacked(p: dict, x: torch.Tensor) -> torch.Tensor:
        """`forward` of n models at once: p = {name: (n, *shape)}, x (n, B, d) -> (n, B)."""
        return stacked_linear(p["fc.weight"], p["fc.bias"], x).squeeze(-1)


@dataclass
class ModelSpec:
    """A model with what training and evaluation need."""

    module: nn.Module
    loss_fn: Callable  # (outputs, targets) -> scalar
    metrics_fn: Callable  # (outputs, targets) -> dict of floats
    flops_per_example: float


def _classification_metrics(out, y):
    return {"eval_loss": float(F.cross_entropy(out, y)), "eval_accuracy": float((out.argmax(-1) == y).float().mean())}


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _lm_metrics(out, y):
    return {"eval_loss": float(_lm_loss(out, y)),
            "eval_accuracy": float((out.argmax(-1) == y).float().mean())}


def _regression_metrics(out, y):
    return {"eval_loss": float(F.mse_loss(out, y))}


def model_for(config, dataset: Dataset, *, seed: int | None = None) -> ModelSpec:
    """`build_model` with a config's model settings (`model`, `mlp_hidden`), weights from `seed` (default: the
    config's)."""
    return build_model(config.model, dataset, seed=config.seed if seed is None else seed, hidden=config.mlp_hidden)


def build_model(name: str, dataset: Dataset, *, seed: int, hidden: int = 64) -> ModelSpec:
    """Build `name` for `dataset` with weights from `seed`."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; allowed: {list(MODELS)}")
    if dataset.name not in COMPATIBLE[name]:
        raise ValueError(f"model={name!r} does not fit dataset={dataset.name!r}; "
                         f"{name} works with {list(COMPATIBLE[name])}")
    torch.manual_seed(seed)
    if name == "mlp":
        m = MLP(dataset.x_train.shape[1], hidden, dataset.num_classes)
        spec = ModelSpec(m, F.cross_entropy, _classification_metrics, 0.0)
    elif name == "cnn":
        m = SmallCNN(dataset.num_classes)
        conv_macs = 64 * (9 * 16) + 16 * (9 * 16 * 32)  # conv1 at 8x8, conv2 at 4x4
        spec = ModelSpec(m, F.cross_entropy, _classification_metrics, 6.0 * (conv_macs + 32 * 10))
    elif name == "gpt":
        m = TinyGPT(dataset.num_classes, block_size=dataset.meta["block_size"])
        spec = ModelSpec(m, _lm_loss, _lm_metrics, 0.0)
    else:
        m = Linear(dataset.x_train.shape[1])
        spec = ModelSpec(m, F.mse_loss, _regression_metrics, 0.0)
    if not spec.flops_per_example:
        tokens = dataset.meta.get("block_size", 1) if name == "gpt" else 1
        n_params = sum(p.numel() for p in m.parameters())
        attn = 12 * m.n_layer * tokens * m.n_embd if name == "gpt" else 0
        spec.flops_per_example = float(tokens * (6 * n_params + attn))
    return spec
