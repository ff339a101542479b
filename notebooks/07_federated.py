# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # Federated learning on skewed clients that drop out
#
# **The question.** Ten phones each hold a few digits, mostly of one or two
# classes, and in every round some of the sampled phones drop out. Which
# federated technique gets the best global model per round, and per byte the
# phones upload?
#
# **The knobs.** `dirichlet_alpha`: how skewed the clients' labels are (small =
# each client sees few classes). `dropout_prob`: the chance a sampled client
# leaves a round. `local_steps`: the sync period, local steps per round.
# `compression_ratio`: the uplink budget of SCALLION and SCAFCOM.
#
# **The techniques.** FedAvg (average the clients' models); FedProx (a
# proximal term keeps clients near the global model); SCAFFOLD (control
# variates correct client drift; two vectors up); SCALLION and SCAFCOM (one
# compressed vector up: random-k, unbiased; top-k with momentum, biased); MoDeST
# (no server: sampled trainers, aggregators from the next sample); FedVote (one
# bit per weight up, credibility-weighted vote); PGFed (personalized models that
# also learn from first-order approximations of the other clients' risks).
#
# **What to look at.** Test loss against rounds and against uplink bytes (log),
# and who took part in each round.

# %% tags=["parameters"]
rounds = 15
num_clients = 10
client_fraction = 0.5  # clients sampled per round (MoDeST: its trainers)
local_steps = 10  # the sync period: local steps per round
dirichlet_alpha = 0.3  # label skew across clients: the smaller, the more skewed
dropout_prob = 0.2  # chance a sampled client drops out of a round
compression_ratio = 0.1  # SCALLION / SCAFCOM uplink budget (bytes over dense fp32 bytes)
adapter_rounds = 6  # rounds of the adapters-vs-full-fine-tuning comparison
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
from widgets.sync_charts import loss_against, participation_chart

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## The runs
#
# The same clients, data split, model (an MLP on `digits`), rounds and local
# steps for every technique; `topology="phones"` puts the clients on 20 Mb/s
# uplinks to a server. Dropouts are drawn from the seed and the round, so every
# technique meets the same dropouts in the same round (MoDeST samples its own
# trainers, so it meets them on different clients).
#
# One set of settings serves every technique, each run adds its own knobs, and
# `config_for` keeps what that technique reads; the table lists what each run
# left out and why.

# %%
shared = dict(num_workers=num_clients, rounds=rounds, client_fraction=client_fraction, local_steps=local_steps,
              partition="dirichlet", dirichlet_alpha=dirichlet_alpha, dropout_prob=dropout_prob, topology="phones",
              lr=0.1, batch_size=16, eval_every=1, compression_ratio=compression_ratio)
plan = {
    "FedAvg": ("fedavg", {}),
    "FedProx": ("fedprox", dict(prox_mu=0.1)),
    "SCAFFOLD": ("scaffold", {}),
    "SCALLION rand-k": ("scallion", dict(compressor="randk")),
    "SCAFCOM top-k": ("scafcom", dict(compressor="topk", scafcom_beta=0.5)),
    "MoDeST": ("modest", dict(modest_aggregators=2, success_fraction=0.5)),
    "FedVote": ("fedvote", dict(lr=0.05)),
    "PGFed": ("pgfed", dict(momentum=0.5)),
}
configs = {label: config_for(t, **{**shared, **own}) for label, (t, own) in plan.items()}
pd.DataFrame([{"run": label, "left out": field, "why": why} for label, (t, own) in plan.items()
              for field, why in dropped(t, {**shared, **own}).items()])

# %%
runs = {label: run(c, save=False, progress=False) for label, c in configs.items()}
df = widgets.frame(list(runs.items()))

# %% [markdown]
# ## Test loss against rounds and against uplink bytes

# %%
widgets.show(loss_against(df, "round", y="eval_loss", title="test loss against rounds")
             | loss_against(df, "bytes_uplink", y="eval_loss", log_x=True, title="test loss against uplink bytes"))

# %% [markdown]
# ## Who took part
#
# Every run records the clients whose update was used in each round
# (`participants`); with `dropout_prob > 0` some sampled clients are missing.

# %%
widgets.show(participation_chart(df))

# %%
table = pd.DataFrame([{"run": label, **r.summary(),
                       "uplink_bytes": int(r.metrics.bytes_uplink.iloc[-1]),
                       "rounds_completed": int(r.metrics.round_completed.sum()),
                       "participants": int(r.metrics.num_participants.sum()),
                       "personal_accuracy": float(r.metrics.get("personal_accuracy",
                                                                pd.Series([float("nan")])).iloc[-1])}
                      for label, r in runs.items()]).set_index("run")
table["uplink_vs_fedavg"] = table.uplink_bytes / table.loc["FedAvg", "uplink_bytes"]
table[["eval_accuracy", "eval_loss", "uplink_bytes", "uplink_vs_fedavg", "rounds_completed", "participants",
       "personal_accuracy"]]


# %%
def number(v):
    return None if pd.isna(v) else float(v)  # JSON has no NaN


results = {"runs": {label: {k: (v if k == "technique" else number(v)) for k, v in row.items()
                            if k in ("technique", "eval_accuracy", "eval_loss", "uplink_bytes", "uplink_vs_fedavg",
                                     "rounds_completed", "participants", "personal_accuracy")}
                    for label, row in table.iterrows()},
           "sampled_per_round": max(1, round(client_fraction * num_clients)), "rounds": rounds}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))
