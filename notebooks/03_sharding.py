# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # How many ranks share one copy of the model state?
#
# **The question.** Data parallelism keeps a full copy of the parameters, the
# gradients and the optimizer state on every rank: 16 bytes per parameter with
# mixed-precision Adam, 112 GB for a 7B model, more than a GPU holds. Sharding
# splits that copy across ranks. What does each scheme save in memory, what does
# it cost in bytes on each link, and does it still compute what data parallelism
# computes?
#
# **The knobs.** The ZeRO stage (1: shard the optimizer state, 2: and the
# gradients, 3: and the parameters) and the sharding degree S: a copy of the
# model state is split over S ranks and replicated R = P/S times (hybrid
# sharding, HSDP; S = 1 is DDP, S = P is plain ZeRO). ZeRO++ adds quantized
# gathers (qwZ), a node-local secondary copy (hpZ) and a quantized 2-hop gradient
# reduction (qgZ).
#
# **What to look at.** (1) On a small model trained for real: the losses and
# parameters equal DDP's, stages 1–2 send what DDP sends, stage 3 half again, and
# the bytes each rank holds are what the memory model says. (2) The same schemes
# at Llama-2 7B/70B scale, from the memory model. (3) The planner, which ranks
# every configuration for a model, a cluster and a memory cap.

# %% tags=["parameters"]
steps = 30  # training steps of the small model
num_workers = 4
hybrid_degree = 2  # S of the hybrid run: R = num_workers / S replicas
paper_params = 7_500_000_000  # the ZeRO paper's worked example
paper_ranks = 64
scale_models = ["llama2-7b", "llama2-70b"]
scale_ranks = 64  # ranks the scale models are sharded over
planner_model = "llama2-7b"
planner_topology = "multinode_4x8"
planner_ranks = 32
memory_cap_gb = 80.0
metrics_path = ""  # if set, results are written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import altair as alt
import pandas as pd

import widgets
from lab import topology as topo
from lab.config import config_for
from lab.experiment import run
from lab.sharding import frontier
from lab.sharding.held import held_memory
from lab.sharding.memory import MODEL_SHAPES, activation_bytes, flat_shape, lab_memory, zero_memory
from lab.sharding.planner import Candidate, evaluate, plan
from widgets.sharding import memory_chart

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## Try it: the sharding part of the lab
#
# Move the sharding degree S or the ZeRO stage: the predicted memory per rank
# and bytes per step redraw before anything trains; Run trains the config shown.
# The runs below start from it: its workers and steps are theirs, and its S is
# the hybrid run's.

# %%
lab = widgets.Lab(config_for("zero", num_workers=num_workers, steps=steps, eval_every=10, optimizer="adamw", lr=0.01,
                             zero_stage=3, sharding_degree=hybrid_degree), focus="sharding", load_runs=False)
lab

# %% [markdown]
# ## 1. ZeRO 0–3 and HSDP, trained for real
#
# The MLP on digits with AdamW, on simulated ranks: DDP (stage 0), ZeRO 1, 2, 3
# over all ranks, and ZeRO-3 sharded over S = `hybrid_degree` ranks and
# replicated across the rest. What to look at: the loss curves lie on top of each
# other, `max |Δparams|` is at the level of float rounding, and the bytes per step
# follow the stage.

# %%
picked = lab.chosen()  # the Lab's settings above
num_workers, steps, hybrid_degree = picked.num_workers, picked.steps, picked.sharding_degree or picked.num_workers
shared = dict(num_workers=num_workers, steps=steps, eval_every=10, optimizer="adamw", lr=0.01)
schemes = {"DDP": config_for("ddp", **shared),
           **{f"ZeRO-{stage}": config_for("zero", **shared, zero_stage=stage) for stage in (1, 2, 3)},
           f"HSDP S={hybrid_degree}": config_for("zero", **shared, zero_stage=3, sharding_degree=hybrid_degree)}
