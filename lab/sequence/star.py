"""Star Attention: two-phase block-sparse inference over hosts that each hold a block of the context.

Paper: Acharya, Jia, Ginsburg, "Star Attention: Efficient LLM Inference over Long Sequences",
arXiv 2411.17116; code NVIDIA/Star-Attention (spec B7).

Phase 1 (context encoding, no communication): the context is cut into one block per host; every host
prefixes its block with the *anchor block* (the context's first `anchor` tokens, at their original
positions; every host knows the prompt, so it computes the anchor itself) and runs plain causal
attention over [anchor; block]; the anchor's outputs and K/V are then dropped. The first host has no
anchor. A block therefore never sees the blocks between the anchor and itself: phase 1 is approximate
(E2) except on 2 hosts with anchor = block size, where every block sees everything before it.

Phase 2 (query, exact): the query tokens are replicated to every host; each host attends them to its
cached K/V — the last host also to the query's own K/V, causally — and returns (out, lse); an all-gather
of (out, lse) and the LSE merge give exact attention over the whole cache. Bytes per rank per layer
(per query/decode step): (G−1)·(B·n_q·h·b + B·H·n_q·4).

`star_gpt_error` runs both phases through every layer of a tiny GPT and measures how far the query
tokens' logits land from the same model's full attention: the accuracy gap is measured, not assumed.
"""
from __future__ import annotations

import torch

from lab.sequence.common import Plan, check_inputs
from lab.sequence.kernels import NEG_INF, block_attention, merge


def _phase1_mask(plan: Plan, anchor: int, c: int) -> torch.Tensor:
    """(n, A+C, A+C): causal over [anchor; block]; block queries see the anchor except on position 0."""
    t = anchor + c
    m = torch.ones(t, t, dtype=torch.bool).tril()
    out = m.expand(plan.collective.num_local, t, t).clone()
    for i, r in enumerate(plan.collective.ranks):
        if plan.position(r) == 0:
            out[i, anchor:, :anchor] = False
    return out


def star_phase1(q, k, v, *, collective, anchor: int, groups=None):
    """q, k, v (n, B, H, A+C, Dh): each host's [anchor; block] -> out (n, B, H, C, Dh) of the block."""
    check_inputs(q, k, v, collective)
    if not 0 <= anchor < q.shape[-2]:
        raise ValueError(f"anchor={anchor!r} is invalid: expected 0 <= anchor < {q.shape[-2]} (tokens per host)")
    plan = Plan(collective, groups=groups)
    out, _ = block_attention(q, k, v, _phase1_mask(plan, anchor, q.shape[-2] - anchor))
    return out[..., anchor:, :]


def star_phase2(q, k, v, k_cache, v_cache, *, collective, groups=None, tag: str = "sp"):
    """Query tokens q, k, v (n, B, H, Nq, Dh), the same on every host, against the hosts' caches
    (n, B, H, C, Dh) -> exact attention out (n, B, H, Nq, Dh) on every host."""
    check_inputs(q, k, v, collective)
    plan = Plan(collective, groups=groups)
    nq = q.shape[-2]
    last = torch.tensor([plan.position(r) == plan.group_size - 1 for r in collective.ranks])
    keys, vals = torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)
    c = k_cache.shape[-2]
    mask = torch.zeros(len(last), nq, c + nq, dtype=torch.bool)
    mask[:, :, :c] = True
    mask[last, :, c:] = torch.ones(nq, nq, dtype=torch.bool).tril()
    o, lse = block_attention(q, keys, vals, mask)
    parts = collective.all_gather(torch.cat([o, lse.unsqueeze(-1)], dim=-1), groups=plan.coll_groups,
                                  tag=f"{tag}.star.phase2")  # (n, G, B, H, Nq, Dh + 1)
    out, l = torch.zeros_like(q), torch.full(q.shape[:-1], NEG_INF)
    for j in range(parts.shape[1]):  # ascending host order on every host: identical results
        out, l = merge(out, l, parts[:, j, ..., :-1], parts[:, j, ..., -1])
    return out


def phase1_reference(q, k, v, *, num_hosts: int, anchor: int):
    """Dense single-device phase 1: (B, H, N, Dh) -> (B, H, N, Dh) with each block seeing its own past and
    (except block 0) the first `anchor` tokens."""
    n = q.shape[-2]
    blk = torch.arange(n) // (n // num_hosts)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    mask = ((blk[:, None] == blk[None, :]) & (j <= i)) | ((blk[:, None] > 0) & (j < anchor))
    s = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).masked_fill(~mask, NEG_INF)
    return s.softmax(dim=-1) @ v


