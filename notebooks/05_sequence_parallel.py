# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # Which sequence-parallel attention wins, at which length, on which network?
#
# **The question.** A 1M-token context does not fit one GPU: its activations alone are tens of GB per
# layer. Sequence parallelism splits the sequence over G ranks; everything but attention is per token
# and stays local, and attention has to see the whole sequence. The methods differ in *what* crosses
# the network: K/V blocks around a ring (Ring Attention, BurstAttention), queries one way and partial
# results back (TokenRing), all-to-alls that turn sequence shards into head shards (DeepSpeed-Ulysses),
# both at once (USP: Ulysses inside a node, a ring across nodes), a gather of every K/V (LSS
# Transformer), or a fixed-size state down a chain (LASP, for linear attention). Do they compute
# the same thing, and which is fastest where?
#
# **The knobs.** The method, the sequence length, the topology and its number of ranks (the SP degree),
# and the K/V heads (grouped-query attention makes K/V messages smaller).
#
# **What to look at.** (1) Every method equals full attention, forward and backward, and sends exactly
# the bytes the papers' formulas say. (2) Simulated time, bytes and memory per rank for a 7B-class
# attention layer from 4K to 1M tokens on one NVLink node and on 4 nodes. (3) The tiny GPT trained with
# its context split over ranks has the single-device loss curve. (4) Star Attention's approximate first
# phase, and how far it moves the model's outputs.

# %% tags=["parameters"]
num_ranks = 4  # simulated ranks of the exactness check
check_seq = 64  # tokens of the exactness check
seq_lengths = [4096, 16384, 65536, 262144, 1048576]  # the "which wins" sweep
topologies = ["nvlink_node", "multinode_4x8"]  # each at its preset size (8 and 32 ranks)
heads = 32  # a 7B-class attention layer: 32 heads of 128
head_dim = 128
kv_heads = 8  # grouped-query attention for the TokenRing vs Ring comparison
gpt_ranks = 4  # ranks the tiny GPT's 32-token context is split over
methods = ["ring", "token_ring", "ulysses", "usp", "burst", "lss"]  # compared in the sweep
gpt_methods = ["ring", "token_ring", "ulysses", "usp", "burst", "lss"]  # trained in section 3
gpt_steps = 40
star_hosts = [2, 4, 8]  # hosts of Star Attention (divisors of the 24-token context)
star_sequences = 64  # test windows the Star Attention gap is averaged over
metrics_path = ""  # if set, results are written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import altair as alt
import pandas as pd
import torch

import widgets
from lab import topology as topo
from lab.comm import Ledger, SimulatedCollective
from lab.config import config_for
from lab.data import load_chars
from lab.experiment import run
from lab.models import build_model
from lab.sequence.cost import layer_cost, sweep
from lab.sequence.report import exactness, reference_losses
from lab.sequence.star import star_gpt_error
from widgets.sequence import SequenceExplorer, bytes_chart, memory_chart, time_chart

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## Try it: which method wins, on which network
#
# Pick a network, an SP degree and the K/V heads (grouped-query attention): the time, bytes and memory per rank
# of one attention layer (forward + backward) redraw for every method and sequence length, from the cost model
# that section 2 explains.

# %%
explorer = SequenceExplorer(methods=tuple(methods), seq_lengths=tuple(seq_lengths), topology=topologies[-1],
                            degree=topo.PRESET_SIZES[topologies[-1]], heads=heads, head_dim=head_dim)
explorer

# %% [markdown]
# ## 1. Every method computes full attention
#
# On `num_ranks` simulated ranks (2 per node, so USP's all-to-all stays in a node and its ring crosses
# nodes), fp32: the largest difference of the output and of the input gradients against single-device
# attention (LASP: against dense linear attention with decay; DSP: a spatial + temporal block), for
# no mask and for a causal mask with contiguous and zigzag layouts. The backward passes communicate
# too (K/V and dK/dV around the ring, dQ back to its owner, the adjoint all-to-alls), and the bytes each
# rank sent, counted by the Ledger from the real payloads, sit beside the spec's formulas.

# %%
exact = exactness(num_ranks=num_ranks, seq=check_seq)
exact

