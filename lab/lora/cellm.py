"""CELLM (Vavekanand & Sam 2024): LoRA with sparse communication of the LoRA updates, both ways.

Spec Part B §B17 [RECON: implemented as FLASC-style sparse LoRA from the
abstract; no code was found]. Clients train dense LoRA factors (and the head)
locally; what travels is sparse:

    downlink: the server broadcasts top-k (density `cellm_down_density`) of u − ũ to every client, where ũ is
              the view clients hold; ũ += what was sent (the server keeps the rest for later rounds)
    client:   trains from ũ; uplink: top-k (density `cellm_up_density`) of its update u_i − ũ through a
              `lab.compress.Channel` (with the config's `error_feedback`, per client)
    server:   u ← u + Σ_i w_i decode(C(u_i − ũ))

The LoRA adapters sit on the pre-trained backbone (lab.pretrain). Rank and
density are chosen jointly (the abstract's point): at equal uplink bytes, a
higher rank with sparser updates can beat a lower dense rank.

What is sent: top-k packets (k fp32 values with int32 indices or a bitmap,
whichever is smaller, `lab.compress.topk`): uplink about 8·density·p bytes per
participating client, downlink the same at the down density to every client.
Knobs: `lora_rank`, `lora_alpha`, `cellm_up_density`, `cellm_down_density`,
`error_feedback`, `lr`, `client_fraction`.
"""
from __future__ import annotations

import math

import torch

from lab.compress import Channel, TopK, make_feedback
from lab.compress.base import serialize
from lab.knobs import Knob
from lab.lora.peft import PeftFederated
from lab.technique import RoundResult


class CELLM(PeftFederated):
    name = "cellm"
    label = "CELLM"
    reads = ("error_feedback", "econtrol_eta")
    knobs = {
        "cellm_up_density": Knob(0.1, "fraction of the LoRA update each client sends", low=0.0, low_open=True,
                                 high=1.0),
        "cellm_down_density": Knob(0.25, "fraction of the global LoRA change sent down", low=0.0, low_open=True,
                                   high=1.0),
    }
    mode = "lora"

    def setup(self, ctx):
        super().setup(ctx)
        c = self.config
        p = self.peft.size
        up = TopK(k=max(1, math.ceil(c.cellm_up_density * p)))
        self.channel = Channel(up, make_feedback(c.error_feedback, up, eta=c.econtrol_eta))
        self.down = TopK(k=max(1, math.ceil(c.cellm_down_density * p)))
        self.view = self.u.clone()  # ũ: what every client holds

    def downlink(self, ctx, sampled):
        diff = (self.u - self.view).unsqueeze(0)  # (1, p)
        packet = self.down.compress(diff)
        self.view = self.view + self.down.decompress(packet)[0]
        ctx.collective.server_broadcast(serialize(packet), ranks=list(range(ctx.collective.world_size)),
                                        tag="lora_down")

    def train_round(self, ctx, plan):
        clients = plan.participants
        out, u_all = self.local_train(ctx, clients, self.view)
        active = torch.tensor([r in clients for r in ctx.cluster.ranks])  # (n,)
        delta = (u_all - self.view) * active.unsqueeze(1)  # (n, p)
        w = self.weights(ctx, clients)
        self.u = self.u + self.channel.server_reduce(delta, ctx.collective, weights=w, ranks=clients, active=active,
                                                     tag="lora_up").to(self.u.dtype)
        return RoundResult(self.mean_loss(ctx, out, clients), {"clients": len(plan.sampled),
                                                               "trainable": self.peft.size,
                                                               **self.channel.columns()})

    def state_dict(self):
        return {**super().state_dict(), "view": self.view, "channel": self.channel.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.view = state["view"]
        self.channel.load_state_dict(state["channel"])
