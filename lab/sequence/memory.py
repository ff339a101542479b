"""Activation memory per rank of a sequence-parallel transformer, for the planner and the notebook.

`activation_bytes(...)` counts the tensors autograd keeps for the backward pass on one rank of an SP group
of degree G, for the tiny GPT's pre-LN block as it runs here (`lab.sequence.gpt`): per layer and per
local token (C = N/G tokens per rank, b bytes per element),

- the two layer norms: input and normalized input, 2·2h (each rank's weights are its own under vmap, so
  the affine step keeps x̂ too), and mean and rstd in fp32, 2·2·4 bytes;
- the inputs of the four linear layers: qkv h, proj h, fc h, fc_out 4h; the MLP's GELU input, 4h;
- attention: Q, K, V 3h (whichever layout the method keeps them in: Ulysses keeps the head-sharded copy
  of the same size), the output h and the log-sum-exp H (fp32);

that is B·C·(19h·b + (H + 4)·4) bytes per layer. LSS Transformer also keeps the gathered K/V of the whole
sequence, 2·B·N·h·b per layer: the one method whose activations do not shrink as 1/G. The head adds,
once, the final norm (3h·b + 2·4), the logits (V·b), the targets and token ids (8 + 8) per token and
the position ids (8 per local position). No N² term: every method keeps (out, lse) and recomputes the
scores in the backward pass, as FlashAttention does.

`measured_activation_bytes(...)` measures the same on the real model (the storages autograd saved,
parameters excluded), so the test can hold the formula to it.
"""
from __future__ import annotations

import torch

from lab.sequence.attention import METHODS


def activation_bytes(*, batch: int, seq: int, hidden: int, layers: int, heads: int, sp_degree: int,
                     method: str, vocab: int = 0, bytes_per_element: int = 4) -> int:
    """Bytes of saved activations on one rank (see the module docstring); vocab = 0 leaves out the head."""
    for name, v in (("batch", batch), ("seq", seq), ("hidden", hidden), ("layers", layers), ("heads", heads),
                    ("sp_degree", sp_degree), ("bytes_per_element", bytes_per_element)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is invalid: expected an integer >= 1")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: expected one of {list(METHODS)}")
    if seq % sp_degree or hidden % heads:
        raise ValueError(f"seq={seq} over sp_degree={sp_degree}, hidden={hidden} over heads={heads}: expected "
                         "both to divide evenly")
    b, h, c = bytes_per_element, hidden, seq // sp_degree
    per_layer = batch * c * (19 * h * b + (heads + 4) * 4)
    if method == "lss":
        per_layer += 2 * batch * seq * h * b
    total = layers * per_layer
    if vocab:
        total += batch * c * (3 * h * b + 2 * 4 + vocab * b + 8 + 8) + c * 8
    return int(total)


def measured_activation_bytes(model, x, y, *, collective, method: str, layout: str = "contiguous") -> float:
    """Bytes autograd saves per rank for the SP loss of TinyGPT `model` on token ids x, y (B, T) split over
    `collective.world_size` ranks: distinct storages, parameters and scalars excluded."""
    import torch.nn.functional as F

    from lab.cluster import Cluster
    from lab.sequence.gpt import sp_losses, sp_plan, split_batch

    g = collective.world_size
    cluster = Cluster(model, num_workers=g, loss_fn=F.cross_entropy, ranks=collective.ranks)
    params = cluster.params.untyped_storage().data_ptr()
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if t.numel() > 1 and st.data_ptr() != params:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    xs, ys, pos = split_batch(x, y, group_size=g, layout=layout)
    idx = list(collective.ranks)
    plan = sp_plan(collective, method=method, layout=layout, groups=None)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sp_losses(cluster, cluster.params, xs[idx], ys[idx], pos[idx], plan=plan, method=method,
                  group_tokens=x.numel())
    return sum(seen.values()) / len(idx)
