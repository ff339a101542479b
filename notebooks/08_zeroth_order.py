# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # Sending seeds and scalars instead of vectors
#
# **The question.** A random direction is fully described by the seed that
# generated it. If every party can regenerate the directions, a worker only
# needs to send scalars: how far to move along each one. How little can a
# federated round carry this way, and what does it cost in progress per byte?
#
# **The methods.** FedKSeed: zeroth-order steps along K candidate seeds, each
# client uploads (seed index, scalar) pairs. Just One Byte: decentralized
# two-point estimates, each sent as one byte. Ferret: first-order local
# training, the update projected on shared random directions. FZooS: Gaussian-
# process surrogate gradients from a client's own queries, with a shared
# random-feature surrogate to correct drift. Against FedAvg, which sends the
# model.
#
# **What to look at.** Bytes per client per round (uplink and downlink), and the
# loss against bytes.

# %% tags=["parameters"]
rounds = 8
num_workers = 4
local_steps = 5  # first-order local steps per round (FedAvg, Ferret) and FZooS's surrogate steps
zo_local_steps = 50  # FedKSeed's zeroth-order steps per round
zo_seeds = 1024  # FedKSeed's candidate seeds K
job_steps = 200  # Just One Byte iterations
fzoos_features = 1000  # FZooS's shared surrogate: random Fourier features D (its code: 10,000; 1,000 runs in seconds)
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

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## The runs
#
# An MLP on `digits` (d = 4810) over 4 clients. Each method keeps its own
# learning rate (zeroth-order steps need smaller ones); the budgets differ, so
# compare them on the bytes axis. One set of settings, each method's own knobs
# over it, and `config_for` keeps what each method reads: Just One Byte, which
# has no server and no rounds, leaves out the round settings.

# %%
shared = dict(num_workers=num_workers, rounds=rounds, local_steps=local_steps, eval_every=1, zo_seeds=zo_seeds)
plan = {
    "FedAvg": ("fedavg", dict(lr=0.5)),
    "FedKSeed": ("fedkseed", dict(lr=0.02, local_steps=zo_local_steps)),
    "Just One Byte": ("justonebyte", dict(lr=0.01, steps=job_steps, eval_every=max(job_steps // 8, 1))),
    "Ferret": ("ferret", dict(lr=0.5)),
    "FZooS": ("fzoos", dict(lr=0.01, fzoos_candidates=20, fzoos_features=fzoos_features)),
}
configs = {name: config_for(t, **{**shared, **own}) for name, (t, own) in plan.items()}
pd.DataFrame([{"method": name, "left out": field, "why": why} for name, (t, own) in plan.items()
              for field, why in dropped(t, {**shared, **own}).items()])

# %%
runs = {name: run(c, save=False, progress=False) for name, c in configs.items()}


# %% [markdown]
# ## Bytes per round
#
# Per client and round: what it uploads and what it downloads. FedKSeed's
# uplink is its τ (seed index, scalar) pairs; its downlink is the accumulated
# scalar of every seed (4K bytes), from which a client rebuilds the model. Just
# One Byte has no rounds: its line is per iteration and per machine.

# %%
def per_round(name, r):
    led = r.ledger
    n_rounds = int(r.metrics["round"].iloc[-1])
    up = led[led.op.isin(["server_gather", "server_reduce", "all_gather"])]
    down = led[led.op == "server_broadcast"]
    return {"method": name, "rounds or iterations": n_rounds,
            "uplink bytes per client per round": int(up.payload_bytes.sum() / max(n_rounds, 1)),
            "downlink bytes per client per round": int(down.payload_bytes.sum() / max(n_rounds, 1)),
            "total bytes": r.summary()["bytes"], "final eval loss": r.summary()["eval_loss"]}

table = pd.DataFrame([per_round(n, r) for n, r in runs.items()])
table

# %% [markdown]
# ## Loss against bytes

# %%
df = widgets.frame(runs)
widgets.show(widgets.loss_vs_bytes_chart(df, y="eval_loss", title="test loss against bytes sent (all ranks)"))

# %%
results = {"runs": {n: {**r.summary(), "initial_eval_loss": float(r.metrics.eval_loss.dropna().iloc[0])}
                    for n, r in runs.items()},
           "per_round": table.to_dict(orient="records")}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))

# %% [markdown]
# ## Takeaway
#
# Shared randomness turns vectors into scalars: FedKSeed's and Just One Byte's
# uplinks are a few hundred bytes or less where FedAvg sends the whole model,
# so on the bytes axis they start learning long before FedAvg's first round is
# paid for — but per step they learn far more slowly, because a random
# direction carries little of the gradient. Ferret keeps first-order local
# training and compresses only the message. FZooS is the odd one out: it sends
# the model and a surrogate, and saves *queries* rather than bytes.
