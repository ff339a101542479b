"""Write the notebooks in this folder from the cell sources below (stored without outputs).

    .venv/bin/python notebooks/build_notebooks.py

Edit the notebooks here, not in JupyterLab, so they stay thin and diffable.
Each notebook's first code cell is tagged `parameters` (literals only, for
papermill); when `metrics_path` is set the notebook writes its results there.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"name": "commlab", "display_name": "commlab (Python 3)", "language": "python"}


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str, *tags: str):
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text: str):
    return code(text, "parameters")


TOUR = [
    md("""
# A tour of commlab

**commlab** is a lab for communication-efficient distributed training in PyTorch.
Three ideas carry it:

- **A cluster is a tensor with a leading rank axis.** Every per-worker quantity
  (parameters, gradients, optimizer state) is one tensor whose dim 0 indexes
  ranks, so 8 simulated workers train in one process, in one `vmap`.
- **Techniques talk through a `Collective`.** DDP, Local SGD, FedAvg never read
  another rank's row; they call `all_reduce`, `all_gather`, ... The same
  technique code runs simulated here or on a real `torch.distributed` group.
- **Bytes are measured, time is simulated.** A `Ledger` counts the bytes of every
  payload actually sent; a `Topology` (NVLink node, WAN sites, phones, ...)
  turns them into simulated seconds with an α-β cost model.

The question of this tour: *what does a run give you, and how do you compare
techniques?*
"""),
    params("""
steps = 160  # local steps per worker
num_workers = 8
sync_period = 16  # Local SGD: local steps between parameter averages
metrics_path = ""  # if set, results are written here as JSON
chart_path = ""  # if set, the DDP vs Local SGD chart is saved here as a PNG
"""),
    code("""
import json
from pathlib import Path

import widgets
from lab.experiment import ExperimentConfig, run

widgets.enable_offline();  # charts render without internet
"""),
    md("""
## One run: Local SGD

The knob is `sync_period` H: each worker takes H steps on its own data, then
all workers average their parameters. An `ExperimentConfig` is validated when
it is built (a bad value raises a `ValueError` naming the field), and `run`
returns a `Run` with a tidy metrics table, one row per communication round.

What to look at: `bytes` (all bytes all ranks sent so far), `sim_seconds`
(simulated compute + communication) next to `wall_seconds` (how long the
simulation really took).
"""),
    code("""
base = ExperimentConfig(num_workers=num_workers, steps=steps)
local = run(base.replace(technique="local_sgd", sync_period=sync_period), save=False, progress=False)
local.summary()
"""),
    code("""
local.metrics[["step", "round", "loss", "eval_accuracy", "bytes", "sim_seconds", "wall_seconds"]].tail()
"""),
    md("""
## One chart: DDP against Local SGD, loss against bytes

DDP averages gradients after every step; Local SGD averages parameters every
H steps. Same data, model, seed and number of local steps. What to look at:
where each curve ends on the (log) bytes axis, and how far apart the losses are.
"""),
    code("""
ddp = run(base.replace(technique="ddp"), save=False, progress=False)
df = widgets.frame({"DDP": ddp, f"Local SGD H={sync_period}": local})
chart = widgets.loss_vs_bytes(df, width=460, height=260, title="training loss against bytes sent")
widgets.show(chart)
"""),
    code("""
ratio = ddp.summary()["bytes"] / local.summary()["bytes"]
print(f"DDP sent {ratio:.1f}x the bytes of Local SGD H={sync_period}; eval accuracy "
      f"{ddp.summary()['eval_accuracy']:.3f} (DDP) vs {local.summary()['eval_accuracy']:.3f} (Local SGD)")
"""),
    md("""
**Takeaway:** Local SGD sends 1/H of DDP's bytes, and on this small task reaches
about the same loss; the notebook `01_sync_period` asks how large H can get.
"""),
    md("""
## The interactive panel

Move the knobs and press **Run**: training runs in a background thread, the
progress bar and the charts (loss against steps, bytes and simulated seconds)
update live, **Stop** ends the run after the current round and keeps what it
finished. Each run is a new line, so runs overlay. An invalid combination (try
16 workers on `nvlink_node`, which holds 8) is explained under the knobs.
"""),
    code("""
