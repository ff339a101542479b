# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # Where should the experts live, and where should the tokens go?
#
# **The question.** A mixture-of-experts layer sends every token to k of E experts. With expert
# parallelism (EP) the experts are spread over ranks, so every MoE layer costs two all-to-alls (dispatch
# and combine), forward and backward, and a popular expert's rank becomes the straggler. What do those
# all-to-alls cost as the experts per rank and the network change? How unbalanced does routing get, and
# what do the techniques that move experts or tokens around buy: ExFlow (place consecutive layers'
# likely experts together and skip the trip home), LocMoE (prefer experts on the token's node), ScMoE
# (hide the all-to-alls behind other work), Pipeline MoE (no all-to-all at all inside a node) and
# Hecate's FSSDP (replicate hot experts where the tokens are)?
#
# **The knobs.** Experts per layer and per rank, top-k, the capacity factor, the load-balancing loss
# weight, the topology, LocMoE's locality bonus μ, the expert placement.
#
# **What to look at.** (1) Expert parallelism computes exactly what one device computes. (2) The
# all-to-all's time against experts per rank on three networks. (3) Load balance and dropped tokens;
# FSSDP against EP's straggler. (4) LocMoE's bytes and loss against μ. (5) ExFlow's placement on a real
# routing trace. (6) ScMoE's overlap on the simulated clock. (7) PPMoE's bytes by link class.

# %% tags=["parameters"]
num_ranks = 4  # simulated ranks of the training runs
steps = 30  # training steps of the digits runs
lm_steps = 30  # training steps of the character-GPT runs
num_experts = 8  # experts per MoE layer in the training runs
sweep_experts = 64  # experts per layer of the all-to-all sweep (at scale: nothing is allocated)
experts_per_rank = [1, 2, 4, 8, 16]
sweep_networks = ["one NVLink node", "8-GPU nodes, InfiniBand", "2-GPU nodes, leaf-spine 4:1"]
tokens_per_rank = 4096  # the sweep's tokens per rank, hidden size and top-k
sweep_hidden = 4096
locmoe_mus = [0.0, 0.05, 0.2, 1.0]
exflow_layers = 4  # MoE layers of the GPT whose routing ExFlow places
exflow_tokens = 512  # test tokens of the routing trace
metrics_path = ""  # if set, results are written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import torch

import widgets
from lab import topology as topo
from lab.comm import Ledger, SimulatedCollective
from lab.config import config_for
from lab.data import load_chars
from lab.experiment import run
from lab.moe import exflow
from lab.moe.analysis import ep_sweep, routing_trace, scmoe_layers
from lab.moe.ep import moe_shape
from lab.moe.layer import init_experts
from lab.moe.scmoe import exposed_seconds, timeline

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## 1. Expert parallelism computes what one device computes
#
# The MoE classifier on digits (2 blocks, each a LayerNorm and an MoE feed-forward of `num_experts`
# experts, top-2, dropless), trained with AdamW on `num_ranks` simulated ranks three ways: every rank
# holding every expert (`moe_dp`: the single-device MoE on each rank, expert gradients all-reduced),
# expert parallelism (`moe_ep`: E/P experts per rank, tokens dispatched and combined with all_to_all_v),
# and FSSDP (`fssdp`: every expert sharded over all ranks, gathered where this step's tokens go). Same
# routing, so the same model up to float rounding.

