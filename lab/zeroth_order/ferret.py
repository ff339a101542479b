"""Ferret (Shu et al., ICML 2025): first-order local training, the update sent as projections on shared random
directions.

Spec Part B §B12. A sampled client trains from the global model θ0 with plain
SGD for its local steps (as FedAvg), Δ = θ0 − θ1, and encodes Δ group by group.
Groups: every parameter tensor cut into chunks of at most ⌈0.9 · median
tensor size⌉ entries (the same on both ends). For group g (size d_g):

    n_g = min(K, max(⌊||Δ_g|| / max_h ||Δ_h|| · K⌋, 2))       more coefficients where Δ moved more
    pick n_g distinct indices k of the K shared seeds (the client's own draw; the indices are sent)
    v_{k,g} = the first d_g values of a normal(0, 1) truncated to ±1/√d_g, from seed k (one stream per seed,
              reused by every group, as the released code does)
    c_{k,g} = <Δ_g, v_{k,g}> · d_g / n_g

The server reconstructs each client's Δ̂ = Σ_{k,g} u_{k,g}, u = c_{k,g} v_{k,g}
clipped to ||u|| <= 10, averages over clients (weights by data size) and sets
θ ← θ0 − η_s · mean Δ̂. The truncated normal is almost uniform on
±1/√d_g, so E[v vᵀ] ≈ I/(3 d_g) and E[Δ̂] ≈ Δ/3: the server learning rate
η_s = `ferret_server_lr` (default 3) undoes that factor (the released scripts
use 10, with their own learning rates).

What is sent per client per round: uplink Σ_g n_g fp32 coefficients + their
int16 seed indices (int32 when K > 32768) + the G counts n_g (int16); rows of
a rank-stacked packet are padded to the longest, which is what the Ledger
counts. Downlink: the global model, 4d bytes. Knobs: `ferret_seeds` K,
`ferret_server_lr`, `lr`, `local_steps` / `local_epochs`, `client_fraction`.
"""
from __future__ import annotations

import math
import statistics

import torch

from lab.comm.packet import Packet
from lab.compress.base import pad_ragged
from lab.knobs import Knob
from lab.sync.faults import RoundPlan
from lab.sync.federated import LOCAL_SGD, Federated
from lab.technique import RoundResult, TrainContext
from lab.zeroth_order.common import candidate_seeds

CLIP = 10.0


def groups_of(shapes) -> list[tuple[int, int]]:
    """(start, end) of each group of the flat vector: tensors cut into chunks of <= ⌈0.9·median numel⌉."""
    numels = [math.prod(s) for s in shapes]
    chunk = max(1, math.ceil(0.9 * statistics.median(numels)))
    out, o = [], 0
    for n in numels:
        for lo in range(0, n, chunk):
            out.append((o + lo, o + min(n, lo + chunk)))
        o += n
    return out


def projection(seed: int, d_g: int) -> torch.Tensor:
    """v (d_g,): normal(0, 1) truncated to ±1/√d_g, from `seed`."""
    bound = 1 / math.sqrt(d_g)
    return torch.nn.init.trunc_normal_(torch.empty(d_g), 0.0, 1.0, -bound, bound,
                                       generator=torch.Generator().manual_seed(int(seed)))


class Ferret(Federated):
    reads = LOCAL_SGD
    name = "ferret"
    label = "Ferret"
    contract_settings = {"ferret_seeds": 20}  # a tiny run in about a second
    knobs = {
        "ferret_seeds": Knob(200, "shared seeds K (projection directions per group, at most)", low=1, high=10**6),
        "ferret_server_lr": Knob(3.0, "server learning rate on the reconstructed update", low=0.0, low_open=True,
                                 high=1e3),
    }

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.seeds = candidate_seeds(self.config.ferret_seeds, seed=self.config.seed)  # (K,)
        self.groups = groups_of(ctx.cluster.shapes)
        self.index_dtype = torch.int16 if self.config.ferret_seeds <= 32768 else torch.int32

    def encode(self, delta: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Δ (d,) -> (coefficients (Σ n_g,), seed indices (Σ n_g,), counts (G,))."""
        k_total = self.config.ferret_seeds
        norms = torch.stack([delta[lo:hi].norm() for lo, hi in self.groups])
        top = norms.max()
        coefs, idxs, counts = [], [], []
        for (lo, hi), norm in zip(self.groups, norms):
            n_g = min(k_total, max(int(norm / top * k_total) if top > 0 else 0, 2))
            ks = torch.randperm(k_total, generator=gen)[:n_g].sort().values
            v = torch.stack([projection(self.seeds[k], hi - lo) for k in ks])  # (n_g, d_g)
            coefs.append(v @ delta[lo:hi] * ((hi - lo) / n_g))
            idxs.append(ks)
            counts.append(n_g)
        return torch.cat(coefs), torch.cat(idxs), torch.tensor(counts)

    def decode(self, coefs: torch.Tensor, idxs: torch.Tensor, counts: torch.Tensor, d: int) -> torch.Tensor:
        """The server's reconstruction Δ̂ (d,) from one client's coefficients."""
        out = torch.zeros(d)
        j = 0
        for (lo, hi), n_g in zip(self.groups, counts.tolist()):
            v = torch.stack([projection(self.seeds[int(k)], hi - lo) for k in idxs[j:j + n_g]])  # (n_g, d_g)
            u = coefs[j:j + n_g].unsqueeze(1) * v  # (n_g, d_g)
            u = u * (CLIP / u.norm(dim=1, keepdim=True).clamp(min=CLIP))
            out[lo:hi] = u.sum(0)
            j += n_g
        return out

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        c = self.config
        clients = plan.participants
        out = self.local_sgd(ctx, clients, self.global_row)
        n, d = ctx.cluster.num_local, ctx.cluster.dim
        encoded = {}
        for r, row in zip(out.clients, out.rows):
            gen = torch.Generator().manual_seed((c.seed * 1_000_003 + ctx.rounds) * 10_007 + r)
            encoded[row] = self.encode(self.global_row - out.params[out.clients.index(r)], gen)
        width = max([len(e[0]) for e in encoded.values()] + [0])
        coefs, idxs = torch.zeros(n, width), torch.zeros(n, width, dtype=self.index_dtype)
        counts = torch.zeros(n, len(self.groups), dtype=torch.int16)
        for row, (cf, ix, ct) in encoded.items():
            coefs[row, :len(cf)], idxs[row, :len(ix)], counts[row] = cf, ix.to(self.index_dtype), ct.to(torch.int16)
        packet = pad_ragged(ctx.collective, Packet({"coef": coefs, "index": idxs, "count": counts},
                                                   meta={"ragged": ("coef", "index")}))
        gathered = ctx.collective.server_gather(packet, ranks=clients, tag="projections").map(lambda t: t[0])
        weights = self.sizes[clients] / self.sizes[clients].sum()
        agg = torch.zeros(d)
        for w, r in zip(weights, clients):  # ascending client order
            t = gathered.tensors
            agg += w * self.decode(t["coef"][r], t["index"][r].long(), t["count"][r].long(), d)
        self.global_row = self.global_row - c.ferret_server_lr * agg
        return RoundResult(self.mean_loss(ctx, out, clients), {"clients": len(plan.sampled),
                                                               "uplink_bytes_per_client": packet.nbytes()})