# %% [markdown]
# **Takeaway.** Differences are at the level of fp32 rounding (≤ 1e-5) for every method and mask, and
# every Ledger count equals its formula. The zigzag layout changes who computes what, not the result.
#
# ## 2. Which method wins
#
# One attention layer (forward + backward) of a 7B-class model (32 heads × 128, bf16 activations, one
# sequence), over every rank of each topology: NVLink inside one 8-GPU node, and 4 nodes × 8 GPUs joined
# by 400 Gb/s InfiniBand. Causal, zigzag layout. Time is the topology's α-β cost of the very messages the
# implementations send, with each ring step overlapping its block's compute (H100-class FLOP/s); the
# all-to-alls and gathers do not overlap. Memory is the activations a rank keeps for the backward pass
# per layer. Click a legend entry to highlight a method.

# %%
tops = [topo.preset(name) for name in topologies]
table = sweep(methods, seq_lengths, tops, heads=heads, head_dim=head_dim)
widgets.show(time_chart(table))

# %%
widgets.show(bytes_chart(table))

# %%
widgets.show(memory_chart(table))

# %%
# the fastest per (topology, length); a tie on time (every ring method compute-bound) goes to fewer bytes
ranked = table.sort_values(["topology", "seq", "sim_seconds", "bytes_per_rank"])
winners = ranked.groupby(["topology", "seq"]).head(1)[["topology", "seq", "method", "sim_seconds"]]
slowest = table.groupby(["topology", "seq"]).sim_seconds.max().rename("slowest_seconds")
winners = winners.join(slowest, on=["topology", "seq"])
winners.assign(speedup_over_slowest=winners.slowest_seconds / winners.sim_seconds).pivot(
    index="seq", columns="topology", values=["method", "speedup_over_slowest"])

# %% [markdown]
# Grouped-query attention (`kv_heads` K/V heads for 32 query heads) shrinks every K/V message, and
# TokenRing does not send K/V at all: it moves queries and partial outputs, whose size does not change.

# %%
gqa = []
for t in tops:
    for m in ("ring", "token_ring"):
        for kv in (heads, kv_heads):
            c = layer_cost(m, topology=t, batch=1, seq=seq_lengths[-1], heads=heads, head_dim=head_dim, kv_heads=kv,
                           bytes_per_element=2, layout="zigzag")
            gqa.append({"topology": t.name, "method": m, "kv_heads": kv,
                        "GB per rank per layer": c["bytes_per_rank"] / 1e9})
gqa = pd.DataFrame(gqa).pivot(index=["topology", "method"], columns="kv_heads", values="GB per rank per layer")
gqa

# %% [markdown]
# **Takeaway.** Ulysses always sends the fewest bytes. Inside one NVLink node it is also the fastest
# at short lengths; from about 32K tokens on every ring method hides its messages behind the quadratic
# attention compute, so the methods tie on time (Ulysses' all-to-alls, which cannot overlap, cost it a
# little). Across nodes the ring hops ride the slower InfiniBand links and stay exposed up to a few
# hundred thousand tokens: there Ulysses, and USP (which keeps its all-to-all inside the node and sends
# only ring hops across), win by up to several times; at 1M tokens even the cross-node hops hide behind
# compute and the ring family edges ahead again. LSS pays for its simplicity in memory: every rank keeps
# the whole sequence's K/V. With grouped-query attention Ring Attention's bytes fall 4× and TokenRing's
# do not.
#
# The explorer at the top of the notebook tries other networks and SP degrees.

# %% [markdown]
# ## 3. The tiny GPT with its context split over ranks
#
# The character GPT (32-token context, 4 heads) trained on the shipped text with `sequence_parallel`:
# each rank holds a slice of every sequence (zigzag for the ring methods) and its attention layers use
# the method. The reference is the plain model on one device, fed the same sequences.

