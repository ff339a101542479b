"""PGFed: personalized federated learning whose clients also learn from first-order approximations of
the other clients' risks.

Paper: Luo, Mendieta, Chen, Wu, "PGFed: Personalize Each Client's Global
Objective for Federated Learning", ICCV 2023 (spec §A11; round and defaults
[CODE] from ljaiverson/pgfed; accuracy numbers [UNVERIFIED] for this lab).

Client i's objective is F_i(θ) + μ·Σ_j a_ij·[L_j(θ_j) + ∇L_j(θ_j)ᵀ(θ − θ_j)]: its
own risk plus a linear approximation of every other client j's risk around
j's model, with learnable weights a_ij ≥ 0. Its gradient adds the constant
vector G_i = μ·Σ_j a_ij ∇L_j(θ_j), so nothing of order N² is sent.

Round (the gradients are one round stale: those of the previous participants J):

    server → sampled client i: the global model, G_i = μ·Σ_{j∈J} a_ij g_j, Ḡ = (μ/|J|)·Σ_{j∈J} g_j,
                               {μ·ℓ_j}_{j∈J} and its row a_i           (PGFedMo: G_i ← (1−β)G_i + β·G_i,prev)
    client i, from the global model, each local step (SGD with momentum):
        a_ij ← max(0, a_ij − λ·(μ·ℓ_j + ⟨θ, Ḡ⟩))      (the code's cheap surrogate: Ḡ for every j)
        θ ← θ − η·(∇F_i(θ; batch) + G_i)
    then one full pass over its data: g_i = ∇L_i(θ), ℓ_i = L_i(θ) − ⟨g_i, θ⟩
    client → server: θ, g_i, ℓ_i, a_i;  server: global = Σ (n_i/Σn) θ_i, keeps g, ℓ, a for the next round

Client i's trained θ is its personalized model. The metrics column
`personal_accuracy` is the mean over clients that have trained of their model's
test accuracy weighted by their own label distribution (Σ_c p_i(c)·acc_i(c):
the test set re-weighted to each client's classes, since there is no per-client
test split). With μ = 0, PGFed is FedAvg plus local fine-tuning each round.

Sent per round, per client: down the model, G_i and Ḡ (3d fp32 after the
first round), |J| loss terms and N weights; up the model and g_i (2d fp32),
ℓ_i and N weights — roughly 2–3× FedAvg's bytes. Knobs: `pgfed_mu` (0.1),
`pgfed_lambda` (0.01), `pgfed_beta` (0 = PGFed, 0.5 = PGFedMo), `lr`,
`momentum` (the paper's 0.9), `client_fraction`, `local_steps`/`local_epochs`,
client faults (sign-flipping clients upload a flipped model).
"""
from __future__ import annotations

import torch

from lab.knobs import Knob
from lab.sync.faults import RoundPlan
from lab.sync.federated import BYZANTINE, LOCAL_SGD, Federated
from lab.technique import RoundResult, TrainContext


