"""Write 02_compression.ipynb and 08_zeroth_order.ipynb from the cell sources below (stored without outputs).

    .venv/bin/python notebooks/build_compression_notebooks.py

Same conventions and helpers as `build_notebooks.py`: edit here, not in JupyterLab.
"""
from __future__ import annotations

from build_notebooks import code, md, params, write

COMPRESSION = [
    md("""
# How much must each message carry?

**The question.** DDP sends every gradient in full: d fp32 values per worker
per step. Compressors send less — the k largest entries, k random ones, a few
bits per value, the signs, a low-rank factorization, an entropy-coded
quantization — but what they drop must not stop training. Which compressors,
with which **error feedback** rule, still converge when they carry the same
number of bytes?

**The knob: compression ratio**, the bytes a message really takes (values,
indices, scales, seeds, headers) over its dense fp32 bytes — always measured
from the encoded packet. Each compressor turns the target ratio into its own
parameter (k, bits, rank, kept fraction); the ones that cannot go that low
(sign: 1 bit per value) run at their own ratio.

**What to look at.** Loss against bytes for each compressor at the same
measured ratio, without and with error feedback (EF, EF21, EControl); then the
same on the character-level language model.
"""),
    params("""
steps = 120  # DDP steps per run on digits
num_workers = 4
target_ratio = 0.07  # measured bytes / dense bytes every compressor must not exceed
compressors = ["topk", "randk", "qsgd", "sign", "powersgd", "fedzip"]
feedbacks = ["none", "ef", "ef21", "econtrol"]
lm_steps = 40  # DDP steps on the character LM (0 skips it)
lm_compressors = ["topk", "powersgd", "sign"]
metrics_path = ""  # if set, results are written here as JSON
"""),
    code("""
import json
from pathlib import Path

import pandas as pd
import torch

import widgets
from lab.compress import NO_FEEDBACK
from lab.compress.knob import Probe
from lab.experiment import ExperimentConfig, run

torch.set_num_threads(1)  # small models: one thread is faster
widgets.enable_offline();  # charts render without internet
"""),
    md("""
## The knob

Move the ratio (log scale), pick a compressor and an error-feedback rule: the
line underneath shows the compressor's own parameter for this model (an MLP on
`digits`, d = 4810) and the ratio its packet measures.
"""),
    code("""
base = ExperimentConfig(technique="ddp", num_workers=num_workers, steps=steps, lr=0.3, eval_every=steps)
knobs = widgets.CompressionKnobs(base.replace(compressor="topk", compression_ratio=target_ratio))
knobs
"""),
    md("""
Every compressor at the target: its setting (the largest `compression_ratio`
whose packet fits the target), its parameter and the measured ratio.
"""),
    code("""
probe = knobs.probe
settings = {name: probe.setting_for(name, target_ratio) for name in compressors}
knob_table = pd.DataFrame([{**probe.knob(name, s), "setting": s} for name, s in settings.items() if s is not None])
knob_table[["compressor", "setting", "parameter", "measured_ratio"]]
"""),
    md("""
## Digits: every compressor, every error-feedback rule

DDP on 4 workers; the same data, model, seed and steps for every run. The
majority vote takes no error feedback; random-k is sent scaled by d/k
(unbiased) without feedback and unscaled (contractive) inside it.
"""),
    code("""
dense = run(base, save=False, progress=False)
runs = {}
for name, setting in settings.items():
    if setting is None:
        continue
    for fb in feedbacks:
        if name in NO_FEEDBACK and fb != "none":
            continue
        cfg = base.replace(compressor=name, compression_ratio=setting, error_feedback=fb)
        runs[(name, fb)] = run(cfg, save=False, progress=False)
table = pd.DataFrame([{"compressor": n, "feedback": fb, "measured_ratio": float(r.metrics.measured_ratio.iloc[-1]),
                       **r.summary()} for (n, fb), r in runs.items()])
table.pivot(index="compressor", columns="feedback", values="eval_accuracy").round(3)
"""),
    md("""
Loss against bytes, one line per compressor, with each feedback rule in its
own panel (the uncompressed DDP run for reference). The legend shows each
run's measured ratio.
"""),
    code("""
charts = []
for fb in feedbacks:
    picked = {f"{n}": r for (n, f), r in runs.items() if f == fb}
    if picked:
        df = widgets.compressor_frame({"dense DDP": dense, **picked})
        charts.append(widgets.loss_vs_bytes_chart(df, title=f"error feedback: {fb}", width=300, height=220))
import altair as alt
widgets.show(alt.hconcat(*charts[:2]) & alt.hconcat(*charts[2:]) if len(charts) > 2 else alt.hconcat(*charts))
"""),
    md("""
## The character-level language model

The same question on a tiny GPT over a public-domain text: attention and
embedding matrices instead of an MLP. PowerSGD compresses every weight
matrix; top-k and sign act on the flat vector. All with EF.
"""),
    code("""
lm_base = ExperimentConfig(technique="ddp", num_workers=num_workers, steps=max(lm_steps, 1), dataset="chars",
                           model="gpt", lr=0.01, optimizer="adamw", batch_size=8, eval_every=max(lm_steps, 1))
lm_runs = {}
if lm_steps:
    lm_probe = Probe(lm_base)
    lm_runs["dense DDP"] = run(lm_base, save=False, progress=False)
    for name in lm_compressors:
        s = lm_probe.setting_for(name, target_ratio)
        if s is not None:
            lm_runs[name] = run(lm_base.replace(compressor=name, compression_ratio=s, error_feedback="ef"),
                                save=False, progress=False)
    widgets.show(widgets.loss_vs_bytes_chart(widgets.compressor_frame(lm_runs), title="character LM, with EF"))
"""),
    code("""
results = {
    "target_ratio": target_ratio,
    "dense": dense.summary(),
    "knob": knob_table.to_dict(orient="records"),
    "runs": {f"{n}/{fb}": {**r.summary(), "measured_ratio": float(r.metrics.measured_ratio.max())}
             for (n, fb), r in runs.items()},
    "lm": {k: {**r.summary(), "initial_loss": float(r.metrics.loss.iloc[0]),
               "measured_ratio": float(r.metrics.measured_ratio.max()) if "measured_ratio" in r.metrics else 1.0}
           for k, r in lm_runs.items()},
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))
"""),
    md("""
## Takeaway

At the same bytes, the compressors are not equal, and the error-feedback rule
matters as much as the compressor. Biased compressors (top-k, sign, PowerSGD,
FedZip) need feedback to keep up with dense DDP; PowerSGD without it barely
learns. Unbiased ones pay in variance instead, and feedback can hurt them:
QSGD at 2 bits per value (ω ≈ 23) diverges inside EF, EF21 and EControl, which
assume a contractive compressor. EF21 and EControl exist because EF alone can
stall under heterogeneous workers (see `tests/test_topk_error_feedback.py`
for the three-client counterexample, where plain top-1 diverges).

To try next: lower `target_ratio` to 0.01, skew the data across workers
(`partition="dirichlet"`), or compress Local SGD's pseudo-gradients
(`technique="local_sgd"`) and FedAvg's uplink (`technique="fedavg"`).
"""),
]

