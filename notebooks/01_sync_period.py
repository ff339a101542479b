# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # How often must workers talk?
#
# **The question.** Data-parallel training averages something across workers.
# DDP averages gradients after every step. How much of that communication can we
# drop before training suffers, and what does dropping it buy on a fast network
# versus a slow one?
#
# **The knob: sync period H.** Local SGD lets every worker take H steps on its
# own data, then averages the parameters: one all-reduce of the model every H
# steps instead of one of the gradient every step, so 1/H of DDP's bytes. H = 1
# is DDP (equal for plain SGD). FedAvg is the federated cousin: a server sends
# the model to the clients, each runs an epoch on its own data, uploads, and the
# server averages.
#
# **What to look at.** Loss against bytes: for the same number of local steps,
# how far left does each curve end, and how high? Loss against simulated time on
# two networks: one 8-GPU NVLink node and 8 sites joined by a 1 Gb/s, 30 ms WAN.

# %% tags=["parameters"]
steps = 128  # local steps per worker, the same budget for every technique
num_workers = 8
sync_periods = [1, 4, 16, 64]
topologies = ["nvlink_node", "wan_sites"]
lm_steps = 48  # part 2, the character LM: local steps per worker
lm_workers = 4
lm_sync_period = 12  # H for Local SGD, DiLoCo and Streaming DiLoCo; QSR starts at H / 3
lm_fragments = 3  # Streaming DiLoCo's P (at most H and the model's number of layers)
lm_qsr_alpha = 0.006  # QSR's alpha for AdamW at lr 3e-3: H grows like (alpha / lr)^2 as the cosine decays
metrics_path = ""  # if set, results are written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import pandas as pd

import widgets
from lab.config import config_for, dropped
from lab.experiment import run
from widgets.sync_charts import period_chart

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## Try it: the sync-period part of the lab
#
# Move H or the network: the predicted bytes and time per step redraw before
# anything trains. Run trains the config shown (Stop ends it and keeps its
# rows). The runs below start from it: its workers and steps are theirs, its H
# joins the periods they compare, its network the ones they time.

# %%
lab = widgets.Lab(config_for("local_sgd", num_workers=num_workers, steps=steps, sync_period=sync_periods[-1],
                             topology=topologies[-1]), focus=("sync_period", "topology"), load_runs=False)
lab

# %% [markdown]
# ## The runs
#
# Every run uses the same data, model, seed and number of local steps; only the
# technique and H change. One set of settings serves every technique:
# `config_for(technique, **settings)` keeps what that technique reads and leaves
# out the rest. FedAvg is budgeted in rounds, not steps, so we first measure how
# many local steps one round is and give it the same step budget. The topology
# changes only the simulated clock, never the training.

