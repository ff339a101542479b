"""Adam-mini: one second-moment value per parameter block instead of one per parameter.

Paper: Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More" (arXiv
2406.16793); block rules of the official code v1.1.1 as the spec records them
(shared/techniques/sharding_and_topology.md §A7). Blocks follow the Hessian's
block structure, so v shrinks by more than 99.9% and the optimizer state by about
half (m stays per element).

Block rules, matched on parameter names (`block_kind`):
- query/key weights (q_proj, k_proj, wq, wk, query, key): one v per head, the
  weight viewed as (−1, dim·dim/heads) (for GQA keys: one per key head);
- embeddings, output heads, value and output projections, MLP weights (embed,
  embd, wte, lm_head, output, final_layer, v_proj, wv, value, o_proj, wo,
  attn.proj, feed_forward, linear, mlp): one v per output row;
- biases: one v per element (plain Adam);
- everything else (norm weights): one v for the whole tensor.
The lab's own models use other names; `LAB_NAMES` maps them onto the same
rules (fc, head, tok, pos, proj, conv: per row; a fused qkv: per head for its
q and k rows, per row for v). Every block is a contiguous range of the flat
parameter vector, which is what makes sharding simple.

Update per block B (decoupled weight decay, none for norm, ln, gn and bias names):
m ← β1 m + (1−β1) g;  v_B ← β2 v_B + (1−β2)·mean_B(g²);
p ← p(1 − lr·wd) − lr · m / ((1−β1^t)(sqrt(v_B / (1−β2^t)) + eps)).

Sharded (ZeRO slices of the flat vector): a rank keeps m for its slice and v for
every block its slice touches. Contiguous slices split at most S−1 blocks; the
partial sums of g² of those blocks are all-reduced in the shard group (tag
`adam_mini`; fp64, 8 bytes each, where the spec's fp32 would be 4), so sharded
Adam-mini equals unsharded Adam-mini up to the order of that sum (E1, spec §A7);
block sums are taken in fp64, so in practice the fp32 results are identical.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lab.sharding.memory import ModelShape, Profile

HEAD_NAMES = ("q_proj", "k_proj", "wq", "wk", "query", "key")
ROW_NAMES = ("embed", "embd", "wte", "lm_head", "output", "final_layer", "v_proj", "wv", "value", "o_proj", "wo",
             "attn.proj", "feed_forward", "linear", "mlp")
#: the lab models' names, mapped onto the rules above
LAB_NAMES = ("fc", "head", "tok", "pos", "proj", "conv")
NO_DECAY = ("norm", "ln", "gn", "bias")


def block_kind(name: str) -> str:
    """'element', 'qkv', 'head', 'row' or 'tensor' for a parameter called `name`."""
    leaf = name.rsplit(".", 1)[-1]
    if "bias" in leaf:
        return "element"
    if "qkv" in name:
        return "qkv"
    if any(k in name for k in HEAD_NAMES):
        return "head"
    if any(k in name for k in ROW_NAMES + LAB_NAMES):
        return "row"
    return "tensor"


def block_sizes(name: str, shape: tuple[int, ...], *, heads: int, dim: int) -> list[int]:
    """Sizes of the consecutive blocks of one parameter, in flat (row-major) order."""
    numel = math.prod(shape)
    kind = block_kind(name)
    if kind == "element":
        return [1] * numel
    if kind == "tensor" or len(shape) < 2:
        return [numel]
    row = numel // shape[0]
    if kind == "row":
        return [row] * shape[0]
    head_numel = dim * dim // heads
    if kind == "head":
        return [head_numel] * (numel // head_numel)
    c = shape[0] // 3  # fused (3C, C): q rows, k rows, v rows
    return [head_numel] * (2 * c * row // head_numel) + [row] * c


def layout_of(named_shapes: list[tuple[str, tuple[int, ...]]], *, heads: int, dim: int) -> torch.Tensor:
    """(num_blocks + 1,) int64 block boundaries in the flat vector of these parameters, in order."""
    sizes = [s for name, shape in named_shapes for s in block_sizes(name, tuple(shape), heads=heads, dim=dim)]
    return torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)


def decay_mask(named_shapes) -> torch.Tensor:
    """(d,) 1.0 where weight decay applies, 0.0 for norm/ln/gn/bias parameters."""
    parts = [torch.full((math.prod(shape),), 0.0 if any(k in name for k in NO_DECAY) else 1.0)
             for name, shape in named_shapes]
    return torch.cat(parts)


def cluster_layout(cluster) -> tuple[torch.Tensor, torch.Tensor]:
    """Block boundaries and decay mask of a lab Cluster's flat row."""
    heads = next((m.n_head for m in cluster.model.modules() if hasattr(m, "n_head")), 1)
    dim = next((m.n_embd for m in cluster.model.modules() if hasattr(m, "n_embd")), 1)
    named = list(zip(cluster.names, [tuple(s) for s in cluster.shapes]))
    return layout_of(named, heads=heads, dim=dim), decay_mask(named)


