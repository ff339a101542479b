# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # How much must each message carry?
#
# **The question.** DDP sends every gradient in full: d fp32 values per worker
# per step. Compressors send less — the k largest entries, k random ones, a few
# bits per value, the signs, a low-rank factorization, an entropy-coded
# quantization — but what they drop must not stop training. Which compressors,
# with which **error feedback** rule, still converge when they carry the same
# number of bytes?
#
# **The knob: compression ratio.** Two ratios matter, both measured from the
# encoded packets (values, indices, scales, seeds, headers):
#
# - the *payload ratio*: one message's encoded bytes over its dense fp32 bytes;
# - the *traffic ratio*: the bytes the busiest rank sends over what the dense
#   ring all-reduce of the same tensor sends at the same number of workers.
#
# They differ because compressed messages cannot always be summed on the way:
# all-gathering them makes every rank send P − 1 messages, so a payload ratio of
# 0.1 costs more than 0.1 of the traffic as P grows. The knob targets the
# traffic ratio: each compressor turns it into its own parameter (k, bits, rank,
# kept fraction) for the exchange the topology picks; the ones that cannot go
# that low (sign: 1 bit per value) run at their own ratio.
#
# **What to look at.** Loss against bytes for each compressor at the same
# traffic ratio, without and with error feedback (EF, EF21, EControl); then the
# same on the character-level language model.

# %% tags=["parameters"]
steps = 120  # DDP steps per run on digits
num_workers = 4
target_ratio = 0.07  # the traffic ratio (bytes sent / the dense all-reduce's) no compressor may exceed
compressors = ["topk", "randk", "qsgd", "sign", "powersgd", "fedzip"]
feedbacks = ["none", "ef", "ef21", "econtrol"]
lm_steps = 40  # DDP steps on the character LM (0 skips it)
lm_compressors = ["topk", "powersgd", "sign"]
metrics_path = ""  # if set, results are written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import altair as alt
import pandas as pd

import widgets
from lab.compress.knob import Probe
from lab.compress.registry import NO_FEEDBACK
from lab.config import config_for
from lab.experiment import run

_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## Try it: the compression part of the lab
#
# Move the ratio (log scale) or pick a compressor: the predicted bytes and time
# per step redraw before anything trains; Run trains the config shown. The runs
# below start from it: its workers and steps are theirs, its ratio (when its
# compressor takes one) is their target.

# %%
lab = widgets.Lab(config_for("ddp", num_workers=num_workers, steps=steps, lr=0.3, eval_every=steps, compressor="topk",
                             compression_ratio=target_ratio), focus="compression", load_runs=False)
lab

# %% [markdown]
# ## The knob, in detail
#
# Pick a compressor and an error-feedback rule: the line underneath shows the
# compressor's own parameter for this model (an MLP on `digits`, d = 4810), the
# exchange it goes through, and the two ratios its packets measure.

# %%
picked = lab.chosen()  # the Lab's settings above
num_workers, steps = picked.num_workers, picked.steps
target_ratio = picked.compression_ratio if picked.compression_ratio < 1 else target_ratio  # (sign, none: no ratio)
shared = dict(num_workers=num_workers, steps=steps, lr=0.3, eval_every=steps)
knobs = widgets.CompressionKnobs(config_for("ddp", **shared, compressor="topk", compression_ratio=target_ratio))
knobs

# %% [markdown]
# Every compressor at the target: its setting (the largest `compression_ratio`
# whose exchange fits the target traffic), its parameter, the exchange and both
# measured ratios.

# %%
probe = knobs.probe
settings = {name: probe.setting_for(name, target_ratio) for name in compressors}
knob_table = pd.DataFrame([{**probe.knob(name, s), "setting": s} for name, s in settings.items() if s is not None])
left_out = probe.left_out(compressors, target_ratio)  # {compressor: why it cannot reach the target}
for name, reason in left_out.items():
    print(f"left out of the comparison: {name}: {reason}")
knob_table[[c for c in ("compressor", "setting", "parameter", "algorithm", "payload_ratio", "traffic_ratio")
            if c in knob_table]]

# %% [markdown]
# ## Digits: every compressor, every error-feedback rule
#
# DDP on 4 workers; the same data, model, seed and steps for every run. The
# majority vote takes no error feedback; random-k is sent scaled by d/k
# (unbiased) without feedback and unscaled (contractive) inside it.

# %%
dense = run(config_for("ddp", **shared), save=False, progress=False)
runs = {}
for name, setting in settings.items():
    if setting is None:
        continue
    for fb in feedbacks:
        if name in NO_FEEDBACK and fb != "none":
            continue
        # config_for leaves out the ratio of a fixed-size compressor (sign reads none)
        cfg = config_for("ddp", **shared, compressor=name, compression_ratio=setting, error_feedback=fb)
        runs[(name, fb)] = run(cfg, save=False, progress=False)