panel = widgets.RunPanel(base.replace(technique="local_sgd", sync_period=sync_period))
panel
"""),
    md("""
Pressing **Run** is `panel.start()`; the next cell does it from code, so the
notebook also works top to bottom. `panel.runs` keeps every finished or stopped `Run`.
"""),
    code("""
panel.start()
panel.wait(300)
panel.last_run.summary()
"""),
    code("""
results = {
    "ddp": ddp.summary(),
    "local_sgd": local.summary(),
    "bytes_ratio_ddp_over_local_sgd": ratio,
    "panel": panel.last_run.summary(),
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))
if chart_path:
    chart.save(chart_path, scale_factor=2)  # PNG through vl-convert, offline
"""),
    md("""
## Going further

- The same runs from a shell: `commlab run --technique local_sgd --workers 8 --sync-period 16 --steps 200`
  (`commlab run --help` lists every `ExperimentConfig` field).
- On a real process group, one process per worker:
  `torchrun --nproc-per-node 4 -m lab.cli run --backend distributed --workers 4 --technique local_sgd`.
- `01_sync_period.ipynb`: how often must workers talk? DDP, Local SGD across H,
  and FedAvg on a fast and a slow network.
"""),
]

SYNC_PERIOD = [
    md("""
# How often must workers talk?

**The question.** Data-parallel training averages something across workers.
DDP averages gradients after every step. How much of that communication can we
drop before training suffers, and what does dropping it buy on a fast network
versus a slow one?

**The knob: sync period H.** Local SGD lets every worker take H steps on its
own data, then averages the parameters: one all-reduce of the model every H
steps instead of one of the gradient every step, so 1/H of DDP's bytes. H = 1
is DDP (equal for plain SGD). FedAvg is the federated cousin: a server sends
the model to the clients, each runs an epoch on its own data, uploads, and the
server averages.

**What to look at.** Loss against bytes: for the same number of local steps,
how far left does each curve end, and how high? Loss against simulated time on
two networks: one 8-GPU NVLink node and 8 sites joined by a 1 Gb/s, 30 ms WAN.
"""),
    params("""
steps = 128  # local steps per worker, the same budget for every technique
num_workers = 8
sync_periods = [1, 4, 16, 64]
topologies = ["nvlink_node", "wan_sites"]
lm_steps = 48  # part 2, the character LM: local steps per worker
lm_workers = 4
lm_sync_period = 12  # H for Local SGD, DiLoCo and Streaming DiLoCo; QSR starts at H / 3
lm_fragments = 3  # Streaming DiLoCo's P (at most H; the LM's 111690 parameters split into equal thirds)
lm_qsr_alpha = 0.006  # QSR's alpha for AdamW at lr 3e-3: H grows like (alpha / lr)^2 as the cosine decays
metrics_path = ""  # if set, results are written here as JSON
"""),
    code("""
import json
from pathlib import Path

import pandas as pd

import widgets
from lab.experiment import ExperimentConfig, run

widgets.enable_offline();  # charts render without internet
"""),
    md("""
## The runs

Every run uses the same data, model, seed and number of local steps; only the
technique and H change. FedAvg is budgeted in rounds, so we first measure how
many local steps one round is and give it the same step budget. The topology
changes only the simulated clock, never the training.
"""),
    code("""