ZEROTH_ORDER = [
    md("""
# Sending seeds and scalars instead of vectors

**The question.** A random direction is fully described by the seed that
generated it. If every party can regenerate the directions, a worker only
needs to send scalars: how far to move along each one. How little can a
federated round carry this way, and what does it cost in progress per byte?

**The methods.** FedKSeed: zeroth-order steps along K candidate seeds, each
client uploads (seed index, scalar) pairs. Just One Byte: decentralized
two-point estimates, each sent as one byte. Ferret: first-order local
training, the update projected on shared random directions. FZooS: Gaussian-
process surrogate gradients from a client's own queries, with a shared
random-feature surrogate to correct drift. Against FedAvg, which sends the
model.

**What to look at.** Bytes per client per round (uplink and downlink), and the
loss against bytes.
"""),
    params("""
rounds = 8
num_workers = 4
local_steps = 5  # first-order local steps per round (FedAvg, Ferret) and FZooS's surrogate steps
zo_local_steps = 50  # FedKSeed's zeroth-order steps per round
zo_seeds = 1024  # FedKSeed's candidate seeds K
job_steps = 200  # Just One Byte iterations
metrics_path = ""  # if set, results are written here as JSON
"""),
    code("""
import json
from pathlib import Path

import pandas as pd
import torch

import widgets
from lab.experiment import ExperimentConfig, run

torch.set_num_threads(1)  # small models: one thread is faster
widgets.enable_offline();  # charts render without internet
"""),
    md("""
## The runs

An MLP on `digits` (d = 4810) over 4 clients. Each method keeps its own
learning rate (zeroth-order steps need smaller ones); the budgets differ, so
compare them on the bytes axis.
"""),
    code("""
base = ExperimentConfig(num_workers=num_workers, rounds=rounds, local_steps=local_steps, eval_every=1, zo_seeds=zo_seeds)
configs = {
    "FedAvg": base.replace(technique="fedavg", lr=0.5),
    "FedKSeed": base.replace(technique="fedkseed", lr=0.02, local_steps=zo_local_steps),
    "Just One Byte": base.replace(technique="justonebyte", lr=0.01, steps=job_steps, eval_every=max(job_steps // 8, 1)),
    "Ferret": base.replace(technique="ferret", lr=0.5),
    "FZooS": base.replace(technique="fzoos", lr=0.01, fzoos_candidates=20),
}
runs = {name: run(c, save=False, progress=False) for name, c in configs.items()}
"""),
    md("""
## Bytes per round

Per client and round: what it uploads and what it downloads. FedKSeed's
uplink is its τ (seed index, scalar) pairs; its downlink is the accumulated
scalar of every seed (4K bytes), from which a client rebuilds the model. Just
One Byte has no rounds: its line is per iteration and per machine.
"""),
    code("""
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
"""),
    md("""
## Loss against bytes
"""),
    code("""
df = widgets.frame(runs)
widgets.show(widgets.loss_vs_bytes_chart(df, y="eval_loss", title="test loss against bytes sent (all ranks)"))
"""),
    code("""
results = {"runs": {n: {**r.summary(), "initial_eval_loss": float(r.metrics.eval_loss.dropna().iloc[0])}
                    for n, r in runs.items()},
           "per_round": table.to_dict(orient="records")}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))
"""),
    md("""
## Takeaway

Shared randomness turns vectors into scalars: FedKSeed's and Just One Byte's
uplinks are a few hundred bytes or less where FedAvg sends the whole model,
so on the bytes axis they start learning long before FedAvg's first round is
paid for — but per step they learn far more slowly, because a random
direction carries little of the gradient. Ferret keeps first-order local
training and compresses only the message. FZooS is the odd one out: it sends
the model and a surrogate, and saves *queries* rather than bytes.
"""),
]


if __name__ == "__main__":
    for name, cells in (("02_compression.ipynb", COMPRESSION), ("08_zeroth_order.ipynb", ZEROTH_ORDER)):
        print("wrote", write(name, cells))
