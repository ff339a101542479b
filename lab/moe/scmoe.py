"""ScMoE: a shortcut-connected MoE whose all-to-alls overlap attention and a shared expert.

Paper: Cai et al., "Shortcut-connected Expert Parallelism for Accelerating
Mixture-of-Experts" (ICML 2025, arXiv 2404.05019; abstract level, spec §B13).
The architecture changes so the MoE branch of block l reads the block's
*input* — the preceding layer's representation — while a dense shared expert
reads the current one (lab.moe.model, `shortcut=True`):

    a = x + Attn(LN1(x));   x' = a + Shared(LN2(a)) + MoE(LN3(x)).

The MoE input exists before attention runs, so its dispatch all-to-all can
overlap attention, and its combine can overlap the shared expert; backward
mirrors it (the combine's gradient overlaps the shared expert's backward, the
dispatch's the attention's). The paper's setting is a top-1 MoE with the
shared expert (set `top_k=1`) against a top-2 baseline.

`timeline` puts one step of a stack of layers on the simulated clock
(lab.clock.Clock, per-rank compute and communication streams): the standard
block runs attention → dispatch → experts → combine serially; ScMoE issues the
dispatch inside `Clock.overlapping` at the block's start and the combine
before the shared expert, and waits before the experts and before the next
block. Exposed communication = makespan − compute; it falls to 0 when each
all-to-all fits behind its compute (spec check: exposed → 0 when T_a2a ≤
T_attn + T_shared). The technique feeds the exchanges' Ledger seconds of each
step into `timeline` and reports what the overlap hides as
`TrainContext.comm_hidden_seconds` (column `hidden_seconds`).
Exactness: E3 (a different architecture); knobs: those of `moe_ep`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from lab.clock import Clock
from lab.moe.ep import ExpertParallelTraining
from lab.moe.model import MoEShape


@dataclass
class LayerTimes:
    """Seconds of one MoE block's pieces (forward; backward compute is twice the forward)."""

    attention: float
    shared: float
    experts: float
    dispatch: float
    combine: float
    dispatch_bwd: float = 0.0
    combine_bwd: float = 0.0


def timeline(layers: list[LayerTimes], *, shortcut: bool, num_ranks: int = 1, backward: bool = True) -> Clock:
    """One step of the stack on a fresh Clock; `shortcut` overlaps the all-to-alls as ScMoE does."""
    clock = Clock(num_ranks)

    def comm(seconds, label, overlap):
        if overlap:
            with clock.overlapping(clock.compute_free.copy()):
                clock.comm(seconds, label=label)
        else:
            clock.comm(seconds, label=label)

    for l, t in enumerate(layers):
        comm(t.dispatch, f"dispatch {l}", shortcut)
        clock.compute(t.attention, label=f"attention {l}")
        clock.wait()
        clock.compute(t.experts, label=f"experts {l}")
        comm(t.combine, f"combine {l}", shortcut)
        clock.compute(t.shared, label=f"shared {l}")
        clock.wait()
    if backward:
        for l, t in reversed(list(enumerate(layers))):
            comm(t.combine_bwd, f"combine bwd {l}", shortcut)
            clock.compute(2 * t.shared, label=f"shared bwd {l}")
            clock.wait()
            clock.compute(2 * t.experts, label=f"experts bwd {l}")
            comm(t.dispatch_bwd, f"dispatch bwd {l}", shortcut)
            clock.compute(2 * t.attention, label=f"attention bwd {l}")
            clock.wait()
    return clock


def exposed_seconds(clock: Clock) -> float:
    """Communication on the critical path: makespan − compute."""
    return clock.seconds - clock.compute_total


def layer_times(shape: MoEShape, topology, tokens: int, entries) -> list[LayerTimes]:
    """Per-layer compute seconds from the shape's FLOPs and the exchanges' seconds from the Ledger entries of a
    step (tags moe{l}_dispatch / _combine, their _counts and _bwd)."""
    f = shape.forward_flops_per_token()
    per = {k: topology.compute_seconds(v * tokens / shape.num_layers) for k, v in f.items()}
    out = []
    for l in range(shape.num_layers):
        sec = lambda *tags: sum(e.seconds for e in entries if e.tag in tags)  # noqa: E731
        out.append(LayerTimes(attention=per["attention"] + per["router"], shared=per["shared"], experts=per["experts"],
                              dispatch=sec(f"moe{l}_dispatch", f"moe{l}_dispatch_counts"),
                              combine=sec(f"moe{l}_combine"), dispatch_bwd=sec(f"moe{l}_dispatch_bwd"),
                              combine_bwd=sec(f"moe{l}_combine_bwd")))
    return out


class ScMoETraining(ExpertParallelTraining):
    name = "scmoe"
    label = "ScMoE"

    def setup(self, ctx):
        super().setup(ctx)
        self.hidden_seconds = 0.0

    def model_shape(self, ctx):
        return replace(super().model_shape(ctx), shortcut=True)

    def after_step(self, ctx, entries):
        tokens = self._tokens
        times = layer_times(self.shape, ctx.topology, tokens, entries)
        serial = timeline(times, shortcut=False)
        overlapped = timeline(times, shortcut=True)
        hidden = serial.seconds - overlapped.seconds
        ctx.comm_hidden_seconds += hidden
        self.hidden_seconds += hidden

    def forward_hooks(self, ctx, tokens):
        self._tokens = tokens
        return super().forward_hooks(ctx, tokens)

    def extras(self, ctx, aux, routings, tokens):
        return {**super().extras(ctx, aux, routings, tokens), "hidden_seconds": self.hidden_seconds}

    def state_dict(self):
        return {**super().state_dict(), "hidden_seconds": self.hidden_seconds}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.hidden_seconds = state["hidden_seconds"]
