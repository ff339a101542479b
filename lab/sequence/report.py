"""Tables the sequence-parallel notebook shows: exactness of every method against full attention, the
bytes the Ledger counted against the spec's formulas, and single-device reference training.

Everything runs for real on simulated ranks (fp32, small shapes); nothing here is a prediction.
"""
from __future__ import annotations

import pandas as pd
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.attention import METHODS, sp_attention
from lab.sequence.dsp import dsp_block, dsp_reference
from lab.sequence.kernels import attention
from lab.sequence.lasp import lasp_attention, linear_attention, slopes
from lab.sequence.layout import shard, unshard
from lab.topology import preset


def spec_bytes(method: str, *, p: int, batch: int, seq: int, heads: int, head_dim: int, b: int = 4,
               ulysses_degree: int = 1):
    """(forward, backward) bytes per rank per layer from the spec's formulas (§B2–§B8; multi-head), or None.
    LASP's are the middle ranks' (the chain's ends send one direction only). USP: Ulysses over U =
    `ulysses_degree` ranks, then Ring Attention over R = P/U on H/U heads of N/R tokens."""
    h, c = heads * head_dim, seq // p
    kv = 2 * batch * c * h * b
    if method == "usp":
        u = ulysses_degree
        r = p // u
        a2a = (u - 1) / u * batch * c * 4 * h * b
        return a2a + (r - 1) * kv, a2a + (r - 1) * kv + r * 2 * batch * c * h * 4
    if method in ("ring", "burst"):
        fwd = (p - 1) * kv
        if method == "ring":
            return fwd, (p - 1) * kv + p * 2 * batch * c * h * 4
        return fwd, (p - 1) * batch * c * (2 * h * b + 2 * heads * 4) + p * batch * c * h * 4
    if method == "token_ring":
        return ((p - 1) * batch * c * h * b + (p - 1) * (batch * c * h * b + batch * c * heads * 4),
                (p - 1) * batch * c * (2 * h * b + 2 * heads * 4) + (p - 1) * batch * c * h * 4)
    if method == "ulysses":
        x = (p - 1) / p * batch * c * 4 * h * b
        return x, x
    if method == "lss":
        x = (p - 1) / p * 2 * batch * seq * h * b
        return x, x
    if method == "lasp":
        return batch * heads * head_dim * head_dim * 4, batch * heads * head_dim * head_dim * 4
    return None


def exactness(*, num_ranks: int, batch: int = 2, heads: int = 4, seq: int = 64, head_dim: int = 8,
              topology: str = "leaf_spine", seed: int = 0) -> pd.DataFrame:
    """Max |difference| of output and input gradients against the single-device computation, and bytes per
    rank per layer (Ledger) beside the spec's formula, for every method and mask."""
    p = num_ranks
    rows = []
    cases = [(m, causal, layout) for m in METHODS for causal, layout in
             ((False, "contiguous"), (True, "contiguous"), (True, "zigzag"))]
    cases += [("lasp", True, "contiguous"), ("dsp", False, "contiguous")]
    for method, causal, layout in cases:
        g = torch.Generator().manual_seed(seed)
        ledger = Ledger(preset(topology, p))
        coll = SimulatedCollective(world_size=p, ledger=ledger)
        if method == "dsp":  # (B, T, S, h) video-like activations, T sharded
            x = torch.randn(batch, seq // 4, 8, heads * head_dim, generator=g, requires_grad=True)
            ref = dsp_reference(x, num_heads=heads)
            d_out = torch.randn(ref.shape, generator=g)
            want = (ref.detach(), *torch.autograd.grad(ref, (x,), d_out))
            xs = shard(x.detach(), p, dim=1).requires_grad_()
            out = dsp_block(xs, collective=coll, num_heads=heads)
            fwd = ledger.bytes_per_rank().max()
            out.backward(shard(d_out, p, dim=1))
            got = (unshard(out.detach(), dim=1), unshard(xs.grad, dim=1))
        else:
            scale = head_dim ** -0.5 if method == "lasp" else 1.0
            q, k, v = ((torch.randn(batch, heads, seq, head_dim, generator=g) * (scale if i < 2 else 1.0))
                       .requires_grad_() for i in range(3))
            ref = linear_attention(q, k, v, slopes(heads)) if method == "lasp" else attention(q, k, v, causal=causal)
            d_out = torch.randn(ref.shape, generator=g)
            want = (ref.detach(), *torch.autograd.grad(ref, (q, k, v), d_out))
            qs, ks, vs = (shard(t.detach(), p, layout).requires_grad_() for t in (q, k, v))
            out = (lasp_attention(qs, ks, vs, collective=coll) if method == "lasp" else
                   sp_attention(qs, ks, vs, method=method, collective=coll, causal=causal, layout=layout))
            fwd = ledger.bytes_per_rank().max()
            out.backward(shard(d_out, p, layout))
            got = tuple(unshard(t, layout) for t in (out.detach(), qs.grad, ks.grad, vs.grad))
        formula = spec_bytes(method, p=p, batch=batch, seq=seq, heads=heads, head_dim=head_dim,
                             ulysses_degree=min(ledger.topology.ranks_per_node, p))
        if method == "dsp":  # two switches of the (B, T, S, h) activations, each (P-1)/P of a rank's share
            formula = (2 * (p - 1) / p * x.numel() / p * 4,) * 2
        rows.append({"method": method, "mask": ("causal " + layout) if causal else "none",
                     "max |Δ out|": float((got[0] - want[0]).abs().max()),
                     "max |Δ grad|": max(float((a - b).abs().max()) for a, b in zip(got[1:], want[1:])),
                     "bytes fwd (Ledger)": int(fwd), "bytes fwd (spec)": None if formula is None else formula[0],
                     "bytes bwd (Ledger)": int(ledger.bytes_per_rank().max() - fwd),
                     "bytes bwd (spec)": None if formula is None else formula[1]})
    return pd.DataFrame(rows)


def reference_losses(config) -> list[float]:
    """Training losses of the plain TinyGPT on one device over the batches SP group 0 of `config` draws
    (same seed, batch size, optimizer and learning rate): what `sequence_parallel` must reproduce."""
    from lab.data import RankBatches, load_chars, partition
    from lab.models import build_model

    data = load_chars()
    spec = build_model("gpt", data, seed=config.seed)
    params = list(spec.module.parameters())
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"optimizer={config.optimizer!r} is invalid here: expected 'adamw' or 'sgd'")
    num_groups = config.num_workers // (config.sp_degree or config.num_workers)
    batches = RankBatches(data.x_train, data.y_train,
                          partition(data.num_train, None, scheme="iid", num_workers=num_groups, seed=config.seed),
                          batch_size=config.batch_size, seed=config.seed, ranks=[0])
    out = []
    for _ in range(config.steps):
        x, y = batches.next()
        loss = spec.loss_fn(spec.module(x[0]), y[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out
