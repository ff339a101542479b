"""Memory per rank of sharded data parallelism: model states, working buffers and activations.

For a model shape, how each model state is partitioned and the bytes per
element of each state, `memory_per_rank` returns the bytes one rank holds:

- params: the compute copy, b_p·Ψ, or b_p·Ψ/S when parameters are sharded;
- grads: b_g·Ψ, or b_g·Ψ/S when gradients are sharded;
- optimizer: (master + moments)·Ψ/S_os, the optimizer's slice (K = master + moments);
- buffers: what a sharded step gathers and keeps while it runs: the gathered
  parameters of the units in flight, b_p·unit·(1 + prefetch), and ZeRO++ hpZ's
  secondary partition b_p·Ψ/H;
- transient: the full gradient of one unit (or reduce bucket) before it is
  reduce-scattered, b_g·bucket, when gradients are sharded;
- activations: Korthikanti et al. 2022 (`activation_bytes`), per rank under sequence parallelism
  (degree and method), for a storage profile (`ActivationProfile`: the paper's bf16 with dropout, or the
  lab's fp32 TinyGPT, held to its saved tensors).

ZeRO stage s shards optimizer states (s ≥ 1), gradients (s ≥ 2) and parameters
(s = 3) over S ranks (`Partition.zero`); the Frontier scheme sets each state's
partition level on its own. With the mixed-precision profile (b_p = b_g = 2,
K = 12) the model states reproduce the ZeRO paper's worked example: 7.5B
parameters on 64 ranks, 120 GB → 31.4 → 16.6 → 1.88 GB (spec §A1).

The lab trains in fp32 (`lab_profile`): b_p = b_g = 4, no master copy in DDP or
stage 3 (the optimizer updates the only copy), a separate fp32 slice in stages
1–2 (the compute copy is full while the optimizer owns a slice), and stage 1
also holds its reduced gradient slice beside the full gradient buffer. Slices
and the flat gradient buffer are padded to a multiple of the group sizes
(`lab.sharding.layout`), so for the lab models the prediction equals the bytes
of the tensors a rank holds (`lab.sharding.zero.ZeRO.memory`).

Model shapes (`MODEL_SHAPES`): GPT-2 124M, Llama-2 7B and 70B, Mixtral 8x7B,
with parameter counts computed from their published shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 1e9


# ---- model shapes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """A transformer's shape. `style`: 'gpt2' (LayerNorm with bias, biases, learned positions, GELU MLP,
    tied embeddings) or 'llama' (RMSNorm, no biases, RoPE, SwiGLU MLP, untied). `experts` > 1: every MLP is
    a mixture of `experts` experts with a router, `top_k` active per token. A shape with only `params` set
    (num_layers = 0) is a flat parameter vector (the lab's small models)."""

    name: str
    num_layers: int = 0
    hidden: int = 0
    heads: int = 0
    kv_heads: int = 0
    ffn: int = 0
    vocab: int = 0
    seq_len: int = 0
    style: str = "llama"
    experts: int = 1
    top_k: int = 1
    params: int = 0  # only for flat shapes

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return (self.kv_heads or self.heads) * self.head_dim

    def layer_params(self) -> int:
        """Parameters of one transformer block (the unit FSDP wraps)."""
        h, f, kv = self.hidden, self.ffn, self.kv_dim
        if self.style == "gpt2":
            attn = h * (h + 2 * kv) + (h + 2 * kv) + h * h + h
            mlp = 2 * h * f + f + h
            norms = 2 * 2 * h
        else:
            attn = 2 * h * h + 2 * h * kv
            mlp = 3 * h * f
            norms = 2 * h
        if self.experts > 1:
            mlp = self.experts * mlp + h * self.experts  # experts + router
        return attn + mlp + norms

    def embedding_params(self) -> int:
        h, v = self.hidden, self.vocab
        if self.style == "gpt2":
            return v * h + self.seq_len * h + 2 * h  # tied token embedding, positions, final LayerNorm
        return 2 * v * h + h  # embedding, LM head, final RMSNorm

    @property
    def num_params(self) -> int:
        if not self.num_layers:
            return self.params
        return self.num_layers * self.layer_params() + self.embedding_params()

    @property
    def active_params(self) -> int:
        """Parameters one token uses (MoE: top_k of the experts), for FLOPs."""
        if self.experts == 1 or not self.num_layers:
            return self.num_params
        h, f = self.hidden, self.ffn
        idle = (self.experts - self.top_k) * 3 * h * f
        return self.num_params - self.num_layers * idle

    @property
    def largest_unit(self) -> int:
        """Parameters of the largest unit gathered at once: a block, or the embedding/head."""
        if not self.num_layers:
            return self.num_params
        emb = self.vocab * self.hidden
        return max(self.layer_params(), emb)


MODEL_SHAPES = {
    "gpt2-124m": ModelShape("gpt2-124m", 12, 768, 12, 12, 3072, 50257, 1024, style="gpt2"),
    "llama2-7b": ModelShape("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    "llama2-70b": ModelShape("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 4096, experts=8, top_k=2),
}


def flat_shape(num_params: int, name: str = "flat") -> ModelShape:
    """A model known only by its parameter count (the lab's small models: one flat unit)."""
    return ModelShape(name, params=num_params)


# ---- bytes per element ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """Bytes per element of each model state, and what an implementation keeps besides.

    master: a separate master copy of the optimizer's slice (0: the optimizer updates the compute copy,
    which then needs a separate slice only when the compute copy is full and the optimizer's slice is not).
    reduced_slice: with full gradients and sharded optimizer states (stage 1), the reduced gradient slice
    is held beside the full gradient buffer.
    """

    name: str
    param: float
    grad: float
    master: float
    moments: float
    reduced_slice: bool = False


MIXED_ADAM = Profile("bf16 params and grads, fp32 master + Adam m, v (K = 12)", 2, 2, 4, 8)


def moment_bytes(optimizer: str, *, momentum: float = 0.0) -> float:
    """fp32 optimizer moments per element: AdamW m + v = 8, SGD momentum 4, plain SGD 0."""
    if optimizer == "adamw":
        return 8.0
    if optimizer == "sgd":
        return 4.0 if momentum else 0.0
    raise ValueError(f"optimizer={optimizer!r} has no per-element moment count here; allowed: 'adamw', 'sgd' "
                     "(Adam-mini: lab.sharding.adam_mini.adam_mini_profile)")


def lab_profile(optimizer: str = "adamw", *, momentum: float = 0.0) -> Profile:
    """The lab's fp32 training (see the module docstring)."""
    return Profile(f"lab fp32 {optimizer}", 4, 4, 0, moment_bytes(optimizer, momentum=momentum), reduced_slice=True)


# ---- partitions --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    """Over how many ranks each model state is split (1 = replicated), plus hpZ's secondary group size."""

    params: int = 1
    grads: int = 1
    optimizer: int = 1
    secondary: int = 0

    @classmethod
    def zero(cls, stage: int, sharding_degree: int, *, hpz_size: int = 0) -> Partition:
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={stage!r} is invalid: expected 0, 1, 2 or 3")
        s = sharding_degree
        return cls(params=s if stage >= 3 else 1, grads=s if stage >= 2 else 1, optimizer=s if stage >= 1 else 1,
                   secondary=hpz_size if stage >= 3 else 0)

    @property
    def multiple(self) -> int:
        return math.lcm(self.params, self.grads, self.optimizer, self.secondary or 1)


@dataclass
class Memory:
    """Bytes per rank by category."""

    params: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    buffers: float = 0.0
    transient: float = 0.0
    activations: float = 0.0
    notes: dict = field(default_factory=dict)

    CATEGORIES = ("params", "grads", "optimizer", "buffers", "transient", "activations")

    @property
    def states(self) -> float:
        """Model states: what the ZeRO paper counts."""
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> float:
        return sum(getattr(self, c) for c in self.CATEGORIES)

    def as_dict(self) -> dict[str, float]:
        return {c: getattr(self, c) for c in self.CATEGORIES}


def memory_per_rank(shape: ModelShape, partition: Partition, profile: Profile = MIXED_ADAM, *,
                    unit: int | None = None, prefetch: int = 1, bucket: int | None = None,
                    activations: float = 0.0) -> Memory:
    """Bytes one rank holds. unit: parameters gathered at once (default: the shape's largest unit);
    prefetch: units gathered ahead; bucket: gradient elements reduce-scattered at once when gradients are
    sharded (default: one unit); activations: bytes, e.g. from `activation_bytes`."""
    psi = shape.num_params
    padded = -(-psi // partition.multiple) * partition.multiple
    unit = shape.largest_unit if unit is None else unit
    bucket = unit if bucket is None else bucket
    pr = profile
    sharded = lambda n: padded / n if n > 1 else psi  # noqa: E731
    m = Memory(activations=activations)
    m.params = pr.param * sharded(partition.params)
    m.grads = pr.grad * (padded if partition.grads == 1 and partition.optimizer > 1 else sharded(partition.grads))
    if pr.reduced_slice and partition.grads == 1 and partition.optimizer > 1:
        m.grads += pr.grad * padded / partition.optimizer
    master = pr.master or (pr.param if partition.optimizer != partition.params else 0)
    m.optimizer = (master + pr.moments) * sharded(partition.optimizer)
    if partition.params > 1:
        m.buffers = pr.param * min(unit, psi) * (1 + prefetch)
    if partition.secondary:
        m.buffers += pr.param * padded / partition.secondary
    if partition.grads > 1:
        m.transient = pr.grad * min(bucket, psi)
    return m


def zero_memory(shape: ModelShape, stage: int, sharding_degree: int, profile: Profile = MIXED_ADAM, **kw) -> Memory:
    """`memory_per_rank` for ZeRO stage 0–3 with S = sharding_degree (and kw: hpz_size, unit, ...)."""
    hpz = kw.pop("hpz_size", 0)
    return memory_per_rank(shape, Partition.zero(stage, sharding_degree, hpz_size=hpz), profile, **kw)


def lab_memory(num_params: int, stage: int, sharding_degree: int, *, optimizer: str = "adamw",
               momentum: float = 0.0, hpz_size: int = 0) -> Memory:
    """What `lab.sharding.zero.ZeRO` holds per rank at the optimizer step (one unit = the whole model, no
    prefetch), to compare with `ZeRO.memory`. Stage 0 is DDP."""
    return zero_memory(flat_shape(num_params), stage, sharding_degree, lab_profile(optimizer, momentum=momentum),
                       hpz_size=hpz_size, prefetch=0)


def optimizer_temporaries(optimizer: str) -> float:
    """Bytes per optimized element that torch's single-tensor optimizer step allocates and frees: AdamW
    computes sqrt(v) and its quotient by the bias correction (two fp32 temporaries); SGD none."""
    return 8.0 if optimizer == "adamw" else 0.0


def lab_peak(num_params: int, stage: int, sharding_degree: int, *, optimizer: str = "adamw",
             momentum: float = 0.0) -> dict[str, float]:
    """Bytes per rank alive in each phase of one step of the lab's implementation (stage 0: lab.sync.ddp,
    1–3: lab.sharding.zero on torch.distributed, one unit = the whole model, fp32); the peak is the max.

    Every term is a tensor the code holds: the parameters (stage 3: its slice, plus the gathered buffer),
    the optimizer's slice (stages 1–2) and moments, stage 1's full gradient buffer; during the backward the
    per-parameter gradients and their flat concatenation (`Cluster.loss_and_grad`: 2·4Ψ); DDP's all-reduce
    works on a copy of the gradient; the reduce-scatter output, beside the chunks gloo copies to send
    ((S−1)/S of the input: torch 2.13's ProcessGroupGloo, measured); the optimizer's temporaries
    (`optimizer_temporaries`); the all-gathered vector before it is copied into the parameters.
    Activations of the lab's small batches are left out.
    """
    lay = Partition.zero(stage, sharding_degree)
    psi = num_params
    pad = -(-psi // lay.multiple) * lay.multiple
    sl = pad / sharding_degree if stage else psi
    b = 4.0
    moments = moment_bytes(optimizer, momentum=momentum)
    temps = optimizer_temporaries(optimizer)
    if stage == 0:
        persist = b * psi + moments * psi
        return {"backward": persist + 2 * b * psi, "all_reduce": persist + 2 * b * psi,
                "optimizer_step": persist + b * psi + temps * psi}
    # full parameters (stage 3: the gathered buffer), the moments of the slice, and the slice itself
    # (stages 1-2: the optimizer's fp32 copy; stage 3: the parameters' only persistent copy)
    persist = b * psi + moments * sl + b * sl
    if stage == 1:
        persist += b * pad  # the full gradient buffer
    full_grad = 0.0 if stage == 1 else b * pad  # stage 1 reduces from its persistent buffer
    send_copies = b * pad * (sharding_degree - 1) / sharding_degree
    phases = {"backward": persist + 2 * b * psi,
              "reduce_scatter": persist + full_grad + b * sl + send_copies,
              "optimizer_step": persist + b * sl + temps * sl}
    phases["all_gather"] = persist + b * pad
    return phases


# ---- activations --------------------------------------------------------------------------------------------
RECOMPUTE = ("none", "selective", "full")
#: sequence-parallel methods the memory model and the planner know (lab.sequence; LASP is linear attention)
SP_METHODS = ("ring", "token_ring", "burst", "ulysses", "usp", "lss")


@dataclass(frozen=True)
class ActivationProfile:
    """How a training implementation stores activations: bytes per value, 1-byte dropout masks and the
    dropout outputs, fp32 mean and rstd of every LayerNorm, a bool (s, s) causal mask per layer."""

    name: str
    value: int = 2
    dropout: bool = True
    norm_stats: bool = False
    causal_mask: bool = False


KORTHIKANTI = ActivationProfile("bf16 with dropout (Korthikanti et al. 2022)")
#: the lab's TinyGPT (lab.models): fp32, no dropout, explicit causal softmax attention (tests/test_planner_axes.py
#: holds this profile to the tensors autograd saves, per layer)
LAB_GPT = ActivationProfile("lab fp32 TinyGPT", value=4, dropout=False, norm_stats=True, causal_mask=True)


def activation_bytes(shape: ModelShape, *, micro_batch: int = 1, seq_len: int | None = None,
                     recompute: str = "selective", sp_degree: int = 1, sp_method: str = "ulysses",
                     profile: ActivationProfile = KORTHIKANTI) -> float:
    """Activation memory of one micro-batch through every layer on one rank (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", §4, with tensor parallel size 1),
    with the sequence split over `sp_degree` ranks.

    Per layer and token, with v bytes per value (profile.value), hidden h, h_kv = K/V width, f the MLP
    width, k experts per token, a heads, s tokens:
    attention v(3h + 2h_kv) (QKV input, Q, K, V, output-projection input) [+ h dropout mask],
    MLP v·h + v·c·f·k (c = 2 values for GELU, 3 for SwiGLU) [+ h dropout mask], two norms 2vh
    [+ 16 bytes of fp32 statistics], and unless recomputed the attention core: the softmax output a·s·v
    [+ a·s mask and a·s·v dropout output]. With the default profile (v = 2, dropout) and GPT blocks
    (h_kv = h, f = 4h, GELU) this is the paper's sbh(34 + 5as/h). Selective recomputation drops the core;
    full recomputation keeps only each layer's input, v·h per token. Embedding and loss terms are left out,
    as in the paper. The GQA and SwiGLU/MoE terms count the same stored tensors as the paper does; they
    are this lab's generalization, not the paper's formula.

    Sequence parallelism over G ranks (`sp_degree`, `sp_method`, lab.sequence): every per-token term falls
    to s/G tokens, and the core to a·(s/G)·s (local queries against every key, or a/G heads of the whole
    sequence for Ulysses: the same count). The methods' own buffers [RECON, the lab's model]: LSS keeps
    the gathered K and V of the whole sequence in every layer, 2·s·h_kv·v; ring-style methods (ring,
    token_ring, burst) hold two K/V blocks in flight, 4·(s/G)·h_kv·v, and Ulysses / USP their all-to-all
    buffers, 2·(s/G)·(h + 2h_kv)·v — both transient, counted once, not per layer.
    """
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute={recompute!r} is invalid: expected one of {list(RECOMPUTE)}")
    if isinstance(sp_degree, bool) or not isinstance(sp_degree, int) or sp_degree < 1:
        raise ValueError(f"sp_degree={sp_degree!r} is invalid: expected an integer >= 1")
    if sp_method not in SP_METHODS:
        raise ValueError(f"sp_method={sp_method!r} is invalid: expected one of {list(SP_METHODS)}")
    if not shape.num_layers:
        return 0.0
    s = seq_len or shape.seq_len
    if s % sp_degree:
        raise ValueError(f"sp_degree={sp_degree!r} is invalid: it must divide the sequence length {s}")
    pr, g = profile, sp_degree
    b, h, a, f, kv, v = micro_batch, shape.hidden, shape.heads, shape.ffn, shape.kv_dim, pr.value
    tok = b * s // g  # tokens on this rank
    mask = 1 if pr.dropout else 0
    if recompute == "full":
        per_layer = tok * v * h
    else:
        act = 2 if shape.style == "gpt2" else 3  # GELU: its input and output; SwiGLU: gate, up, product
        attn = tok * (v * (3 * h + 2 * kv) + mask * h)
        mlp = tok * (v * h + mask * h + v * act * f * shape.top_k)
        norms = tok * (2 * v * h + (16 if pr.norm_stats else 0))
        core = 0 if recompute == "selective" else tok * a * s * (v + mask * (1 + v))
        per_layer = attn + mlp + norms + core + (s * s // g if pr.causal_mask else 0)
    if g > 1 and sp_method == "lss" and recompute != "full":
        per_layer += 2 * b * s * kv * v
    transient = 0
    if g > 1:
        transient = 4 * tok * kv * v if sp_method in ("ring", "token_ring", "burst") else (
            2 * tok * (h + 2 * kv) * v if sp_method in ("ulysses", "usp") else 0)
    return float(shape.num_layers * per_layer + transient)
