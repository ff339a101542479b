"""FedKSeed (Qin et al., ICML 2024): federated zeroth-order training from K candidate seeds; only scalars travel.

Spec Part B §B10. Everyone knows w0 and K candidate seeds (from the config
seed). A model is w0 plus one accumulated scalar per seed:
θ = w0 − lr · Σ_k A[k] z_k with z_k ~ N(0, I) from seed k.

Round: the server samples clients and sends each the accumulated pool A (K
fp32; with importance sampling also the K seed probabilities, fp32). A client
rebuilds θ and takes τ zeroth-order steps, each on one seed k drawn from the
probabilities (uniform, or FedKSeed-Pro's `importance`): g = (L(θ+εz_k) −
L(θ−εz_k)) / 2ε on its next batch, θ ← θ − lr·g·z_k. It uploads its τ (k, g)
pairs — int16 seed indices (int32 when K > 32768) and fp32 scalars — or, when
smaller, its dense per-seed sum (K fp32). The server adds the weighted
(by data size) sum of the clients' scalars to A and applies the same
reconstruction to the global model.

Importance (FedKSeed-Pro): p = softmax(minmax(mean_k |clip(h_k, ±1000)|)) over
the history h_k of aggregated scalars of seed k (seeds never chosen count 0).

What is sent per client per round: uplink min(τ·(2 + 4), 4K) bytes (4K = 16 KiB
for K = 4096, the paper's "< 18 KB"); downlink 4K (+ 4K with importance).
Knobs: `zo_seeds` K, `zo_eps` ε, `lr`, `local_steps` τ (0: local_epochs ·
⌈n_i/B⌉ as FedAvg), `zo_seed_sampling` ('uniform' | 'importance'),
`client_fraction`. Plain steps (no weight decay, no momentum: exact
reconstruction needs the update linear in the scalars). `rebuild()` recomputes
θ from w0 and A, as a client would; it equals the incrementally updated global
model up to float rounding. The simulated compute clock counts a zeroth-order
step as a training step (it is two forward passes, about 2/3 of one).
"""
from __future__ import annotations

import torch

from lab.comm.packet import Packet
from lab.knobs import Knob
from lab.sync.faults import RoundPlan
from lab.sync.federated import Federated, LocalTraining
from lab.technique import RoundResult, TrainContext
from lab.zeroth_order.common import ZO_KNOBS, candidate_seeds, direction, directions, spsa