# ---- counts for model shapes ------------------------------------------------------------------------------
def llama_named_shapes(shape: ModelShape) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of a Llama-style model (Hugging Face naming, untied head)."""
    h, f, kv, v = shape.hidden, shape.ffn, shape.kv_dim, shape.vocab
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h))]
        experts = [f"block_sparse_moe.experts.{e}." for e in range(shape.experts)] if shape.experts > 1 else [""]
        for e in experts:
            out += [(p + f"mlp.{e}gate_proj.weight", (f, h)), (p + f"mlp.{e}up_proj.weight", (f, h)),
                    (p + f"mlp.{e}down_proj.weight", (h, f))]
        if shape.experts > 1:
            out.append((p + "mlp.gate.weight", (shape.experts, h)))
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def v_entries(shape: ModelShape) -> int:
    """Adam-mini's second-moment count for a Llama-style shape, from the block rules."""
    if shape.style != "llama":
        raise ValueError(f"shape {shape.name!r} has style={shape.style!r}; v_entries names Llama-style models")
    return len(layout_of(llama_named_shapes(shape), heads=shape.heads, dim=shape.hidden)) - 1


def adam_mini_profile(shape: ModelShape, base: Profile) -> Profile:
    """`base` (e.g. MIXED_ADAM) with Adam's 8 bytes of moments replaced by m (4) + 4·v_entries/Ψ."""
    moments = 4 + 4 * v_entries(shape) / shape.num_params
    return Profile(f"{base.name}, Adam-mini", base.param, base.grad, base.master, moments, base.reduced_slice)


def split_blocks(bounds: torch.Tensor, cuts: list[int]) -> list[int]:
    """Global ids of the blocks that the slice boundaries `cuts` cut in two (at most one per cut)."""
    out = set()
    d = int(bounds[-1])
    for cut in cuts:
        b = int(torch.searchsorted(bounds, torch.tensor(cut), right=True)) - 1
        if 0 < cut < d and int(bounds[b]) != cut:
            out.add(b)
    return sorted(out)


# ---- the optimizer ---------------------------------------------------------------------------------------
class AdamMini(torch.optim.Optimizer):
    """Adam-mini over one rank-stacked flat tensor (n, m) whose rows are slices [lo_i, lo_i + m) of a
    vector with block `bounds` (padding beyond the last bound gets a block of its own).

    reduce(sums (n, k)) -> (n, k): sums the partial Σg² of the `split` blocks over the ranks sharing them
    (None when rows hold whole vectors).
    """

    def __init__(self, param: torch.Tensor, *, bounds: torch.Tensor, decay: torch.Tensor, lo: list[int] | None = None,
                 reduce: Callable | None = None, split: list[int] = (), lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__([param], dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        n, m = param.shape
        lo = [0] * n if lo is None else list(lo)
        d = int(bounds[-1])
        total = max(d, max(lo) + m)
        bounds = torch.cat([bounds, torch.tensor([total])]) if total > d else bounds
        decay = torch.cat([decay, torch.zeros(total - d)])
        cols = torch.tensor(lo).unsqueeze(1) + torch.arange(m)  # (n, m) global positions
        gid = torch.searchsorted(bounds, cols, right=True) - 1  # (n, m) global block of each element
        first = gid[:, :1]
        self.ids = gid - first  # (n, m) local block index
        self.num_local = int(self.ids.max()) + 1
        gl = (first + torch.arange(self.num_local)).clamp(max=len(bounds) - 2)  # (n, k) global ids
        self.sizes = (bounds[gl + 1] - bounds[gl]).float()  # (n, k) full block sizes
        self.present = torch.zeros(n, self.num_local, dtype=torch.bool).scatter_(1, self.ids, True)
        self.decay = decay[cols]  # (n, m)
        self.reduce, self.global_ids = reduce, gl
        self.split = torch.tensor(list(split), dtype=torch.int64)  # global ids of blocks split across slices

    @property
    def v_count(self) -> int:
        """Second-moment entries per rank (blocks its slice touches)."""
        return self.num_local

    def _block_sums(self, g: torch.Tensor) -> torch.Tensor:
        # fp64 sums: a block split across slices is summed in pieces, and in fp64 the pieces' different
        # association almost never changes the fp32 result, so sharded and unsharded runs stay equal
        sums = torch.zeros(g.shape[0], self.num_local, dtype=torch.float64).scatter_add_(1, self.ids,
                                                                                         g.double() ** 2)  # (n, k)
        if self.reduce is None or not len(self.split):
            return sums
        # partial sums of the blocks split across slices -> one (n, #split) vector summed in the shard group
        match = self.global_ids.unsqueeze(2) == self.split.view(1, 1, -1)  # (n, k, #split)
        match &= self.present.unsqueeze(2)
        part = (sums.unsqueeze(2) * match).sum(dim=1)  # (n, #split)
        total = self.reduce(part).double()  # (n, #split)
        return torch.where(match.any(dim=2), (match * total.unsqueeze(1)).sum(dim=2), sums)

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        p = group["params"][0]
        if p.grad is None:
            return None
        b1, b2 = group["betas"]
        st = self.state[p]
        if not st:
            st["step"] = torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p)  # (n, m)
            st["v"] = torch.zeros(p.shape[0], self.num_local)  # (n, k)
        st["step"] += 1
        t = float(st["step"])
        g = p.grad
        mean = (self._block_sums(g) / self.sizes).float()  # (n, k)
        st["v"].mul_(b2).add_(mean, alpha=1 - b2)
        st["exp_avg"].lerp_(g, 1 - b1)
        h = (st["v"] / (1 - b2 ** t)).sqrt_().add_(group["eps"]).gather(1, self.ids)  # (n, m)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"] * self.decay)
        p.addcdiv_(st["exp_avg"], h, value=-group["lr"] / (1 - b1 ** t))
        return None
