"""What the MoE notebook measures at scale: expert-parallel all-to-all cost, routing traces of a trained model,
and ScMoE's timeline for a realistic layer — computed with the same cost functions the Ledger charges.

- `alltoall_cost`: one dispatch of a routed batch (T tokens per rank, top-k of E experts, h values of b bytes)
  on a topology: the all_to_all_v's true bytes per pair costed by `lab.moe.exchange.pairwise_v_cost`.
  Routing is uniform (each token's k experts drawn without replacement) unless `probs` skews it.
- `ep_sweep`: that cost against experts per rank (E fixed, EP degree P = E / experts per rank) on the networks of
  `NETWORKS` (nodes of fixed size, so a larger EP group spans more nodes).
- `routing_trace`: every token's first-choice expert in every layer of a trained MoE model (for ExFlow).
- `scmoe_layers`: ScMoE's LayerTimes for a transformer layer of given size from FLOPs and `alltoall_cost`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from lab.moe.exchange import pairwise_v_cost
from lab.moe.layer import contiguous_hosts, reference
from lab.moe.model import MoEShape, forward, full_experts
from lab.topology import preset


def route_counts(num_ranks: int, *, num_experts: int, top_k: int, tokens_per_rank: int, seed: int = 0,
                 probs=None) -> np.ndarray:
    """(P, E) assignments each rank sends to each expert, each token picking k distinct experts."""
    rng = np.random.default_rng(seed)
    p = np.full(num_experts, 1 / num_experts) if probs is None else np.asarray(probs, dtype=float)
    keys = rng.random((num_ranks, tokens_per_rank, num_experts)) ** (1 / p)  # weighted sampling w/o replacement
    top = np.argsort(-keys, axis=-1)[..., :top_k]  # (P, T, k)
    return np.stack([np.bincount(top[r].ravel(), minlength=num_experts) for r in range(num_ranks)])


def alltoall_cost(topology, *, num_experts: int, top_k: int, tokens_per_rank: int, hidden: int,
                  bytes_per_element: int = 2, seed: int = 0, probs=None) -> dict:
    """Seconds, bytes per rank (mean, by link class) and the busiest rank's received rows of one dispatch."""
    p = topology.num_ranks
    hosts = contiguous_hosts(num_experts, p)
    counts = route_counts(p, num_experts=num_experts, top_k=top_k, tokens_per_rank=tokens_per_rank, seed=seed,
                          probs=probs)
    rows = np.stack([counts[:, hs].sum(1) for hs in hosts], axis=1)  # (P, P) rank i -> rank j
    cost = pairwise_v_cost(topology, rows * hidden * bytes_per_element)
    return {"seconds": cost.seconds, "bytes_intra": float(cost.bytes["intra"].mean()),
            "bytes_inter": float(cost.bytes["inter"].mean()), "max_rows": int(rows.sum(0).max()),
            "mean_rows": float(rows.sum(0).mean())}


def _nodes_of_8(p: int):
    """H100s in nodes of 8 on NVLink, nodes joined by 400 Gb/s InfiniBand (multinode_4x8's links), P ranks."""
    return replace(preset("multinode_4x8", 32), name="ib_nodes_of_8", num_ranks=p, ranks_per_node=min(8, p))


#: the networks of the all-to-all sweep: a name and how to build it for P ranks
NETWORKS = {"one NVLink node": lambda p: preset("nvlink_node", p),
            "8-GPU nodes, InfiniBand": _nodes_of_8,
            "2-GPU nodes, leaf-spine 4:1": lambda p: preset("leaf_spine", p)}


def ep_sweep(networks, experts_per_rank, *, num_experts: int, top_k: int, tokens_per_rank: int, hidden: int,
             bytes_per_element: int = 2) -> pd.DataFrame:
    """One row per (network of `NETWORKS`, experts per rank) that fits: EP degree, bytes, dispatch seconds."""
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise ValueError(f"networks={list(networks)!r} is invalid: expected some of {list(NETWORKS)}")
    out = []
    for name in networks:
        for e in experts_per_rank:
            if num_experts % e:
                continue
            p = num_experts // e
            try:
                t = NETWORKS[name](p)
            except ValueError:
                continue
            c = alltoall_cost(t, num_experts=num_experts, top_k=top_k, tokens_per_rank=tokens_per_rank,
                              hidden=hidden, bytes_per_element=bytes_per_element)
            out.append({"network": name, "experts_per_rank": e, "ep_degree": p, "ranks_per_node": t.ranks_per_node,
                        "dispatch_seconds": c["seconds"], "bytes_intra": c["bytes_intra"],
                        "bytes_inter": c["bytes_inter"],
                        "predicted_bytes": (p - 1) / p * top_k * tokens_per_rank * hidden * bytes_per_element})
    return pd.DataFrame(out)


@torch.no_grad()
def routing_trace(shape: MoEShape, row: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """(tokens, layers) first-choice expert of every token of inputs x (M, ...) in every layer."""
    dense, experts = full_experts(shape, row)
    _, _, routings = forward(shape, dense, x.unsqueeze(0), lambda l, t, r: reference(t, r, *experts[l]))
    return torch.stack([r.expert[0, :, 0] for r in routings], dim=1).numpy()


def scmoe_layers(topology, *, num_layers: int, tokens_per_rank: int, hidden: int, ffn: int, seq_len: int,
                 num_experts: int, top_k: int = 1, bytes_per_element: int = 2):
    """ScMoE LayerTimes of `num_layers` identical layers: attention (projections + causal core), the shared
    expert (one dense MLP of width `ffn`), top-k experts, and the dispatch / combine all-to-alls."""
    from lab.moe.scmoe import LayerTimes

    t, h, f = tokens_per_rank, hidden, ffn
    sec = topology.compute_seconds
    a2a = alltoall_cost(topology, num_experts=num_experts, top_k=top_k, tokens_per_rank=t, hidden=h,
                        bytes_per_element=bytes_per_element)["seconds"]
    layer = LayerTimes(attention=sec(t * (8 * h * h + 2 * seq_len * h)), shared=sec(t * 4 * h * f),
                       experts=sec(t * top_k * 4 * h * f), dispatch=a2a, combine=a2a, dispatch_bwd=a2a,
                       combine_bwd=a2a)
    return [layer] * num_layers