# %%
base = dict(num_workers=num_ranks, model="mlp", dataset="digits", num_experts=num_experts, steps=steps,
            eval_every=max(steps // 3, 1), optimizer="adamw", lr=0.01, batch_size=16)
layouts = {t: run(config_for(t, **base), save=False, progress=False) for t in ("moe_dp", "moe_ep", "fssdp")}
ref = layouts["moe_dp"]
equal = pd.DataFrame([{
    "technique": t, "max |Δ loss| vs moe_dp": float(np.abs(r.metrics.loss - ref.metrics.loss).max()),
    "max |Δ model| vs moe_dp": float((r.model - ref.model).abs().max()),
    "final eval accuracy": float(r.metrics.eval_accuracy.dropna().iloc[-1]),
    "MB sent (all ranks)": r.metrics.bytes.iloc[-1] / 1e6,
    "MB of MoE exchanges": r.metrics.moe_bytes.iloc[-1] / 1e6} for t, r in layouts.items()]).set_index("technique")
equal

# %%
widgets.show(widgets.loss_vs_step(widgets.frame(layouts), width=460, height=220,
                                  title="three expert layouts, one loss curve"))

# %% [markdown]
# **Takeaway.** The curves coincide (differences ~1e-6 come from summation order). Replicating the
# experts all-reduces every expert's gradient every step; expert parallelism sends only the tokens'
# hidden states, here several times fewer bytes. FSSDP sends tokens *and* expert slices.
#
# ## 2. What the all-to-all costs
#
# One dispatch of `tokens_per_rank` tokens per rank (hidden `sweep_hidden`, bf16, top-2, uniform
# routing) with `sweep_experts` experts, as the experts per rank grow and the EP degree P = E / (experts
# per rank) shrinks, on one NVLink node (up to 8 ranks), on 8-GPU NVLink nodes joined by 400 Gb/s
# InfiniBand, and on 2-GPU nodes behind a leaf-spine fabric oversubscribed 4:1. Every rank sends
# (P − 1)/P · k·T·h·b bytes; what changes is how much of it crosses nodes and how fast those links are.
# The cost is the Ledger's: the pairwise all_to_all_v schedule of the true per-pair bytes on the topology.

# %%
sweep = ep_sweep(sweep_networks, experts_per_rank, num_experts=sweep_experts, top_k=2,
                 tokens_per_rank=tokens_per_rank, hidden=sweep_hidden)
sweep["dispatch_ms"] = 1e3 * sweep.dispatch_seconds
sweep["inter_fraction"] = sweep.bytes_inter / (sweep.bytes_intra + sweep.bytes_inter)
widgets.show(alt.Chart(sweep).mark_line(point=True).encode(
    x=alt.X("experts_per_rank:Q", scale=alt.Scale(type="log", base=2), title="experts per rank (E / P)"),
    y=alt.Y("dispatch_ms:Q", scale=alt.Scale(type="log"), title="one dispatch all-to-all (ms, simulated)"),
    color=alt.Color("network:N", title="network"), strokeDash=alt.StrokeDash("network:N", title="network"),
    tooltip=["network", "ep_degree", "experts_per_rank", alt.Tooltip("dispatch_ms:Q", format=".3g"),
             alt.Tooltip("inter_fraction:Q", format=".2f")],
).properties(width=420, height=240, title=f"{sweep_experts} experts, {tokens_per_rank} tokens/rank, top-2"))

# %%
sweep[["network", "experts_per_rank", "ep_degree", "dispatch_ms", "inter_fraction", "bytes_intra", "bytes_inter",
       "predicted_bytes"]]

# %% [markdown]
# **Takeaway.** Bytes per rank hardly move with the experts per rank, (P − 1)/P of the tokens always
# leave; time is all about where they go. Inside an NVLink node a dispatch takes well under a
# millisecond; once the EP group spans nodes most of the bytes ride the inter-node links, and on an
# oversubscribed fabric the all-to-all gets an order of magnitude slower. More experts per rank means a
# smaller EP group that fits in fewer nodes (once it fits in one node, the NVLink node's line lies under
# the InfiniBand one: it is the same node).
#
# ## 3. Load balance, capacity and the straggler
#
# The character GPT with MoE feed-forwards (2 layers, `num_experts` experts, top-2), with and without
# the load-balancing loss, and with a capacity factor of 1.25 (tokens past an expert's C = 1.25·k·T/E
# slots are dropped). Load imbalance is the busiest rank's computed rows over the mean (1 = perfect).

# %%
lm = dict(num_workers=num_ranks, model="gpt", dataset="chars", num_experts=num_experts, steps=lm_steps,
          eval_every=lm_steps, optimizer="adamw", lr=3e-3, batch_size=4)
balance_runs = {"no balancing loss": run(config_for("moe_ep", aux_loss_coef=0.0, **lm), save=False, progress=False),
                "aux loss 0.01": run(config_for("moe_ep", aux_loss_coef=0.01, **lm), save=False, progress=False),
                "aux 0.01, capacity 1.25": run(config_for("moe_ep", capacity_factor=1.25, **lm), save=False,
                                               progress=False),
                "FSSDP, aux 0.01": run(config_for("fssdp", **lm), save=False, progress=False)}
bal = pd.concat([r.metrics.assign(run=name) for name, r in balance_runs.items()])
widgets.show(alt.Chart(bal).mark_line().encode(
    x=alt.X("step:Q", axis=alt.Axis(format="d", tickMinStep=1), title="optimizer steps"),
    y=alt.Y("load_imbalance:Q", scale=alt.Scale(zero=False), title="load imbalance (busiest rank / mean)"),
    color=alt.Color("run:N", title="run"),
).properties(width=420, height=220, title="rows computed per rank"))

# %%
balance = pd.DataFrame([{"run": name, "final loss": float(r.metrics.loss.iloc[-1]),
                         "mean load imbalance": float(r.metrics.load_imbalance.mean()),
                         "mean dropped fraction": float(r.metrics.dropped_fraction.mean()),
                         "MB sent": r.metrics.bytes.iloc[-1] / 1e6}
                        for name, r in balance_runs.items()]).set_index("run")
balance

# %% [markdown]
# **Takeaway.** Without the balancing loss routing drifts towards a few experts and the rank that hosts
# them does most of the work. A capacity factor caps that at the price of dropped tokens (they skip the
# layer). FSSDP keeps the routing and instead gives hot experts more replicas each step: the load evens
# out without dropping anything, paid for by gathering expert slices.
#
# ## 4. LocMoE: prefer the experts on your node
#
# Two nodes of 2 ranks (`leaf_spine`), 4 experts (one per rank), top-2: LocMoE adds μ to the router's
# score of the experts on the token's node (the choice only; spec §B12, loss form reconstructed).

# %%
loc_base = dict(num_workers=4, model="mlp", dataset="digits", num_experts=4, steps=steps,
                eval_every=steps, optimizer="adamw", lr=0.01, batch_size=16, topology="leaf_spine")
loc_runs = {mu: run(config_for("locmoe", locmoe_mu=mu, **loc_base), save=False, progress=False)
            for mu in locmoe_mus}
loc = pd.DataFrame([{"mu": mu, "inter-node MB": r.ledger.query("tag.str.startswith('moe')").bytes_inter.sum() / 1e6,
                     "intra-node MB": r.ledger.query("tag.str.startswith('moe')").bytes_intra.sum() / 1e6,
                     "load imbalance": float(r.metrics.load_imbalance.mean()),
                     "final loss": float(r.metrics.loss.iloc[-1]),
                     "eval accuracy": float(r.metrics.eval_accuracy.dropna().iloc[-1])} for mu, r in loc_runs.items()])
loc_long = loc.melt(id_vars="mu", value_vars=["inter-node MB", "intra-node MB"], var_name="link", value_name="MB")
widgets.show(alt.hconcat(
    alt.Chart(loc_long).mark_line(point=True).encode(
        x=alt.X("mu:Q", title="locality bonus μ"), y=alt.Y("MB:Q", title="MoE exchange bytes (MB, all ranks)"),
        color=alt.Color("link:N", title=None)).properties(width=260, height=200, title="bytes by link class"),
    alt.Chart(loc).mark_line(point=True).encode(
        x=alt.X("mu:Q", title="locality bonus μ"),
        y=alt.Y("final loss:Q", scale=alt.Scale(zero=False), title="final training loss (nats)"),
    ).properties(width=260, height=200, title="what the model pays")))
loc

# %% [markdown]
# **Takeaway.** Inter-node bytes fall with μ, all the way to zero when the node's experts can take every
# choice; the price is a less free router (higher loss here, more imbalance).
#
# ## 5. ExFlow: place consecutive layers' experts together
#
# Routing is correlated across layers. Here a 4-layer MoE GPT is trained briefly, its routing on test
# text is traced (first choices), and the inter-layer affinity A_l(e, e') is measured. ExFlow places
# every layer's experts so that likely transitions stay on one GPU (exact: dynamic programming over all
# balanced placements), and its context-coherent dispatch lets a token continue from the GPU of its
# last expert — one all-to-all per layer instead of two. A trace with planted affinity (90% of tokens
# follow a fixed expert map) shows the mechanism at full strength.

# %%
ex_cfg = config_for("moe_ep", **{**lm, "moe_layers": exflow_layers, "steps": lm_steps})
ex_run = run(ex_cfg, save=False, progress=False)
chars = load_chars()
shape = moe_shape(ex_cfg, chars)
n_seq = max(exflow_tokens // chars.meta["block_size"], num_ranks)
real_trace = routing_trace(shape, ex_run.model, chars.x_test[:n_seq])
planted = exflow.planted_trace(len(real_trace), exflow_layers, num_experts, stickiness=0.9, seed=0)


def exflow_bytes(trace, name):
    aff = exflow.affinity(trace, num_experts)
    plain = exflow.contiguous_placement(exflow_layers, num_experts, num_ranks)
    placed = exflow.solve_placement(aff, num_ranks)
    t = len(trace) // num_ranks
    tr = torch.from_numpy(trace[: t * num_ranks]).view(num_ranks, t, exflow_layers)
    g = torch.Generator().manual_seed(0)
    experts = [init_experts(num_experts, 16, 32, generator=g) for _ in range(exflow_layers)]
    x = torch.randn(num_ranks, t, 16, generator=g)
    rows, outs = [], {}
    for label, fn, pl in (("EP (2 all-to-alls / layer)", exflow.standard_forward, plain),
                          ("coherent, plain placement", exflow.coherent_forward, plain),
                          ("ExFlow (coherent + placement)", exflow.coherent_forward, placed)):
        coll = SimulatedCollective(world_size=num_ranks, ledger=Ledger(topo.preset("nvlink_node", num_ranks)))
        outs[label] = fn(coll, x, tr, experts, pl)
        led = coll.ledger.table()
        moe = led[led.tag != "exflow_coherence"]
        rows.append({"trace": name, "schedule": label, "token KB": moe.bytes_intra.sum() / 1e3,
                     "coherence KB": led[led.tag == "exflow_coherence"].bytes_intra.sum() / 1e3})
    same = max(float((o - outs["EP (2 all-to-alls / layer)"]).abs().max()) for o in outs.values())
    hops = {"plain": exflow.cross_gpu_transitions(aff, plain), "placed": exflow.cross_gpu_transitions(aff, placed),
            "transitions": int(aff.sum())}
    return rows, same, hops


ex_rows, ex_hops, ex_same = [], {}, {}
for name, trace in (("trained GPT", real_trace), ("planted affinity", planted)):
    rows, same, hops = exflow_bytes(trace, name)
    ex_rows += rows
    ex_hops[name], ex_same[name] = hops, same
ex_table = pd.DataFrame(ex_rows)
widgets.show(alt.Chart(ex_table).mark_bar().encode(
    x=alt.X("token KB:Q", title="hidden states moved (KB, all ranks, forward)"),
    y=alt.Y("schedule:N", title=None), color=alt.Color("schedule:N", legend=None),
    row=alt.Row("trace:N", title=None)).properties(width=360, height=90))

# %%
pd.DataFrame(ex_hops).T.assign(**{"cross-GPU fraction, plain": lambda d: d.plain / d.transitions,
                                  "cross-GPU fraction, placed": lambda d: d.placed / d.transitions,
                                  "max |Δ output| vs EP": pd.Series(ex_same)})

# %% [markdown]
# **Takeaway.** Skipping the trip home already halves the token traffic; placing the experts by affinity
# cuts what is left by the share of transitions it keeps on one GPU — most of them on the planted trace,
# fewer on a briefly trained tiny model whose routing is less sticky. The outputs are identical: placement
# only moves computation. The price is keeping the context coherent (the all-gather modelled per decode
# step, reported separately above; how ExFlow does it is not verified).
#
# **Try it.** Move the routing affinity, the experts and the GPUs: the two placements side by side, and the
# share of token transitions between layers that leave their GPU under each.

# %%
widgets.ExpertPlacement()

# %% [markdown]
# ## 6. ScMoE: hide the all-to-alls behind attention and a shared expert
#
# A 32-layer model with h = 4096, top-1 over 64 experts of width 14336 plus a shared expert, 4096 tokens
# per rank, on 4 InfiniBand nodes of 8 GPUs: the standard block waits for each all-to-all; ScMoE's
# block starts the dispatch as the block begins (its MoE reads the block's input) and the combine
# before the shared expert. Two layers of one step on the simulated clock (`lab.clock`):

# %%
cluster = topo.preset("multinode_4x8", 32)
layers = scmoe_layers(cluster, num_layers=32, tokens_per_rank=4096, hidden=4096, ffn=14336, seq_len=4096,
                      num_experts=64, top_k=1)
clocks = {"standard": timeline(layers, shortcut=False), "ScMoE": timeline(layers, shortcut=True)}
sc = pd.DataFrame([{"block": k, "step ms": 1e3 * c.seconds, "exposed comm ms": 1e3 * exposed_seconds(c),
                    "compute ms": 1e3 * c.compute_total} for k, c in clocks.items()]).set_index("block")
two = {k: timeline(layers[:2], shortcut=k == "ScMoE", backward=False).table().assign(block=k) for k in clocks}
gantt = pd.concat(two.values())
widgets.show(alt.Chart(gantt).mark_bar(stroke="white", strokeWidth=1).encode(
    x=alt.X("start:Q", title="simulated seconds"), x2="end:Q", y=alt.Y("kind:N", title=None),
    color=alt.Color("kind:N", title=None), row=alt.Row("block:N", title=None),
    tooltip=["label", alt.Tooltip("start:Q", format=".3g"), alt.Tooltip("end:Q", format=".3g")],
).properties(width=480, height=50, title="forward of two blocks"))
sc

# %%
sc_train = {"MoE top-2": run(config_for("moe_ep", **lm), save=False, progress=False),
            "ScMoE top-1 + shared": run(config_for("scmoe", top_k=1, **lm), save=False, progress=False)}
sc_table = pd.DataFrame([{"model": k, "final loss": float(r.metrics.loss.iloc[-1]),
                          "hidden comm ms": 1e3 * float(r.metrics.get("hidden_seconds", pd.Series([0.0])).iloc[-1]),
                          "sim seconds": float(r.metrics.sim_seconds.iloc[-1])} for k, r in sc_train.items()])
sc_table

# %% [markdown]
# **Takeaway.** At this size an all-to-all costs about as much as a block's attention, so the standard
# block exposes all of it and ScMoE hides nearly all of it; the trained tiny models show the shortcut
# architecture learning alongside the top-2 baseline (E3: a different model, compared on loss).
#
# ## 7. Pipeline MoE: no token leaves the node
#
# PPMoE keeps each node's ranks as a tensor-parallel group holding the same tokens; each rank slices the
# tokens for its experts and one all-reduce inside the node sums the results. Against EP on the same two
# nodes of 2 ranks:

# %%
pp_runs = {"EP": run(config_for("moe_ep", **loc_base), save=False, progress=False),
           "PPMoE": run(config_for("ppmoe", **loc_base), save=False, progress=False)}
pp = pd.DataFrame([{"technique": k, "MoE inter-node MB": r.ledger.query("tag.str.startswith('moe')").bytes_inter.sum()
                    / 1e6, "MoE intra-node MB": r.ledger.query("tag.str.startswith('moe')").bytes_intra.sum() / 1e6,
                    "all inter-node MB": r.metrics.bytes_inter.iloc[-1] / 1e6,
                    "final loss": float(r.metrics.loss.iloc[-1])} for k, r in pp_runs.items()]).set_index("technique")
pp

# %% [markdown]
# **Takeaway.** PPMoE's MoE layers send nothing across nodes: one all-reduce inside each node replaces
# both all-to-alls. What crosses nodes is now the gradient all-reduce between the groups; and because a
# group's ranks share their tokens, each step here trains on 2 batches instead of 4, which is why its
# loss lags. A real PPMoE splits the backbone's matmuls over the group (tensor parallelism) instead of
# replicating them as this lab does, and scales across nodes with pipeline parallelism.

# %%
results = {
    "equal": equal.reset_index().to_dict(orient="records"),
    "sweep": sweep.to_dict(orient="records"),
    "balance": balance.reset_index().to_dict(orient="records"),
    "locmoe": loc.to_dict(orient="records"),
    "exflow": {"bytes": ex_table.to_dict(orient="records"), "hops": ex_hops, "max_output_diff": ex_same},
    "scmoe": sc.reset_index().to_dict(orient="records"),
    "scmoe_train": sc_table.to_dict(orient="records"),
    "ppmoe": pp.reset_index().to_dict(orient="records"),
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2, default=float))

# %% [markdown]
# ## Takeaway
#
# Expert parallelism is exact and cheap in bytes, but its all-to-alls make the network's shape matter:
# keep the EP group inside fast links when you can (more experts per rank, PPMoE's node-local group),
# move less across slow ones (LocMoE's locality bias, ExFlow's affinity placement and one-way
# dispatch), hide what remains (ScMoE's shortcut), and give hot experts more hands (FSSDP) rather than
# letting their rank straggle.
#
# To try next: `capacity_factor` between 1 and 2 with no balancing loss; `locmoe_loss_coef` to teach the
# router locality instead of forcing it; `fssdp_slots=1` (one replica per rank, as EP) against 2.