for label, row in table.iterrows():
    print(f"{label:16s} accuracy {row.eval_accuracy:.3f}  uplink {row.uplink_vs_fedavg:.3f} of FedAvg  "
          f"{row.participants} client updates used in {row.rounds_completed} rounds")

# %% [markdown]
# ## Adapters against full fine-tuning of the same pre-trained backbone
#
# FedPEFT, FedEx-LoRA, DP-LoRA and CELLM fine-tune a backbone that was pre-trained
# first (`lab.pretrain`: the MLP on digits 0–4, cached in the runs store), on the
# other half of the task (digits 5–9), as their papers fine-tune pre-trained
# models. The baseline is full fine-tuning of the *same* backbone: FedAvg over
# every weight (`pretrained='on'`). What each adapter buys is uplink bytes; what
# it costs is accuracy. DP-LoRA's noise needs a smaller step (lr 0.1): at the
# others' 0.2 its adapters diverge, and the run would stop and say so.

# %%
tuning = dict(num_workers=num_clients, rounds=adapter_rounds, client_fraction=client_fraction,
              local_steps=local_steps, batch_size=16, eval_every=1, lr=0.2, topology="phones")
adapter_plan = {"full fine-tuning": ("fedavg", dict(pretrained="on")), "FedPEFT (LoRA)": ("fedpeft", {}),
                "FedEx-LoRA": ("fedex_lora", {}), "DP-LoRA": ("dp_lora", dict(lr=0.1)), "CELLM": ("cellm", {})}
adapters = {label: run(config_for(t, **{**tuning, **own}), save=False, progress=False)
            for label, (t, own) in adapter_plan.items()}
full_bytes = int(adapters["full fine-tuning"].metrics.bytes_uplink.iloc[-1])
adapter_table = pd.DataFrame([{"run": label, "status": r.status, "accuracy": r.summary()["eval_accuracy"],
                               "uplink": int(r.metrics.bytes_uplink.iloc[-1]),
                               "uplink_vs_full": int(r.metrics.bytes_uplink.iloc[-1]) / full_bytes}
                              for label, r in adapters.items()]).set_index("run")
adapter_table.style.format({"accuracy": "{:.1%}", "uplink": "{:,} B", "uplink_vs_full": "{:.3f}"})

# %%
results["adapters"] = {label: {k: (v if k == "status" else float(v)) for k, v in row.items()}
                       for label, row in adapter_table.iterrows()}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))

# %% [markdown]
# ## Privacy: which threat model an ε holds for
#
# DP-LoRA (`technique='dp_lora'`) clips each client's update to norm C and adds
# Gaussian noise N(0, σ²C²), and reports (ε, δ) from a Rényi-DP accountant
# (`lab.lora.accountant`, equal to Google's `dp_accounting`). Which ε holds
# depends on who adds the noise (`dp_model`). **Local DP** (the default): each
# client noises its own update, so the guarantee holds against the server too —
# but the server picks the sample and sees every noisy update with its sender,
# so sampling buys nothing: ε composes over the rounds a client took part in.
# **Central DP**: an honest server adds one noise draw to the sum and samples each
# client independently with probability `client_fraction` (Poisson), and
# sampling amplifies privacy — against everyone who sees the models, not against
# the server. Same σ and rounds, this notebook's sampling rate:

# %%
from lab.lora.accountant import epsilon

q = client_fraction
print(f"sigma = 1, delta = 1e-5, {rounds} rounds, q = {q}:")
print(f"  central DP (honest server, Poisson sampling): epsilon = "
      f"{epsilon(q=q, sigma=1.0, steps=rounds, delta=1e-5)[0]:.2f}")
print(f"  local DP (every client noises, a client in every round): epsilon = "
      f"{epsilon(q=1.0, sigma=1.0, steps=rounds, delta=1e-5)[0]:.2f}")

# %% [markdown]
# ## Takeaway
#
# With the default parameters (one seed, 15 rounds, 5 of 10 skewed clients
# sampled per round, a fifth of them dropping out) the control variates pay off:
# SCAFFOLD ends with a better global model than FedAvg and FedProx, at twice
# FedAvg's uplink (two vectors per client). SCALLION, one random-k compressed
# vector per client, ends close to FedAvg with a tenth of its uplink; SCAFCOM
# with top-k at the same budget lands lower in this short run. PGFed's global
# model is about as good as SCAFFOLD's, and each client's own (personalized)
# model is better still on its own classes (`personal_accuracy`), at about 2×
# FedAvg's bytes. One seed and a few rounds: read differences of a point or two
# as noise. MoDeST trains without any
# server and tolerates the dropouts because its aggregators wait for only half
# of the sample; on the phone topology its peer-to-peer messages are relayed
# through the operator, so its uplink counts both directions of every hop.
#
# FedVote uploads 1/32 of FedAvg's bytes but stalls here: with 5 voters, of
# which the credibility filter keeps the more agreeing half, whole coordinates
# are voted unanimously, the soft vote clips at ±(1 − 10⁻⁴), and those weights
# freeze at ±1. It needs many voters per round (the paper uses 31 and more) —
# try `client_fraction=1.0` or more clients.
#
# To try next: raise `dirichlet_alpha` towards IID and watch the gap between
# FedAvg and SCAFFOLD close; set `dropout_prob=0` and a sign-flipping minority
# (`byzantine_clients`) and compare FedVote with FedAvg.
