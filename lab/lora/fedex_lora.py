"""FedEx-LoRA (Singhal, Ponkshe, Vepakomma 2024): exact aggregation of LoRA via a residual folded into the base.

Spec Part B §B15. Averaging LoRA factors separately is inexact:
mean(B_i) mean(A_i) ≠ mean(B_i A_i) (FedIT, plain LoRA averaging, does that).
FedEx-LoRA keeps the averaged factors and adds the exact residual to the
frozen weight, per adapted weight W0 (out × in):

    A ← Σ w_i A_i,   B ← Σ w_i B_i,   R = Σ w_i B_i A_i − B A,   W0 ← W0 + s·R      (s = α / r)

so afterwards W0 + s·B A = W0_old + s·Σ w_i B_i A_i exactly. Non-LoRA
trainables (the head) are averaged. Weights are stored out × in (nn.Linear),
so R is added without the transpose the released code applies (right only for
GPT-2's Conv1D; spec pitfall).

Adapted weights: the query and value projections of the tiny GPT (the
released code's target modules), every non-head weight of the MLP/CNN
(lab.lora.peft); the frozen base is the pre-trained backbone (lab.pretrain).
Measured (tests/test_pretrain.py): on the pre-trained tiny GPT, 3 clients,
rank 4, 4 rounds of 8 steps, the eval loss is 4.3% above full fine-tuning's
(`fedavg`, `pretrained='on'`) at 4.6% of its bytes.

What is sent: uplink the client's LoRA factors and head (4p bytes; the server
needs each client's factors, so they are gathered, not summed). Downlink: the
global factors and head (4p), plus the base change a client lacks: the last
round's residual in the smaller of its two forms — dense s·R (4·out·in per
weight) or stacked factors [B_1..B_S, B] and [w_1 A_1; ..; w_S A_S; −A]
(4(S+1)r(out+in)) — or, for a client that missed more than one round, the
current adapted base weights dense. Knobs: `lora_rank`, `lora_alpha`, `lr`,
`local_steps` / `local_epochs`, `client_fraction`.
"""
from __future__ import annotations

import torch

from lab.lora.peft import PeftFederated, PeftMap


def fedex_aggregate(peft: PeftMap, base: torch.Tensor, u: torch.Tensor, weights: torch.Tensor):
    """Clients' u (S, p) with weights (S,) -> (new base (d,), new u (p,), residual payload (flat, the smaller form)).

    The payload is what a client that holds the previous base receives to catch up."""
    new_u = (weights.unsqueeze(1) * u).sum(0)
    new_base = base.clone()
    payload = []
    for (lo, out, inn, r), (a, b), (a_avg, b_avg) in zip(peft.adapter_slices(), peft.factors(u),
                                                           peft.factors(new_u)):
        m = torch.einsum("s,sor,sri->oi", weights, b, a)  # Σ w_i B_i A_i
        resid = peft.scale * (m - b_avg @ a_avg)  # (out, in)
        new_base[lo:lo + out * inn] += resid.reshape(-1)
        s = len(weights)
        if (s + 1) * r * (out + inn) < out * inn:
            b_stack = torch.cat([b.reshape(s * out, r), b_avg], dim=0)
            a_stack = torch.cat([(weights.view(s, 1, 1) * a).reshape(s * r, inn), -a_avg], dim=0)
            payload += [b_stack.reshape(-1), a_stack.reshape(-1)]
        else:
            payload.append(resid.reshape(-1))
    return new_base, new_u, torch.cat(payload) if payload else torch.zeros(0)


class FedExLoRA(PeftFederated):
    name = "fedex_lora"
    label = "FedEx-LoRA"
    mode = "lora"

    def setup(self, ctx):
        super().setup(ctx)
        self.version = 0  # how many residuals have been folded into the base
        self.client_version = torch.zeros(ctx.collective.world_size, dtype=torch.long)
        self.last_payload = torch.zeros(0)

    def downlink(self, ctx, sampled):
        super().downlink(ctx, sampled)
        behind_one = [r for r in sampled if self.client_version[r] == self.version - 1]
        behind_more = [r for r in sampled if self.client_version[r] < self.version - 1]
        if behind_one:
            ctx.collective.server_broadcast(self.last_payload, ranks=behind_one, tag="residual")
        if behind_more:
            dense = torch.cat([self.base[lo:lo + out * inn] for lo, out, inn, _ in self.peft.adapter_slices()])
            ctx.collective.server_broadcast(dense, ranks=behind_more, tag="base")
        self.client_version[sampled] = self.version

    def aggregate(self, ctx, u_all, clients):
        gathered = ctx.collective.server_gather(u_all, ranks=clients, tag="peft")[0]  # (P, p)
        w = self.weights(ctx, clients)[clients].to(gathered.dtype)
        self.base, self.u, self.last_payload = fedex_aggregate(self.peft, self.base, gathered[clients], w)
        self.version += 1
        return {"residual_norm": float(self.last_payload.norm())}

    def state_dict(self):
        return {**super().state_dict(), "version": self.version, "client_version": self.client_version,
                "last_payload": self.last_payload}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.version, self.client_version = state["version"], state["client_version"]
        self.last_payload = state["last_payload"]