# %%
settings = dict(model="gpt", dataset="chars", num_workers=gpt_ranks, steps=gpt_steps, batch_size=8, lr=3e-3,
                optimizer="adamw", eval_every=max(gpt_steps // 4, 1), topology="leaf_spine")
sp_runs = {m: run(config_for("sequence_parallel", sp_method=m, sp_layout="zigzag" if m in ("ring", "burst") else
                             "contiguous", **settings), save=False, progress=False) for m in gpt_methods}
reference = reference_losses(next(iter(sp_runs.values())).config)
gpt_rows = [{"method": m, "max |Δ loss| vs one device": max(abs(a - b) for a, b in zip(r.metrics.loss, reference)),
             "final loss": float(r.metrics.loss.iloc[-1]),
             "attention MB sent (all ranks)": r.metrics.sp_bytes.iloc[-1] / 1e6,
             "total MB sent": r.metrics.bytes.iloc[-1] / 1e6} for m, r in sp_runs.items()]
gpt_table = pd.DataFrame(gpt_rows).set_index("method")
gpt_table

# %%
curves = pd.concat([pd.DataFrame({"step": range(1, gpt_steps + 1), "loss": reference, "run": "one device"})]
                   + [pd.DataFrame({"step": r.metrics.step, "loss": r.metrics.loss, "run": f"{m} × {gpt_ranks}"})
                      for m, r in sp_runs.items()])
widgets.show(alt.Chart(curves).mark_line().encode(
    x=alt.X("step:Q", axis=alt.Axis(format="d", tickMinStep=1), title="optimizer steps"),
    y=alt.Y("loss:Q", scale=alt.Scale(zero=False), title="training loss (nats per token)"),
    color=alt.Color("run:N", title="run"), strokeDash=alt.StrokeDash("run:N", title="run"),
).properties(width=460, height=240, title="every split equals the single-device curve"))

# %% [markdown]
# ## 4. Star Attention: exact on the query, approximate on the context
#
# Star Attention (inference) encodes each host's block of the context locally, prefixed by the first
# block (the *anchor*), then lets the query attend to every host's cache with an exact merge. Phase 1
# therefore never lets a block see the blocks between the anchor and itself. With 2 hosts it is exact
# (the anchor *is* everything before block 1); beyond that, the gap is measured here on the GPT just
# trained: 24 context tokens, 8 query tokens, `star_sequences` test windows.

# %%
data = load_chars()
model = build_model("gpt", data, seed=0).module
torch.nn.utils.vector_to_parameters(next(iter(sp_runs.values())).model, model.parameters())
windows = data.x_test[:star_sequences]
targets = data.y_test[:star_sequences, 24:32]
star_rows = []
for p in star_hosts:
    coll = SimulatedCollective(world_size=p, ledger=Ledger(topo.preset("ethernet", p)))
    star_rows.append({"hosts": p, **star_gpt_error(model, windows[:, :24], windows[:, 24:32], collective=coll,
                                                   targets=targets)})
star = pd.DataFrame(star_rows).set_index("hosts")
star

# %% [markdown]
# **Takeaway.** On 2 hosts Star Attention reproduces the model to fp32 rounding. With more hosts the
# context's outputs drift (each block misses the middle of the context) and so do the query's, because
# later layers attend to K/V computed from those drifted states; the table gives the size of that gap
# for this small model rather than assuming it. The phase-2 merge itself is exact.

# %%
results = {
    "exactness": exact.to_dict(orient="records"),
    "sweep": table.to_dict(orient="records"),
    "winners": winners.to_dict(orient="records"),
    "gqa": {f"{t}/{m}": {str(k): v for k, v in row.items()} for (t, m), row in gqa.iterrows()},
    "gpt": gpt_table.reset_index().to_dict(orient="records"),
    "star": star.reset_index().to_dict(orient="records"),
    "explorer_summary": explorer.summary.value,
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2, default=float))

# %% [markdown]
# ## Takeaway
#
# All of these methods compute exact attention; they differ in what they send and when it can hide.
# On fast links, and at very long sequences anywhere, the ring family hides its hops behind the
# quadratic compute and the choice is about memory and bytes; across nodes at moderate lengths, the
# all-to-all of Ulysses — or USP's, kept inside the node — wins, as long as the heads divide among the
# ranks. LASP's bytes do not grow with the sequence at all, but it is a different (linear) attention.
#
# To try next: `kv_heads` below 8 in the explorer (Ring gets cheaper, TokenRing does not); the
# `leaf_spine` preset, whose oversubscribed fabric punishes every cross-node method; `sp_degree` below
# `num_workers` in the GPT runs (SP groups trained data-parallel; LSS then averages twice).