class PGFed(Federated):
    contract_settings = {"rounds": 3}  # the auxiliary risks a_i first act in the third round
    reads = LOCAL_SGD
    name = "pgfed"
    label = "PGFed"
    knobs = {
        **BYZANTINE,
        "pgfed_mu": Knob(0.1, "weight mu of the other clients' approximated risks", low=0.0, high=1e3),
        "pgfed_lambda": Knob(0.01, "step size of the per-client weights a_ij", low=0.0, high=1e3),
        "pgfed_beta": Knob(0.0, "momentum on the auxiliary gradient (0 = PGFed, 0.5 = PGFedMo)",
                           low=0.0, high=1.0, high_open=True),
    }

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        n, d = ctx.collective.world_size, ctx.cluster.dim
        s = max(1, round(self.config.client_fraction * n))
        self.alpha = torch.full((n, n), 1.0 / s)  # a_ij, the server's copy
        self.grads = torch.zeros(n, d)  # g_j of the last participants
        self.loss_minus = torch.zeros(n)  # ℓ_j
        self.last: list[int] = []  # J
        self.prev_g = torch.zeros(ctx.cluster.num_local, d)  # (n_local, d) G_i last used by each client (PGFedMo)
        self.trained = torch.zeros(n, dtype=torch.bool)  # clients that have a personalized model
        y = ctx.batches.y
        self.classification = y.dtype == torch.long and y.dim() == 1
        if self.classification:
            classes = int(y.max()) + 1
            self.label_dist = torch.stack([torch.bincount(y[s], minlength=classes).float() / len(s)
                                           for s in ctx.batches.shards])  # (n, C) p_i(c)

    def downlink(self, ctx: TrainContext, sampled: list[int]) -> None:
        coll, mu, n = ctx.collective, self.config.pgfed_mu, self.alpha.shape[0]
        coll.server_broadcast(self.global_row, ranks=sampled, tag="model")
        if self.last:
            shared = torch.cat([self.mean_grad(), mu * self.loss_minus[self.last]])  # Ḡ and {μ ℓ_j}
            coll.server_broadcast(shared, ranks=sampled, tag="aux_shared")
        # G_i and a_i differ per client but have the same size; their bytes are what is recorded
        per_client = torch.zeros(ctx.cluster.dim + n if self.last else n)
        coll.server_broadcast(per_client, ranks=sampled, tag="aux_per_client")

    def mean_grad(self) -> torch.Tensor:
        return self.config.pgfed_mu * self.grads[self.last].mean(0) if self.last else torch.zeros(self.grads.shape[1])

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        c, p, n, d = self.config, plan.participants, ctx.collective.world_size, ctx.cluster.dim
        mine = [r for r in p if r in ctx.cluster.ranks]
        rows = [ctx.cluster.local_index(r) for r in mine]
        aux = torch.zeros(len(mine), d)  # (S, d) G_i
        if self.last:
            aux = c.pgfed_mu * self.alpha[mine][:, self.last] @ self.grads[self.last]
            aux = (1 - c.pgfed_beta) * aux + c.pgfed_beta * self.prev_g[rows]
        self.prev_g[rows] = aux
        a = self.alpha[mine].clone()  # (S, N) the clients' weights, updated every local step
        steps = torch.tensor([self.local_steps(r) for r in mine])
        t = [0]

        def direction(g, y, train):  # train == mine; y: (S, d) θ before this step
            if self.last:
                last = torch.tensor(self.last)
                active = (steps > t[0]).unsqueeze(1)  # (S, 1) clients with steps left
                dec = c.pgfed_lambda * (c.pgfed_mu * self.loss_minus[last] + (y @ self.mean_grad()).unsqueeze(1))
                a[:, last] = torch.where(active, (a[:, last] - dec).clamp(min=0), a[:, last])
            t[0] += 1
            return g + aux

        out = self.local_sgd(ctx, p, self.global_row, direction=direction)
        up = torch.zeros(ctx.cluster.num_local, d + 1 + n)  # (n, d + 1 + N): g_i, ℓ_i, a_i
        for i, (r, row) in enumerate(zip(mine, rows)):
            theta, shard = out.params[i], ctx.batches.shards[r]
            loss, g = ctx.cluster.loss_and_grad(theta.unsqueeze(0), ctx.batches.x[shard].unsqueeze(0),
                                                ctx.batches.y[shard].unsqueeze(0))  # one full pass over its data
            up[row] = torch.cat([g[0], (loss[0] - g[0] @ theta).reshape(1), a[i]])
        uploads = self.faults.flip(ctx.cluster.params.detach(), self.global_row, ctx.cluster.ranks)  # (n, d)
        weights = torch.zeros(n, dtype=torch.float64)  # the server sums in float64 (as FedAvg)
        weights[p] = self.sizes[p] / self.sizes[p].sum()
        self.global_row = ctx.collective.server_reduce(uploads, weights=weights, ranks=p, tag="model").clone()
        got = ctx.collective.server_gather(up, ranks=p, tag="aux")[0]  # (N, d + 1 + N) as the server holds it
        self.grads[p], self.loss_minus[p], self.alpha[p] = got[p, :d], got[p, d], got[p, d + 1:]
        self.last = list(p)
        self.trained[p] = True
        return RoundResult(self.mean_loss(ctx, out, p), {"personal_accuracy": self.personal_accuracy(ctx)})

    def personal_accuracy(self, ctx: TrainContext) -> float:
        """Mean over trained clients of Σ_c p_i(c)·acc_i(c) on the test set (observer view, not sent)."""
        if not self.classification or ctx.data is None or not self.trained.any():
            return float("nan")
        x, y = ctx.data.x_test, ctx.data.y_test
        classes = self.label_dist.shape[1]
        count = torch.bincount(y, minlength=classes).clamp(min=1).float()
        total = torch.zeros(ctx.cluster.num_local, 1, dtype=torch.float64)
        for row, r in enumerate(ctx.cluster.ranks):
            if self.trained[r]:
                hit = (ctx.cluster.evaluate(ctx.cluster.params.detach()[row], x).argmax(-1) == y).float()
                total[row] = float(self.label_dist[r] @ (torch.zeros(classes).index_add_(0, y, hit) / count))
        return float(ctx.collective.all_reduce(total, op="sum", record=False)[0, 0]) / int(self.trained.sum())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "alpha": self.alpha, "grads": self.grads, "loss_minus": self.loss_minus,
                "last": self.last, "prev_g": self.prev_g, "trained": self.trained}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.alpha, self.grads, self.loss_minus = state["alpha"], state["grads"], state["loss_minus"]
        self.last, self.prev_g, self.trained = list(state["last"]), state["prev_g"], state["trained"]
