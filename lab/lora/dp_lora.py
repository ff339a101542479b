"""DP-LoRA (Liu et al. 2023): federated LoRA with clipped client updates and Gaussian noise, (ε, δ) reported.

Spec Part B §B16 [RECON: the algorithm is reconstructed from summaries; no code
was read]. The Gaussian mechanism on each client's update of its trainable
vector (LoRA factors + head), U_i = u_i − u, clipped to ||U_i||₂ ≤ C; the
privacy unit is a client's whole dataset (client-level DP, add/remove
neighbours, sensitivity C). Two threat models, chosen by `dp_model`, with the
noise where each one needs it (`lab.lora.accountant.THREAT_MODELS`):

**local** (default; the spec's reading of the paper): each client adds its own
noise before sending,

    client i: U_i ← clip(U_i) + N(0, σ² C² I)     (noise from a (seed, round, client) generator)
    server:   u ← u + Σ_i w_i U_i                  (data-size weights, summed in float64)

The guarantee holds against everyone, the server included. The server picks
the sample and sees each noisy update with its sender, so sampling gives no
amplification against it: a client's ε is that of the plain Gaussian mechanism
composed over the rounds it sent an update in, and the reported ε is the
largest over the clients (the one sampled most often; every round with
client_fraction = 1). Clients are sampled as in FedAvg (a fixed-size sample).

**central** (an honest server; DP-FedAvg's construction, McMahan et al. 2018):
the server samples each client independently with probability q =
`client_fraction` (Poisson sampling, so the sample size varies and can be 0;
an empty round sends and trains nothing), clients send clipped updates without
noise, and the server adds the noise to their sum and divides by the expected
sample size q·M (M: the clients it knows this round; a fixed denominator keeps
the sensitivity at C):

    server: u ← u + (Σ_{i∈S} clip(U_i) + N(0, σ² C² I)) / (q·M)

The guarantee holds against everyone who sees the models the server releases,
not against the server; ε is the Poisson-subsampled Gaussian mechanism's at
rate q over every round so far (amplification by sampling). It assumes the
sample stays secret: the metrics' `sampled`/`participants` columns are then the
server's private log, and the run's seed stands in for its private randomness.

Reported every round (metrics columns): `dp_epsilon` at `dp_delta` (the RDP
accountant, `lab.lora.accountant`, which matches Google's `dp_accounting` and
Opacus), `dp_model`, and `dp_releases` (the releases composed: the busiest
client's uplinks for local DP, the rounds for central DP). Noise on both A and
B is multiplied in B·A (the spec's noise-amplification pitfall): expect the
utility to fall quickly as σ grows; central DP needs far less noise per client
for the same ε (one N(0, σ²C²) for the whole sum instead of one per client).

What is sent: as LoRA, uplink 4p and downlink 4p bytes per client (noise adds
nothing). Knobs: `dp_model`, `dp_clip` C, `dp_noise` σ (noise multiplier),
`dp_delta`, `lora_rank`, `lora_alpha`, `lr`, `client_fraction`.
"""
from __future__ import annotations

import torch

from lab.knobs import Knob
from lab.lora.accountant import epsilon
from lab.lora.peft import PeftFederated
from lab.sync.faults import RoundPlan
from lab.technique import RoundResult, TrainContext

DP_MODELS = ("local", "central")


def privatize(update: torch.Tensor, *, clip: float, noise: float, gen: torch.Generator | None) -> torch.Tensor:
    """Clip a client's update (p,) to L2 norm `clip`, then add N(0, (noise·clip)² I) (none when noise is 0)."""
    norm = float(update.norm())
    clipped = update * min(1.0, clip / norm) if norm > 0 else update
    if not noise:
        return clipped
    return clipped + noise * clip * torch.randn(update.shape, generator=gen, dtype=update.dtype)


def poisson_sample(num_clients: int, q: float, *, seed: int, round_index: int,
                   population: list[int] | None = None) -> list[int]:
    """Every client of `population` (default: all) independently with probability q, from a generator seeded by
    (seed, round), so every process agrees; the sample may be empty."""
    g = torch.Generator().manual_seed(seed * 100_019 + round_index * 7 + 3)
    u = torch.rand(num_clients, generator=g, dtype=torch.float64)  # (N,)
    pool = range(num_clients) if population is None else population
    return sorted(c for c in pool if float(u[c]) < q)