def seed_probabilities(abs_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """FedKSeed-Pro: softmax of the min-max-normalized mean |aggregated scalar| per seed (K,)."""
    mean = torch.where(count > 0, abs_sum / count.clamp(min=1), torch.zeros_like(abs_sum))
    span = mean.max() - mean.min()
    norm = (mean - mean.min()) / span if span > 0 else torch.zeros_like(mean)
    return torch.softmax(norm, dim=0)


class FedKSeed(Federated):
    name = "fedkseed"
    default_lr = 0.02  # zeroth-order steps at 0.5 blow up (loss 9,237 after 2 rounds)
    label = "FedKSeed"
    knobs = {
        **ZO_KNOBS,
        "zo_seeds": Knob(4096, "candidate seeds K", low=1, high=10**7),
        "zo_seed_sampling": Knob("uniform", "how clients draw seeds (importance = FedKSeed-Pro)",
                                 choices=("uniform", "importance")),
    }

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        c = self.config
        self.seeds = candidate_seeds(c.zo_seeds, seed=c.seed)  # (K,) int64
        self.w0 = self.global_row.clone()  # (d,)
        self.pool = torch.zeros(c.zo_seeds, dtype=torch.float64)  # A[k]
        self.abs_sum = torch.zeros(c.zo_seeds, dtype=torch.float64)  # history of |clip(aggregate)| per seed
        self.count = torch.zeros(c.zo_seeds, dtype=torch.float64)
        self.index_dtype = torch.int16 if c.zo_seeds <= 32768 else torch.int32

    @property
    def probabilities(self) -> torch.Tensor:
        if self.config.zo_seed_sampling == "importance":
            return seed_probabilities(self.abs_sum, self.count).float()
        return torch.full((self.config.zo_seeds,), 1.0 / self.config.zo_seeds)

    def downlink(self, ctx: TrainContext, sampled: list[int]) -> None:
        ctx.collective.server_broadcast(self.pool.float(), ranks=sampled, tag="seed_pool")
        if self.config.zo_seed_sampling == "importance":
            ctx.collective.server_broadcast(self.probabilities, ranks=sampled, tag="seed_probs")

    def rebuild(self) -> torch.Tensor:
        """θ = w0 − lr · Σ_k A[k] z_k (d,), from the pool alone (what a stateless client does)."""
        used = self.pool.nonzero().flatten()
        z = directions(self.seeds[used], self.w0.numel()).double()  # (U, d)
        return (self.w0.double() - self.config.lr * (self.pool[used].unsqueeze(1) * z).sum(0)).float()

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        c = self.config
        d, k_total = self.w0.numel(), c.zo_seeds
        clients = plan.participants
        mine = [r for r in clients if r in ctx.cluster.ranks]
        n = ctx.cluster.num_local
        tau = max(self.local_steps(r) for r in clients)
        probs = self.probabilities
        idx = torch.zeros(n, tau, dtype=torch.long)  # seed index of each step (unused rows stay 0)
        vals = torch.zeros(n, tau)  # its scalar (0 for steps a client does not take)
        loss_sum = torch.zeros(n, dtype=torch.float64)
        if mine:
            rows = [ctx.cluster.local_index(r) for r in mine]
            steps = torch.tensor([self.local_steps(r) for r in mine])
            gens = [torch.Generator().manual_seed((c.seed * 1_000_003 + ctx.rounds) * 10_007 + r) for r in mine]
            theta = self.global_row.expand(len(mine), d).clone()  # (S_local, d)
            for t in range(int(steps.max())):
                active = steps > t  # (S_local,)
                ks = torch.stack([torch.multinomial(probs, 1, generator=g)[0] for g in gens])  # (S_local,)
                z = torch.stack([direction(int(self.seeds[k]), d) for k in ks])  # (S_local, d)
                xb, yb = ctx.batches.next(mine)
                g, loss = spsa(ctx, theta, z, xb, yb, eps=c.zo_eps)
                g = torch.where(active, g, torch.zeros_like(g))
                theta = theta - c.lr * g.unsqueeze(1) * z
                idx[rows, t], vals[rows, t] = ks, g
                loss_sum[rows] += torch.where(active, loss, torch.zeros_like(loss)).double()
            ctx.cluster.set_rows(theta, rows)
        # uplink: the (index, scalar) pairs, or the dense per-seed sums when smaller
        pairs_bytes = tau * (torch.tensor([], dtype=self.index_dtype).element_size() + 4)
        if pairs_bytes <= 4 * k_total:
            packet = Packet({"index": idx.to(self.index_dtype), "value": vals})
        else:
            dense = torch.zeros(n, k_total).scatter_add_(1, idx, vals)
            packet = Packet({"pool": dense})
        gathered = ctx.collective.server_gather(packet, ranks=clients, tag="seed_scalars").map(lambda t: t[0])
        weights = self.sizes[clients] / self.sizes[clients].sum()
        agg = torch.zeros(k_total, dtype=torch.float64)
        for w, r in zip(weights, clients):  # ascending client order
            if "pool" in gathered.tensors:
                agg += w.double() * gathered.tensors["pool"][r].double()
            else:
                agg.index_add_(0, gathered.tensors["index"][r].long(),
                               w.double() * gathered.tensors["value"][r].double())
        used = agg.nonzero().flatten()
        z = directions(self.seeds[used], d).double()  # (U, d)
        self.global_row = (self.global_row.double() - c.lr * (agg[used].unsqueeze(1) * z).sum(0)).float()
        self.pool += agg
        self.abs_sum[used] += agg[used].clamp(-1000, 1000).abs()
        self.count[used] += 1
        rows = [ctx.cluster.local_index(r) for r in mine]
        steps = torch.tensor([self.local_steps(r) for r in mine], dtype=torch.float64)
        out = LocalTraining(mine, rows, ctx.cluster.params.detach()[rows], loss_sum[rows] / steps, None)
        down = 4 * k_total * (2 if c.zo_seed_sampling == "importance" else 1)
        return RoundResult(self.mean_loss(ctx, out, clients), {"uplink_bytes_per_client": packet.nbytes(),
                                                               "downlink_bytes_per_client": down})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pool": self.pool, "abs_sum": self.abs_sum, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pool, self.abs_sum, self.count = state["pool"], state["abs_sum"], state["count"]