base = ExperimentConfig(num_workers=num_workers, steps=steps)
configs = {"DDP": base.replace(technique="ddp")}
configs.update({f"Local SGD H={h}": base.replace(technique="local_sgd", sync_period=h) for h in sync_periods})
steps_per_round = run(base.replace(technique="fedavg", rounds=1), save=False, progress=False).summary()["steps"]
configs["FedAvg"] = base.replace(technique="fedavg", rounds=max(1, steps // steps_per_round))

runs = {(label, t): run(c.replace(topology=t), save=False, progress=False)
        for t in topologies for label, c in configs.items()}
df = widgets.frame([(label, r) for (label, t), r in runs.items()])
"""),
    md("""
## Loss against bytes

The bytes do not depend on the network, so one topology is enough here.
Local SGD with H = 1 averages every step, like DDP, and lies on top of it.
"""),
    code("""
widgets.show(widgets.loss_vs_bytes(df[df.topology == topologies[0]], width=460, height=260,
                                   title="training loss against bytes sent"))
"""),
    md("""
## Loss against simulated time, on two networks

Same runs, now against the simulated clock (compute from the device profile
plus communication from the α-β model), one panel per topology. Log-x: the
networks differ by orders of magnitude.
"""),
    code("""
time_chart = widgets.loss_vs_time(df, log_x=True, width=300, height=220, title="training loss against simulated time")
widgets.show(time_chart.facet(column="topology:N").resolve_scale(x="independent"))
"""),
    code("""
table = pd.DataFrame([{"run": label, "topology": t, **r.summary()} for (label, t), r in runs.items()])
ddp_bytes = table.set_index(["run", "topology"])["bytes"]["DDP"]
ddp_time = table.set_index(["run", "topology"])["sim_seconds"]["DDP"]
table["bytes_vs_ddp"] = table.bytes / table.topology.map(ddp_bytes)
table["speedup_vs_ddp"] = table.topology.map(ddp_time) / table.sim_seconds
(table.pivot(index="run", columns="topology", values=["eval_accuracy", "bytes_vs_ddp", "sim_seconds",
                                                     "speedup_vs_ddp"])
 .reindex(list(configs)))
"""),
    code("""
results = {
    "runs": table[["run", "topology", "technique", "steps", "rounds", "eval_accuracy", "bytes", "sim_seconds"]]
    .to_dict(orient="records"),
    "bytes_ratio_ddp_over": {r: float(ddp_bytes[topologies[0]] / b) for r, b in
                             table[table.topology == topologies[0]].set_index("run").bytes.items()},
    "speedup_over_ddp": {t: table[table.topology == t].set_index("run").speedup_vs_ddp.to_dict() for t in topologies},
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))
"""),
    code("""
ddp_acc = table[table.run == "DDP"].eval_accuracy.iloc[0]
for label in configs:
    row = table[(table.run == label) & (table.topology == topologies[0])].iloc[0]
    times = ", ".join(f"{t} {table[(table.run == label) & (table.topology == t)].sim_seconds.iloc[0]:.3g} s"
                      for t in topologies)
    print(f"{label:15s} accuracy {row.eval_accuracy:.3f} ({row.eval_accuracy - ddp_acc:+.3f} vs DDP), "
          f"bytes 1/{ddp_bytes[topologies[0]] / row.bytes:.3g} of DDP, simulated {times}")
"""),
    md("""
## Takeaway

On this task (an MLP on `digits`, data split IID across 8 workers), Local SGD
ends within about a point of DDP's accuracy for every H tried, while sending
1/H of the bytes. FedAvg lands in the same place; its round is one local epoch,
so it behaves like Local SGD with H of a few steps, with a server in the middle.

Simulated time follows bytes on both networks, because this small model's
compute is negligible on the device profile: what the network changes is
whether the communication matters at all. On one NVLink node the whole run
talks for milliseconds either way; over the WAN, DDP's all-reduce every step
costs about a minute of simulated time and H = 64 cuts that to about a second.

To try next: skew the data (`partition="dirichlet"`, small `dirichlet_alpha`)
and watch large H drift, or make each message smaller instead of rarer with a
gradient compressor (`compressor="topk"`, `compression_ratio`).
"""),
]


# Part 2 of 01_sync_period: the sync-period family on the character LM (QSR, DiLoCo, Streaming DiLoCo).
SYNC_PERIOD += [
    md("""
# Part 2: a character language model

**The question.** DiLoCo was built for language models trained with AdamW,
where workers can go hundreds of steps between syncs. On a tiny character GPT,
what do the refinements of "sync every H steps" buy?

**The knobs.**
- *QSR* (quadratic synchronization rule): H is recomputed after every sync as
  max(H_base, (α/η)²) from the current learning rate η, so H grows as a cosine
  schedule decays.
- *DiLoCo*: every H inner AdamW steps, the average change of the workers (the
  pseudo-gradient) goes through an outer SGD step with Nesterov momentum
  (lr 0.7, momentum 0.9) instead of plain averaging.
- *Streaming DiLoCo*: the model is synced in P fragments at staggered steps,
  each sync overlaps τ inner steps of compute, and the outer gradients can be
  sent in 4 bits.

**What to look at.** Loss against bytes and against simulated time over a
1 Gb/s, 30 ms WAN; how H grows under QSR; the largest single sync (the peak
bandwidth) and the communication hidden behind compute.
"""),
    code("""
from widgets.sync_charts import period_chart

lm = ExperimentConfig(dataset="chars", model="gpt", optimizer="adamw", lr=3e-3, lr_schedule="cosine", batch_size=8,
                      num_workers=lm_workers, steps=lm_steps, sync_period=lm_sync_period, topology="wan_sites",
                      eval_every=max(1, lm_steps // 4))
lm_configs = {
    "DDP": lm.replace(technique="ddp"),
    f"Local SGD H={lm_sync_period}": lm.replace(technique="local_sgd"),
    f"QSR H_base={max(1, lm_sync_period // 3)}": lm.replace(technique="qsr", sync_period=max(1, lm_sync_period // 3),
                                                           qsr_alpha=lm_qsr_alpha),
    f"DiLoCo H={lm_sync_period}": lm.replace(technique="diloco"),
    f"Streaming P={lm_fragments}": lm.replace(technique="streaming_diloco", num_fragments=lm_fragments,
                                             overlap_steps=1),
    f"Streaming P={lm_fragments} 4-bit": lm.replace(technique="streaming_diloco", num_fragments=lm_fragments,
                                                   overlap_steps=1, outer_bits=4),
}
lm_runs = {label: run(c, save=False, progress=False) for label, c in lm_configs.items()}
lm_df = widgets.frame(list(lm_runs.items()))
"""),
    md("""
## Loss against bytes and simulated time
"""),
    code("""
widgets.show(widgets.loss_vs_bytes(lm_df, width=300, height=230, title="character LM: loss against bytes")
             | widgets.loss_vs_time(lm_df, log_x=True, width=300, height=230, title="loss against simulated time (WAN)"))
"""),
    md("""
## QSR: the sync period follows the learning rate

Each point is one round: H of that round against the step it ended at. Under
the cosine schedule H stays at H_base while η is large and then grows; it is
capped by the steps left.
"""),
    code("""
qsr_label = next(label for label in lm_runs if label.startswith("QSR"))
widgets.show(period_chart(lm_df[lm_df.label.isin([qsr_label, f"Local SGD H={lm_sync_period}"])]))
"""),
    code("""
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
"""),
    code("""
qsr_run = lm_runs[qsr_label]
lm_results = {
    "runs": {label: {k: (float(v) if k != "technique" else v) for k, v in row.items()
                     if k in ("technique", "eval_loss", "final_loss", "bytes", "sim_seconds", "syncs",
                              "peak_sync_bytes", "comm_hidden_seconds", "bytes_vs_ddp")}
             for label, row in lm_table.iterrows()},
    "qsr": {"step": qsr_run.metrics.step.tolist(), "sync_period": qsr_run.metrics.sync_period.tolist(),
            "lr": qsr_run.metrics.lr.tolist(), "alpha": lm_qsr_alpha, "h_base": max(1, lm_sync_period // 3)},
    "sync_period": lm_sync_period, "fragments": lm_fragments, "steps": lm_steps,
}
if metrics_path:
    saved = json.loads(Path(metrics_path).read_text())
    saved["char_lm"] = lm_results
    Path(metrics_path).write_text(json.dumps(saved, indent=2))
for label, row in lm_table.iterrows():
    print(f"{label:22s} eval loss {row.eval_loss:.3f}  bytes {row.bytes_vs_ddp:.4f} of DDP  "
          f"peak sync {row.peak_sync_bytes / 1e6:.2f} MB  simulated {row.sim_seconds:.3g} s")
"""),
    md("""
## Takeaway

With the same number of local steps, every method that syncs every H steps
sends about 1/H of DDP's bytes and, over the WAN, finishes in a fraction of
DDP's simulated time, at a somewhat higher loss after this short run (a few
dozen steps of a tiny model: do not read small differences as a ranking).
DiLoCo's outer step (lr 0.7, Nesterov momentum 0.9) moves past the average on
purpose; with only a handful of outer steps here it tends to land behind plain
averaging — the paper's regime is H = 500 over many thousands of steps, and
`bench/diloco_vs_ddp.py` runs longer. QSR spends its syncs early, while the
learning rate is large, and almost none at the end. Streaming DiLoCo sends the same total as DiLoCo but only 1/P of it
at a time — its peak sync is a third of DiLoCo's — and 4-bit outer gradients
cut the total by about four on four workers (packed codes are all-gathered,
against DiLoCo's fp32 all-reduce). Its clock shows what overlap can and cannot
do here: τ steps of a tiny model hide microseconds, while a WAN message costs
tens of milliseconds of latency, so more, smaller syncs cost more latency.
Overlap pays off when a step's compute is comparable to a sync.

To try next: raise H and `lm_steps` together and compare DiLoCo with Local SGD
at equal bytes; or set `overlap_steps` and `merge_alpha` and watch
`comm_hidden_seconds`.
"""),
]


FEDERATED = [
    md("""
# Federated learning on skewed clients that drop out

**The question.** Ten phones each hold a few digits, mostly of one or two
classes, and in every round some of the sampled phones drop out. Which
federated technique gets the best global model per round, and per byte the
phones upload?

**The knobs.** `dirichlet_alpha`: how skewed the clients' labels are (small =
each client sees few classes). `dropout_prob`: the chance a sampled client
leaves a round. `local_steps`: the sync period, local steps per round.
`compression_ratio`: the uplink budget of SCALLION and SCAFCOM.

**The techniques.** FedAvg (average the clients' models); FedProx (a
proximal term keeps clients near the global model); SCAFFOLD (control
variates correct client drift; two vectors up); SCALLION and SCAFCOM (one
compressed vector up: random-k, unbiased; top-k with momentum, biased); MoDeST
(no server: sampled trainers, aggregators from the next sample); FedVote (one
bit per weight up, credibility-weighted vote); PGFed (personalized models that
also learn from first-order approximations of the other clients' risks).

**What to look at.** Test loss against rounds and against uplink bytes (log),
and who took part in each round.
"""),
    params("""
rounds = 15
num_clients = 10
client_fraction = 0.5  # clients sampled per round (MoDeST: its trainers)
local_steps = 10  # the sync period: local steps per round
dirichlet_alpha = 0.3  # label skew across clients: the smaller, the more skewed
dropout_prob = 0.2  # chance a sampled client drops out of a round
compression_ratio = 0.1  # SCALLION / SCAFCOM uplink budget (bytes over dense fp32 bytes)
metrics_path = ""  # if set, results are written here as JSON
"""),
    code("""
import json
from pathlib import Path

import pandas as pd

import widgets
from lab.experiment import ExperimentConfig, run
from widgets.sync_charts import loss_against, participation_chart

widgets.enable_offline();  # charts render without internet
"""),
    md("""
## The runs

The same clients, data split, model (an MLP on `digits`), rounds and local
steps for every technique; `topology="phones"` puts the clients on 20 Mb/s
uplinks to a server. Dropouts are drawn from the seed and the round, so every
technique meets the same dropouts in the same round (MoDeST samples its own
trainers, so it meets them on different clients).
"""),
    code("""
base = ExperimentConfig(num_workers=num_clients, rounds=rounds, client_fraction=client_fraction,
                        local_steps=local_steps, partition="dirichlet", dirichlet_alpha=dirichlet_alpha,
                        dropout_prob=dropout_prob, topology="phones", lr=0.1, batch_size=16, eval_every=1)
configs = {
    "FedAvg": base.replace(technique="fedavg"),
    "FedProx": base.replace(technique="fedprox", prox_mu=0.1),
    "SCAFFOLD": base.replace(technique="scaffold"),
    "SCALLION rand-k": base.replace(technique="scallion", compressor="randk", compression_ratio=compression_ratio),
    "SCAFCOM top-k": base.replace(technique="scafcom", compressor="topk", compression_ratio=compression_ratio,
                                  scafcom_beta=0.5),
    "MoDeST": base.replace(technique="modest", modest_aggregators=2, success_fraction=0.5),
    "FedVote": base.replace(technique="fedvote", lr=0.05),
    "PGFed": base.replace(technique="pgfed", momentum=0.5),
}
runs = {label: run(c, save=False, progress=False) for label, c in configs.items()}
df = widgets.frame(list(runs.items()))
"""),
    md("""
## Test loss against rounds and against uplink bytes
"""),
    code("""
widgets.show(loss_against(df, "round", y="eval_loss", title="test loss against rounds")
             | loss_against(df, "bytes_uplink", y="eval_loss", log_x=True, title="test loss against uplink bytes"))
"""),
    md("""
## Who took part

Every run records the clients whose update was used in each round
(`participants`); with `dropout_prob > 0` some sampled clients are missing.
"""),
    code("""
widgets.show(participation_chart(df))
"""),
    code("""
table = pd.DataFrame([{"run": label, **r.summary(),
                       "uplink_bytes": int(r.metrics.bytes_uplink.iloc[-1]),
                       "rounds_completed": int(r.metrics.round_completed.sum()),
                       "participants": int(r.metrics.num_participants.sum()),
                       "personal_accuracy": float(r.metrics.get("personal_accuracy", pd.Series([float("nan")])).iloc[-1])}
                      for label, r in runs.items()]).set_index("run")
table["uplink_vs_fedavg"] = table.uplink_bytes / table.loc["FedAvg", "uplink_bytes"]
table[["eval_accuracy", "eval_loss", "uplink_bytes", "uplink_vs_fedavg", "rounds_completed", "participants",
       "personal_accuracy"]]
"""),
    code("""
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
"""),
    md("""
## Takeaway

With the default parameters (one seed, 15 rounds, 5 of 10 skewed clients
sampled per round, a fifth of them dropping out) the control variates pay off:
SCAFFOLD ends with a better global model than FedAvg and FedProx, at twice
FedAvg's uplink (two vectors per client). SCALLION, one random-k compressed
vector per client, ends close to FedAvg with a tenth of its uplink; SCAFCOM
with top-k at the same budget lands lower in this short run. PGFed's global
model is about as good as SCAFFOLD's, and each client's own (personalized)
model is better still on its own classes (`personal_accuracy`), at about 2×
FedAvg's bytes. One seed and a few rounds: read differences of a point or two
as noise. MoDeST trains without any
server and tolerates the dropouts because its aggregators wait for only half
of the sample; on the phone topology its peer-to-peer messages are relayed
through the operator, so its uplink counts both directions of every hop.

FedVote uploads 1/32 of FedAvg's bytes but stalls here: with 5 voters, of
which the credibility filter keeps the more agreeing half, whole coordinates
are voted unanimously, the soft vote clips at ±(1 − 10⁻⁴), and those weights
freeze at ±1. It needs many voters per round (the paper uses 31 and more) —
try `client_fraction=1.0` or more clients.

To try next: raise `dirichlet_alpha` towards IID and watch the gap between
FedAvg and SCAFFOLD close; set `dropout_prob=0` and a sign-flipping minority
(`byzantine_clients`) and compare FedVote with FedAvg.
"""),
]


def write(name: str, cells: list) -> Path:
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
    })
    nbformat.validate(nb)
    path = HERE / name
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    for name, cells in (("00_tour.ipynb", TOUR), ("01_sync_period.ipynb", SYNC_PERIOD),
                        ("07_federated.ipynb", FEDERATED)):
        print("wrote", write(name, cells))