@torch.no_grad()
def star_gpt_error(model, context: torch.Tensor, query: torch.Tensor, *, collective, anchor: int = 0,
                   targets: torch.Tensor | None = None) -> dict:
    """Star Attention inference of a TinyGPT over `collective.world_size` hosts (simulated: all hosts in this
    process) against the model's full attention. context (B, N), query (B, Nq) token ids; anchor 0 means
    one block. Returns the max |logit difference| on the query tokens and on the context, the share of
    query tokens whose argmax agrees, the phase-2 bytes per rank and, with next-token `targets` (B, Nq),
    the query tokens' cross-entropy under Star Attention and under full attention."""
    p = collective.world_size
    b, n = context.shape
    nq = query.shape[1]
    if n % p or n + nq > model.block_size:
        raise ValueError(f"context of {n} tokens (+{nq} query) does not fit: expected a multiple of the {p} hosts "
                         f"and at most block_size={model.block_size} tokens in all")
    c = n // p
    anchor = anchor or c
    if not 0 < anchor <= c:
        raise ValueError(f"anchor={anchor!r} is invalid: expected 1..{c} (tokens per host)")
    ranks = collective.ranks
    plan = Plan(collective)
    full = model(torch.cat([context, query], dim=1))  # (B, N + Nq, V)
    blocks = context.view(b, p, c)[:, ranks].transpose(0, 1)  # (n, B, C)
    ids = torch.cat([context[:, :anchor].expand(len(ranks), b, anchor), blocks], dim=-1).reshape(-1, anchor + c)
    pos = torch.cat([torch.arange(anchor).expand(len(ranks), anchor),
                     torch.stack([torch.arange(plan.position(r) * c, (plan.position(r) + 1) * c) for r in ranks])], 1)
    caches = []

    def phase1_hook(q, k, v):  # (n·B, H, A+C, Dh)
        q, k, v = (z.view(len(ranks), b, *z.shape[1:]) for z in (q, k, v))
        caches.append((k[..., anchor:, :], v[..., anchor:, :]))
        out, _ = block_attention(q, k, v, _phase1_mask(plan, anchor, c))
        return out.flatten(0, 1)

    before = collective.ledger.total_bytes
    ctx_logits = _with_hooks(model, [phase1_hook] * len(model.blocks),
                             lambda: model(ids, pos.repeat_interleave(b, dim=0)))
    layer = iter(range(len(model.blocks)))

    def phase2_hook(q, k, v):  # (n·B, H, Nq, Dh)
        kc, vc = caches[next(layer)]
        q, k, v = (z.view(len(ranks), b, *z.shape[1:]) for z in (q, k, v))
        return star_phase2(q, k, v, kc, vc, collective=collective).flatten(0, 1)

    q_ids = query.expand(len(ranks), b, nq).reshape(-1, nq)
    q_logits = _with_hooks(model, [phase2_hook] * len(model.blocks),
                           lambda: model(q_ids, torch.arange(n, n + nq)))[:b]  # every host holds the same
    ctx_mine = ctx_logits.view(len(ranks), b, anchor + c, -1)[:, :, anchor:]  # (n, B, C, V)
    ctx_ref = full[:, :n].reshape(b, p, c, -1)[:, ranks].transpose(0, 1)
    out = {} if targets is None else {
        "query_loss_star": float(torch.nn.functional.cross_entropy(q_logits.flatten(0, 1), targets.flatten())),
        "query_loss_full": float(torch.nn.functional.cross_entropy(full[:, n:].flatten(0, 1), targets.flatten()))}
    return out | {"query_logit_error": float((q_logits - full[:, n:]).abs().max()),
            "context_logit_error": float((ctx_mine - ctx_ref).abs().max()),
            "query_argmax_agreement": float((q_logits.argmax(-1) == full[:, n:].argmax(-1)).float().mean()),
            "logit_scale": float(full[:, n:].abs().max()),
            "phase2_bytes_per_rank": (collective.ledger.total_bytes - before) / p}


def _with_hooks(model, hooks, fn):
    old = [blk.attend for blk in model.blocks]
    try:
        for blk, h in zip(model.blocks, hooks):
            blk.attend = h
        return fn()
    finally:
        for blk, h in zip(model.blocks, old):
            blk.attend = h