def ratios(r):
    """The last exchange's payload and traffic ratios of a run."""
    return {c: float(r.metrics[c].dropna().iloc[-1]) for c in ("payload_ratio", "traffic_ratio") if c in r.metrics}


table = pd.DataFrame([{"compressor": n, "feedback": fb, **ratios(r), **r.summary()} for (n, fb), r in runs.items()])
table.pivot(index="compressor", columns="feedback", values="eval_accuracy").round(3)

# %% [markdown]
# Loss against bytes, one line per compressor, with each feedback rule in its
# own panel (the uncompressed DDP run for reference). The legend shows each
# run's traffic ratio.

# %%
charts = []
for fb in feedbacks:
    picked = {f"{n}": r for (n, f), r in runs.items() if f == fb}
    if picked:
        df = widgets.compressor_frame({"dense DDP": dense, **picked})
        charts.append(widgets.loss_vs_bytes_chart(df, title=f"error feedback: {fb}", width=300, height=220))
widgets.show(alt.hconcat(*charts[:2]) & alt.hconcat(*charts[2:]) if len(charts) > 2 else alt.hconcat(*charts))

# %% [markdown]
# ## The character-level language model
#
# The same question on a tiny GPT over a public-domain text: attention and
# embedding matrices instead of an MLP. PowerSGD compresses every weight
# matrix; top-k and sign act on the flat vector. All with EF.

# %%
lm_shared = dict(num_workers=num_workers, steps=max(lm_steps, 1), dataset="chars", model="gpt", lr=0.01,
                 optimizer="adamw", batch_size=8, eval_every=max(lm_steps, 1))
lm_runs = {}
lm_left_out = {}
if lm_steps:
    lm_probe = Probe(config_for("ddp", **lm_shared))
    lm_left_out = lm_probe.left_out(lm_compressors, target_ratio)
    for name, reason in lm_left_out.items():
        print(f"left out of the LM comparison: {name}: {reason}")
    lm_runs["dense DDP"] = run(config_for("ddp", **lm_shared), save=False, progress=False)
    for name in lm_compressors:
        s = lm_probe.setting_for(name, target_ratio)
        if s is not None:
            lm_runs[name] = run(config_for("ddp", **lm_shared, compressor=name, compression_ratio=s,
                                           error_feedback="ef"), save=False, progress=False)
    widgets.show(widgets.loss_vs_bytes_chart(widgets.compressor_frame(lm_runs), title="character LM, with EF"))

# %%
results = {
    "target_ratio": target_ratio,
    "dense": dense.summary(),
    "knob": knob_table.to_dict(orient="records"),
    "left_out": left_out,
    "lm_left_out": lm_left_out,
    "runs": {f"{n}/{fb}": {**r.summary(), **ratios(r)} for (n, fb), r in runs.items()},
    "lm": {k: {**r.summary(), "initial_loss": float(r.metrics.loss.iloc[0]), **ratios(r)} for k, r in lm_runs.items()},
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))

# %% [markdown]
# ## Takeaway
#
# The exchange decides what a payload costs. Compressors whose messages can be
# cut into chunks go through the two-phase exchange (each rank reduces one
# chunk, then the reduced chunks are gathered, compressed on both hops), so
# their traffic ratio equals their payload ratio; FedZip's messages cannot, so
# they are all-gathered and each rank sends P − 1 of them: on 4 workers a 0.035
# payload costs 0.07 of the dense all-reduce's traffic, and more as P grows.
#
# At the same traffic, the compressors are not equal, and the error-feedback
# rule matters as much as the compressor. Biased compressors (top-k, sign,
# PowerSGD, FedZip) need feedback to keep up with dense DDP; PowerSGD without it
# learns far less (about 0.6 accuracy against 0.9). Unbiased ones pay in
# variance instead, and feedback can hurt them: QSGD at 2 bits per value
# (ω ≈ 23) diverges inside EF, EF21 and EControl, which assume a contractive
# compressor, and random-k at 7% stays far behind with or without it. EF21 and EControl
# exist because EF alone can stall under heterogeneous workers (see
# `tests/test_topk_error_feedback.py` for the three-client counterexample,
# where plain top-1 diverges).
#
# To try next: lower `target_ratio` to 0.01, skew the data across workers
# (`partition="dirichlet"`), or compress Local SGD's pseudo-gradients
# (`technique="local_sgd"`) and FedAvg's uplink (`technique="fedavg"`).