runs = {name: run(c, save=False, progress=False) for name, c in schemes.items()}
ddp = runs["DDP"]
rows = []
for name, r in runs.items():
    s = r.summary()
    rows.append({"scheme": name, "final_loss": s["final_loss"], "eval_accuracy": s["eval_accuracy"],
                 "max |Δparams| vs DDP": float((r.worker_params - ddp.worker_params).abs().max()),
                 "bytes per rank per step": s["bytes"] / num_workers / steps,
                 "bytes vs DDP": s["bytes"] / ddp.summary()["bytes"]})
small = pd.DataFrame(rows).set_index("scheme")
small

# %%
widgets.show(widgets.loss_vs_step(widgets.frame(runs), width=460, height=240,
                                  title="training loss: every scheme on the same curve"))

# %% [markdown]
# What each rank holds, measured from the tensors the technique keeps when the
# optimizer has stepped, beside the memory model's prediction for the lab's fp32
# training (one unit = the whole model). Stage 3 keeps its slice of the parameters
# plus the buffer it gathers them into.

# %%
held_rows = []
for name, c in schemes.items():
    if c.technique != "zero":
        continue
    held, d = held_memory(c)
    predicted = lab_memory(d, c.zero_stage, c.sharding_degree or num_workers, optimizer="adamw")
    for cat in ("params", "grads", "optimizer", "buffers"):
        held_rows.append({"scheme": name, "category": cat, "held bytes": held[cat],
                          "predicted bytes": int(getattr(predicted, cat))})
held_table = pd.DataFrame(held_rows)
held_table.pivot(index="scheme", columns="category", values=["held bytes", "predicted bytes"])

# %% [markdown]
# **Takeaway.** Sharding changes where the state lives, not the arithmetic: every
# scheme ends with DDP's parameters. Stages 1 and 2 replace DDP's all-reduce by a
# reduce-scatter and an all-gather of the same total size; stage 3 gathers the
# parameters twice (forward and backward) and so sends 1.5× DDP's bytes.
#
# ## 2. The same schemes at scale
#
# First the ZeRO paper's worked example (7.5B parameters on 64 ranks,
# mixed-precision Adam: 2 + 2 + 12 bytes per parameter), then Llama-2 7B and 70B
# with their activations (micro-batch 1, 4096 tokens, selective recomputation).

