# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # A tour of commlab
#
# **commlab** is a lab for communication-efficient distributed training in PyTorch.
# Three ideas carry it:
#
# - **A cluster is a tensor with a leading rank axis.** Every per-worker quantity
#   (parameters, gradients, optimizer state) is one tensor whose dim 0 indexes
#   ranks, so 8 simulated workers train in one process, in one `vmap`.
# - **Techniques talk through a `Collective`.** DDP, Local SGD, FedAvg never read
#   another rank's row; they call `all_reduce`, `all_gather`, ... The same
#   technique code runs simulated here or on a real `torch.distributed` group.
# - **Bytes are measured, time is simulated.** A `Ledger` counts the bytes of every
#   payload actually sent; a `Topology` (NVLink node, WAN sites, phones, ...)
#   turns them into simulated seconds with an α-β cost model.
#
# The question of this tour: *what does a run give you, and how do you compare
# techniques?*

# %% tags=["parameters"]
steps = 160  # local steps per worker
num_workers = 8
sync_period = 16  # Local SGD: local steps between parameter averages
metrics_path = ""  # if set, results are written here as JSON
chart_path = ""  # if set, the DDP vs Local SGD chart is saved here as a PNG

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import widgets
from lab.experiment import ExperimentConfig, run

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## The Lab: four knobs that compose
#
# The whole lab as one instrument. The top row holds the four knobs a modern training stack composes: the sync
# period H (Local SGD, DiLoCo), the compression ratio and compressor of the exchange, the sharding degree S and
# ZeRO stage inside each replica group, and the topology. A knob the chosen combination does not read is greyed
# out with the reason. Moving a knob redraws the predicted bytes per step per link class, time per step and memory
# per rank at once, before any training; **Run** trains in the background (saved under `runs/`), **Stop** ends it
# within a step, and finished runs overlay on the charts and in the runs table below, labelled by what differs.
# It starts at a composed run: Local SGD H=8, top-k 0.1, ZeRO-2 S=4 on 2 nodes × 4 ranks.

# %%
lab = widgets.Lab()
lab

# %% [markdown]
# ## One run: Local SGD
#
# The knob is `sync_period` H: each worker takes H steps on its own data, then
# all workers average their parameters. An `ExperimentConfig` is validated when
# it is built (a bad value raises a `ValueError` naming the field), and `run`
# returns a `Run` with a tidy metrics table, one row per communication round.
#
# What to look at: `bytes` (all bytes all ranks sent so far), `sim_seconds`
# (simulated compute + communication) next to `wall_seconds` (how long the
# simulation really took).

# %%
base = ExperimentConfig(num_workers=num_workers, steps=steps)
local = run(base.replace(technique="local_sgd", sync_period=sync_period), save=False, progress=False)
local.summary()

# %%
local.metrics[["step", "round", "loss", "eval_accuracy", "bytes", "sim_seconds", "wall_seconds"]].tail()

# %% [markdown]
# Each technique declares the knobs it reads. Setting one it does not read is
# refused, so a chart never shows a knob that did nothing: DDP has no sync period.

# %%
refused = ""
try:
    base.replace(technique="ddp", sync_period=4)
except ValueError as e:
    refused = str(e)
print(refused)

# %% [markdown]
# ## One chart: DDP against Local SGD, loss against bytes
#
# DDP averages gradients after every step; Local SGD averages parameters every
# H steps. Same data, model, seed and number of local steps. What to look at:
# where each curve ends on the (log) bytes axis, and how far apart the losses are.

# %%
ddp = run(base.replace(technique="ddp"), save=False, progress=False)
df = widgets.frame({"DDP": ddp, f"Local SGD H={sync_period}": local})
chart = widgets.loss_vs_bytes(df, width=460, height=260, title="training loss against bytes sent")
widgets.show(chart)

# %%
ratio = ddp.summary()["bytes"] / local.summary()["bytes"]
print(f"DDP sent {ratio:.1f}x the bytes of Local SGD H={sync_period}; eval accuracy "
      f"{ddp.summary()['eval_accuracy']:.3f} (DDP) vs {local.summary()['eval_accuracy']:.3f} (Local SGD)")

# %% [markdown]
# **Takeaway:** Local SGD sends 1/H of DDP's bytes, and on this small task reaches
# about the same loss; the notebook `01_sync_period` asks how large H can get.

# %% [markdown]
# ## The interactive panel
#
# Move the knobs and press **Run**: training runs in a background thread, the
# progress bar and the charts (loss against steps, bytes and simulated seconds)
# update live, **Stop** ends the run after the current round and keeps what it
# finished. Each run is a new line, so runs overlay. An invalid combination (try
# 16 workers on `nvlink_node`, which holds 8) is explained under the knobs.
#
# Under the common knobs are the chosen technique's: exactly the fields it reads,
# grouped. A knob it does not read as configured is greyed out with the reason —
# pick the `int8` compressor and the ratio greys out (int8 has a fixed size), pick
# ZeRO and the compressor does (ZeRO has no compressed path).

# %%
panel = widgets.RunPanel(base.replace(technique="local_sgd", sync_period=sync_period))
panel

# %% [markdown]
# Pressing **Run** is `panel.start()`; the next cell does it from code, so the
# notebook also works top to bottom. `panel.runs` keeps every finished or stopped `Run`.

# %%
panel.start()
panel.wait(300)
panel.last_run.summary()

# %%
results = {
    "ddp": ddp.summary(),
    "local_sgd": local.summary(),
    "bytes_ratio_ddp_over_local_sgd": ratio,
    "panel": panel.last_run.summary(),
    "refused": refused,
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))
if chart_path:
    chart.save(chart_path, scale_factor=2)  # PNG through vl-convert, offline

# %% [markdown]
# ## Going further
#
# - The same runs from a shell: `commlab run --technique local_sgd --workers 8 --sync-period 16 --steps 200`
#   (`commlab run --help` lists every `ExperimentConfig` field).
# - On a real process group, one process per worker:
#   `torchrun --nproc-per-node 4 -m lab.cli run --backend distributed --workers 4 --technique local_sgd`.
# - `01_sync_period.ipynb`: how often must workers talk? DDP, Local SGD across H,
#   and FedAvg on a fast and a slow network.