class DPLoRA(PeftFederated):
    name = "dp_lora"
    label = "DP-LoRA"
    knobs = {
        "dp_model": Knob("local", "threat model: 'local' (each client noises its clipped update; epsilon without "
                         "sampling amplification) or 'central' (an honest server noises the sum; Poisson client "
                         "sampling at client_fraction amplifies)", choices=DP_MODELS),
        "dp_clip": Knob(1.0, "clipping norm C of a client's update", low=0.0, low_open=True, high=1e6),
        "dp_noise": Knob(0.3, "noise multiplier sigma (noise std sigma * C)", low=0.0, low_open=True, high=1e6),
        "dp_delta": Knob(1e-5, "the delta of the reported (epsilon, delta)", low=0.0, low_open=True, high=1.0,
                         high_open=True),
    }
    mode = "lora"

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.releases = torch.zeros(ctx.collective.world_size, dtype=torch.long)  # (P,) noisy uplinks per client
        self.plan: RoundPlan | None = None

    # ---- sampling: Poisson for central DP ------------------------------------------------------------
    def plan_round(self, ctx: TrainContext, sampled: list[int] | None = None) -> RoundPlan:
        c = self.config
        if sampled is None and c.dp_model == "central":
            sampled = poisson_sample(ctx.collective.world_size, c.client_fraction, seed=c.seed,
                                     round_index=ctx.rounds, population=self.faults.members(ctx.rounds))
        self.plan = super().plan_round(ctx, sampled)
        return self.plan

    def downlink(self, ctx: TrainContext, sampled: list[int]) -> None:
        if sampled:  # a Poisson sample may be empty: nothing is sent
            super().downlink(ctx, sampled)

    def finish_round(self, ctx: TrainContext, plan: RoundPlan) -> None:
        if plan.sampled:
            super().finish_round(ctx, plan)

    # ---- the mechanism -------------------------------------------------------------------------------
    def aggregate(self, ctx, u_all, clients):
        c = self.config
        local = c.dp_model == "local"
        updates = torch.zeros_like(u_all)  # (n, p): zero rows for clients not taking part
        for r in clients:
            if r in ctx.cluster.ranks:
                row = ctx.cluster.local_index(r)
                gen = torch.Generator().manual_seed((c.seed * 1_000_003 + ctx.rounds) * 10_007 + r) if local else None
                updates[row] = privatize(u_all[row] - self.u, clip=c.dp_clip, noise=c.dp_noise if local else 0.0,
                                         gen=gen)
        if local:
            agg = ctx.collective.server_reduce(updates, weights=self.weights(ctx, clients), ranks=clients,
                                               tag="peft_update")
        else:
            expected = c.client_fraction * len(self.faults.members(ctx.rounds))  # q·M, fixed denominator
            w = torch.zeros(ctx.collective.world_size, dtype=torch.float64)
            w[clients] = 1.0 / expected
            total = ctx.collective.server_reduce(updates, weights=w, ranks=clients, tag="peft_update")
            g = torch.Generator().manual_seed(c.seed * 7_777_771 + ctx.rounds * 13 + 424_243)  # the server's noise
            noise = torch.randn(total.shape, generator=g, dtype=torch.float64) * (c.dp_noise * c.dp_clip / expected)
            agg = total.double() + noise
        self.u = (self.u + agg).to(self.u.dtype)
        return None

    def round(self, ctx: TrainContext) -> RoundResult:
        self.plan = None
        result = super().round(ctx)
        plan = self.plan
        if plan is not None and not plan.stalled:
            sent = plan.participants + plan.late  # late uploads reach the server too: they count as released
            self.releases[sent] += 1
        result.extras.update(self.privacy(rounds=ctx.rounds + 1))
        return result

    def privacy(self, *, rounds: int) -> dict:
        """The (ε, δ) guarantee after `rounds` rounds under the configured threat model (metrics columns)."""
        c = self.config
        if c.dp_model == "local":  # no amplification; the busiest client's releases
            q, steps = 1.0, int(self.releases.max())
        else:  # Poisson sampling at q, one release of the noisy sum per round
            q, steps = c.client_fraction, rounds
        eps, _ = epsilon(q=q, sigma=c.dp_noise, steps=steps, delta=c.dp_delta)
        return {"dp_epsilon": eps, "dp_delta": c.dp_delta, "dp_model": c.dp_model, "dp_releases": steps}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "releases": self.releases}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.releases = state["releases"]