# %%
paper = [zero_memory(flat_shape(paper_params), stage, paper_ranks).states / 1e9 for stage in range(4)]
pd.DataFrame({"stage": ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"], "model states GB per rank": paper})

# %%
scale_rows, charts = [], []
for name in scale_models:
    shape = MODEL_SHAPES[name]
    acts = activation_bytes(shape, recompute="selective")
    rows = []
    for label, stage in (("DDP", 0), ("ZeRO-1", 1), ("ZeRO-2", 2), ("ZeRO-3", 3)):
        m = zero_memory(shape, stage, scale_ranks if stage else 1, activations=acts)
        for cat, v in (("params", m.params), ("grads", m.grads), ("optimizer", m.optimizer),
                       ("buffers", m.buffers + m.transient), ("activations", m.activations)):
            rows.append({"scheme": label, "category": cat, "gb": v / 1e9, "selected": True,
                         "order": ["params", "grads", "optimizer", "buffers", "activations"].index(cat)})
        scale_rows.append({"model": name, "scheme": label, "total_gb": m.total / 1e9, "states_gb": m.states / 1e9})
    charts.append(memory_chart(pd.DataFrame(rows), memory_cap_gb).properties(title=f"{name} on {scale_ranks} ranks"))
widgets.show(alt.hconcat(*charts))

# %% [markdown]
# Hybrid sharding trades memory for cross-node traffic. For the 7B model on 4 nodes
# × 8 GPUs (ZeRO-3), the sharding degree S moves along a curve: sharding inside a
# node (S ≤ 8) keeps the parameter gathers on NVLink and sends only the replicas'
# gradient all-reduce across nodes; sharding over all 32 ranks needs the least
# memory and sends the most across nodes. ZeRO++ then cuts those cross-node bytes.

# %%
shape, cluster = MODEL_SHAPES[planner_model], topo.preset(planner_topology, planner_ranks)
sweep = pd.DataFrame([evaluate(shape, cluster, Candidate(3, s), memory_cap=memory_cap_gb * 1e9)
                      for s in [d for d in range(1, planner_ranks + 1) if planner_ranks % d == 0]])
zpp = pd.DataFrame([evaluate(shape, cluster, c, memory_cap=memory_cap_gb * 1e9) for c in (
    Candidate(3, planner_ranks), Candidate(3, planner_ranks, hpz_size=cluster.ranks_per_node),
    Candidate(3, planner_ranks, hpz_size=cluster.ranks_per_node, qwz=True, qgz=True))])
widgets.show(alt.Chart(sweep, title="ZeRO-3: memory against cross-node bytes as S grows", width=360, height=220)
             .mark_line(point=True).encode(x=alt.X("bytes_inter:Q", title="cross-node bytes per rank per step"),
                                           y=alt.Y("memory_gb:Q", title="GB per rank"),
                                           tooltip=["sharding_degree", "memory_gb", "bytes_inter"]))

# %%
zpp[["config", "memory_gb", "bytes_intra", "bytes_inter", "step_s"]]

# %% [markdown]
# On a machine with three bandwidth tiers (two dies per GPU, GPUs in a node,
# nodes; Frontier's MI250X), a third partition level puts the backward gather on
# the die pair and reduces gradients die → GPU → node (spec §A4; the tier
# bandwidths are reconstructions). Bytes per rank per step on each tier for a
# 20B-parameter model in 44 units:

# %%
tiers = pd.DataFrame(frontier.compare(20_000_000_000, units=44)).set_index("scheme")
tiers

# %% [markdown]
# ## 3. The planner
#
# Every configuration (stage, S, hpZ, qwZ, qgZ, recomputation) of the model on the
# cluster, with its memory per rank and its predicted step time: compute from the
# GPU's FLOP/s, communication from the topology's α-β cost of each collective,
# gathers and reductions hidden behind compute where prefetching allows. Those
# that fit under the cap come first, fastest first.

# %%
table = plan(shape, cluster, memory_cap=memory_cap_gb * 1e9)
table[["config", "memory_gb", "fits", "compute_s", "comm_s", "exposed_s", "step_s", "bytes_inter"]].head(10)

# %% [markdown]
# ## 4. Explore
#
# Pick a model and a cluster, slide the sharding degree (only divisors of the
# rank count), switch stages and the ZeRO++ options, and watch memory per rank and
# bytes per link class move.

# %%
explorer = widgets.ShardingExplorer(model=planner_model, topology=planner_topology, num_ranks=planner_ranks)
explorer

# %%
explorer.degree.value = cluster.ranks_per_node  # what a slider move does, from code
results = {
    "small": small.to_dict(orient="index"),
    "held": held_table.to_dict(orient="records"),
    "paper_gb": paper,
    "scale": scale_rows,
    "hsdp_sweep": sweep[["sharding_degree", "memory_gb", "bytes_intra", "bytes_inter"]].to_dict(orient="records"),
    "zeropp": zpp[["config", "bytes_inter", "memory_gb"]].to_dict(orient="records"),
    "frontier": tiers.reset_index().to_dict(orient="records"),
    "planner_top": table.iloc[0].to_dict(),
    "planner_candidates": len(table),
    "planner_fitting": int(table.fits.sum()),
    "explorer_update_seconds": explorer.last_update_seconds,
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2, default=float))

# %% [markdown]
# ## Takeaway
#
# The sharding degree is a dial between memory and traffic. ZeRO stages 1 and 2
# cut memory several-fold at no cost in bytes; stage 3 takes the model state down
# to 16/S bytes per parameter for 1.5× the bytes, and hybrid sharding keeps most
# of that traffic inside a node. At 7B scale on 80 GB GPUs DDP does not fit at
# all, and the planner finds the configurations that do and how fast they run.
#
# To try next: a tighter memory cap or a 70B model in the planner; ZeRO++ in the
# training runs (`zeropp="qwz+hpz+qgz"` on `multinode_4x8`) to see the lossy
# options change the loss slightly while cutting cross-node bytes; Adam-mini
# (`optimizer="adam_mini"`), which halves the optimizer state.
