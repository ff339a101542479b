"""DP-LoRA (Liu et al. 2023): federated LoRA with per-client clipping and Gaussian noise, (ε, δ) reported.

Spec Part B §B16 [RECON: the algorithm is reconstructed from summaries; no code
was read]. Implemented as the Gaussian mechanism on each client's update of
its trainable vector (LoRA factors + head):

    U = u_i − u                          the client's update this round
    U ← U · min(1, C / ||U||₂)           clip (per client, per round)
    U ← U + N(0, σ² C² I)                noise from a (seed, round, client) generator
    server: u ← u + Σ_i w_i U_i

The privacy unit is a client's whole dataset (client-level DP, add/remove
neighbours, sensitivity C); the noise is added by the client, so the guarantee
does not rely on the server. The reported ε (metrics column `dp_epsilon`, at
`dp_delta`) is the RDP accountant's (`lab.lora.accountant`) for the
subsampled Gaussian mechanism with rate q = `client_fraction` composed over
the rounds so far — treating the fixed-size sample as Poisson sampling at that
rate, an approximation. Noise on both A and B is multiplied in B·A (the spec's
noise-amplification pitfall): expect the utility to fall quickly as σ grows.

What is sent: as LoRA, uplink 4p and downlink 4p bytes per client (noise adds
nothing). Knobs: `dp_clip` C, `dp_noise` σ (noise multiplier), `dp_delta`,
`lora_rank`, `lora_alpha`, `lr`, `client_fraction`.
"""
from __future__ import annotations

import torch

from lab.knobs import Knob
from lab.lora.accountant import epsilon
from lab.lora.peft import PeftFederated


def privatize(update: torch.Tensor, *, clip: float, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Clip a client's update (p,) to L2 norm `clip` and add N(0, (noise·clip)² I)."""
    norm = float(update.norm())
    clipped = update * min(1.0, clip / norm) if norm > 0 else update
    return clipped + noise * clip * torch.randn(update.shape, generator=gen)


class DPLoRA(PeftFederated):
    name = "dp_lora"
    label = "DP-LoRA"
    knobs = {
        "dp_clip": Knob(1.0, "clipping norm C of a client's update", low=0.0, low_open=True, high=1e6),
        "dp_noise": Knob(0.3, "noise multiplier sigma (noise std sigma * C)", low=0.0, low_open=True, high=1e6),
        "dp_delta": Knob(1e-5, "the delta of the reported (epsilon, delta)", low=0.0, low_open=True, high=1.0, high_open=True),
    }
    mode = "lora"

    def aggregate(self, ctx, u_all, clients):
        c = self.config
        updates = torch.zeros_like(u_all)  # (n, p): zero rows for clients not taking part
        for r in clients:
            if r in ctx.cluster.ranks:
                row = ctx.cluster.local_index(r)
                gen = torch.Generator().manual_seed((c.seed * 1_000_003 + ctx.rounds) * 10_007 + r)
                updates[row] = privatize(u_all[row] - self.u, clip=c.dp_clip, noise=c.dp_noise, gen=gen)
        agg = ctx.collective.server_reduce(updates, weights=self.weights(ctx, clients), ranks=clients,
                                           tag="peft_update")
        self.u = self.u + agg
        eps, _ = epsilon(q=c.client_fraction, sigma=c.dp_noise, steps=ctx.rounds + 1, delta=c.dp_delta)
        return {"dp_epsilon": eps, "dp_delta": c.dp_delta}