# %%
picked = lab.chosen()  # the Lab's settings above
shared = dict(num_workers=picked.num_workers, steps=picked.steps)
sync_periods = sorted({*sync_periods, picked.sync_period})
topologies = list(dict.fromkeys([*topologies, picked.topology]))
configs = {"DDP": config_for("ddp", **shared)}
configs.update({f"Local SGD H={h}": config_for("local_sgd", **shared, sync_period=h) for h in sync_periods})
steps_per_round = run(config_for("fedavg", **shared, rounds=1), save=False, progress=False).summary()["steps"]
configs["FedAvg"] = config_for("fedavg", **shared, rounds=max(1, picked.steps // steps_per_round))
print("left out of FedAvg's config:", dropped("fedavg", shared))

runs = {(label, t): run(c.replace(topology=t), save=False, progress=False)
        for t in topologies for label, c in configs.items()}
df = widgets.frame([(label, r) for (label, t), r in runs.items()])

# %% [markdown]
# ## Loss against bytes
#
# The bytes do not depend on the network, so one topology is enough here.
# Local SGD with H = 1 averages every step, like DDP, and lies on top of it.

# %%
widgets.show(widgets.loss_vs_bytes(df[df.topology == topologies[0]], width=460, height=260,
                                   title="training loss against bytes sent"))

# %% [markdown]
# ## Loss against simulated time, on two networks
#
# Same runs, now against the simulated clock (compute from the device profile
# plus communication from the α-β model), one panel per topology. Log-x: the
# networks differ by orders of magnitude.

# %%
time_chart = widgets.loss_vs_time(df, log_x=True, width=300, height=220, title="training loss against simulated time")
widgets.show(time_chart.facet(column="topology:N").resolve_scale(x="independent"))

# %%
table = pd.DataFrame([{"run": label, "topology": t, **r.summary()} for (label, t), r in runs.items()])
ddp_bytes = table.set_index(["run", "topology"])["bytes"]["DDP"]
ddp_time = table.set_index(["run", "topology"])["sim_seconds"]["DDP"]
table["bytes_vs_ddp"] = table.bytes / table.topology.map(ddp_bytes)
table["speedup_vs_ddp"] = table.topology.map(ddp_time) / table.sim_seconds
(table.pivot(index="run", columns="topology", values=["eval_accuracy", "bytes_vs_ddp", "sim_seconds",
                                                     "speedup_vs_ddp"])
 .reindex(list(configs)))

# %%
results = {
    "runs": table[["run", "topology", "technique", "steps", "rounds", "eval_accuracy", "bytes", "sim_seconds"]]
    .to_dict(orient="records"),
    "bytes_ratio_ddp_over": {r: float(ddp_bytes[topologies[0]] / b) for r, b in
                             table[table.topology == topologies[0]].set_index("run").bytes.items()},
    "speedup_over_ddp": {t: table[table.topology == t].set_index("run").speedup_vs_ddp.to_dict() for t in topologies},
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))

# %%
ddp_acc = table[table.run == "DDP"].eval_accuracy.iloc[0]
for label in configs:
    row = table[(table.run == label) & (table.topology == topologies[0])].iloc[0]
    times = ", ".join(f"{t} {table[(table.run == label) & (table.topology == t)].sim_seconds.iloc[0]:.3g} s"
                      for t in topologies)
    print(f"{label:15s} accuracy {row.eval_accuracy:.3f} ({row.eval_accuracy - ddp_acc:+.3f} vs DDP), "
          f"bytes 1/{ddp_bytes[topologies[0]] / row.bytes:.3g} of DDP, simulated {times}")

# %% [markdown]
# ## Takeaway
#
# On this task (an MLP on `digits`, data split IID across 8 workers), Local SGD
# ends within about a point of DDP's accuracy for every H tried, while sending
# 1/H of the bytes. FedAvg lands in the same place; its round is one local epoch,
# so it behaves like Local SGD with H of a few steps, with a server in the middle.
#
# Simulated time follows bytes on both networks, because this small model's
# compute is negligible on the device profile: what the network changes is
# whether the communication matters at all. On one NVLink node the whole run
# talks for milliseconds either way; over the WAN, DDP's all-reduce every step
# costs about a minute of simulated time and H = 64 cuts that to about a second.
#
# To try next: skew the data (`partition="dirichlet"`, small `dirichlet_alpha`)
# and watch large H drift, or make each message smaller instead of rarer with a
# gradient compressor (`compressor="topk"`, `compression_ratio`).

# %% [markdown]
# # Part 2: a character language model
#
# **The question.** DiLoCo was built for language models trained with AdamW,
# where workers can go hundreds of steps between syncs. On a tiny character GPT,
# what do the refinements of "sync every H steps" buy?
#
# **The knobs.**
# - *QSR* (quadratic synchronization rule): H is recomputed after every sync as
#   max(H_base, (α/η)²) from the current learning rate η, so H grows as a cosine
#   schedule decays.
# - *DiLoCo*: every H inner AdamW steps, the average change of the workers (the
#   pseudo-gradient) goes through an outer SGD step with Nesterov momentum
#   (lr 0.7, momentum 0.9) instead of plain averaging.
# - *Streaming DiLoCo*: the model is synced in P fragments at staggered steps,
#   each sync overlaps τ inner steps of compute, and the outer gradients can be
#   sent in 4 bits.
#
# **What to look at.** Loss against bytes and against simulated time over a
# 1 Gb/s, 30 ms WAN; how H grows under QSR; the largest single sync (the peak
# bandwidth) and the communication hidden behind compute.

# %% [markdown]
# One set of settings again, and per run the technique and its own knobs;
# `config_for` keeps what each reads. What each run left out, and why:

# %%
lm_settings = dict(dataset="chars", model="gpt", optimizer="adamw", lr=3e-3, lr_schedule="cosine", batch_size=8,
                   num_workers=lm_workers, steps=lm_steps, sync_period=lm_sync_period, topology="wan_sites",
                   eval_every=max(1, lm_steps // 4))
h_base = max(1, lm_sync_period // 3)
lm_plan = {
    "DDP": ("ddp", {}),
    f"Local SGD H={lm_sync_period}": ("local_sgd", {}),
    f"QSR H_base={h_base}": ("qsr", dict(sync_period=h_base, qsr_alpha=lm_qsr_alpha)),
    f"DiLoCo H={lm_sync_period}": ("diloco", {}),
    f"Streaming P={lm_fragments}": ("streaming_diloco", dict(num_fragments=lm_fragments, overlap_steps=1)),
    f"Streaming P={lm_fragments} 4-bit": ("streaming_diloco", dict(num_fragments=lm_fragments, overlap_steps=1,
                                                                   outer_bits=4)),
}
lm_configs = {label: config_for(t, **{**lm_settings, **own}) for label, (t, own) in lm_plan.items()}
pd.DataFrame([{"run": label, "left out": field, "why": why} for label, (t, own) in lm_plan.items()
              for field, why in dropped(t, {**lm_settings, **own}).items()])

# %%
lm_runs = {label: run(c, save=False, progress=False) for label, c in lm_configs.items()}
lm_df = widgets.frame(list(lm_runs.items()))

# %% [markdown]
# ## Loss against bytes and simulated time

# %%
widgets.show(widgets.loss_vs_bytes(lm_df, width=300, height=230, title="character LM: loss against bytes")
             | widgets.loss_vs_time(lm_df, log_x=True, width=300, height=230,
                                    title="loss against simulated time (WAN)"))

# %% [markdown]
# ## QSR: the sync period follows the learning rate
#
# Each point is one round: H of that round against the step it ended at. Under
# the cosine schedule H stays at H_base while η is large and then grows; it is
# capped by the steps left.

# %%
qsr_label = next(label for label in lm_runs if label.startswith("QSR"))
widgets.show(period_chart(lm_df[lm_df.label.isin([qsr_label, f"Local SGD H={lm_sync_period}"])]))


# %%
def peak_sync_bytes(r):
    return int(r.ledger.filter(like="bytes_").sum(axis=1).max()) if len(r.ledger) else 0


lm_table = pd.DataFrame([{"run": label, **r.summary(), "syncs": len(r.ledger), "peak_sync_bytes": peak_sync_bytes(r),
                          "comm_hidden_seconds": float(r.metrics.get("comm_hidden_seconds", pd.Series([0.0])).iloc[-1])}
                         for label, r in lm_runs.items()]).set_index("run")
lm_ddp = lm_table.loc["DDP"]
lm_table["bytes_vs_ddp"] = lm_table.bytes / lm_ddp.bytes
lm_table["speedup_vs_ddp"] = lm_ddp.sim_seconds / lm_table.sim_seconds
lm_table[["eval_loss", "syncs", "bytes_vs_ddp", "peak_sync_bytes", "sim_seconds", "speedup_vs_ddp",
          "comm_hidden_seconds"]]

# %%
qsr_run = lm_runs[qsr_label]
lm_results = {
    "runs": {label: {k: (float(v) if k != "technique" else v) for k, v in row.items()
                     if k in ("technique", "eval_loss", "final_loss", "bytes", "sim_seconds", "syncs",
                              "peak_sync_bytes", "comm_hidden_seconds", "bytes_vs_ddp")}
             for label, row in lm_table.iterrows()},
    "qsr": {"step": qsr_run.metrics.step.tolist(), "sync_period": qsr_run.metrics.sync_period.tolist(),
            "lr": qsr_run.metrics.lr.tolist(), "alpha": lm_qsr_alpha, "h_base": h_base},
    "sync_period": lm_sync_period, "fragments": lm_fragments, "steps": lm_steps,
}
if metrics_path:
    saved = json.loads(Path(metrics_path).read_text())
    saved["char_lm"] = lm_results
    Path(metrics_path).write_text(json.dumps(saved, indent=2))
for label, row in lm_table.iterrows():
    print(f"{label:22s} eval loss {row.eval_loss:.3f}  bytes {row.bytes_vs_ddp:.4f} of DDP  "
          f"peak sync {row.peak_sync_bytes / 1e6:.2f} MB  simulated {row.sim_seconds:.3g} s")

# %% [markdown]
# ## Takeaway
#
# With the same number of local steps, every method that syncs every H steps
# sends about 1/H of DDP's bytes and, over the WAN, finishes in a fraction of
# DDP's simulated time, at a somewhat higher loss after this short run (a few
# dozen steps of a tiny model: do not read small differences as a ranking).
# DiLoCo's outer step (lr 0.7, Nesterov momentum 0.9) moves past the average on
# purpose; with only a handful of outer steps here it tends to land behind plain
# averaging — the paper's regime is H = 500 over many thousands of steps, and
# `bench/diloco_vs_ddp.py` runs longer. QSR spends its syncs early, while the
# learning rate is large, and almost none at the end. Streaming DiLoCo sends the
# same total as DiLoCo but one fragment at a time: its fragments are strided over
# the layers (layers p, p + P, ...: the paper's pattern), as even as this small
# GPT's layers allow, so its peak sync is about half of DiLoCo's here
# (`fragment_pattern="contiguous"` cuts equal thirds). 4-bit outer gradients cut
# the total by about eight: the codes go through a two-phase compressed
# all-reduce (each rank reduces one chunk, then the reduced chunks are gathered,
# 4 bits on both hops) against DiLoCo's fp32 ring. Its clock shows what overlap can and cannot
# do here: τ steps of a tiny model hide microseconds, while a WAN message costs
# tens of milliseconds of latency, so more, smaller syncs cost more latency.
# Overlap pays off when a step's compute is comparable to a sync.
#
# To try next: raise H and `lm_steps` together and compare DiLoCo with Local SGD
# at equal bytes; or set `overlap_steps` and `merge_alpha` and watch
# `comm_hidden_seconds`.
