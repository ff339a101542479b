# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # Who talks to whom, over what links?
#
# **The question.** Every chart of loss against time rests on a network model.
# The same training run costs milliseconds inside one NVLink node and minutes
# across a WAN; the same all-reduce is best done as a ring on one network and
# hierarchically on another; and if workers only ever talk to neighbours, which
# neighbours matters. How much does the topology change the picture, and can
# we trust the model?
#
# **The knob: topology.** A preset network (one NVLink node, GPU nodes joined by
# InfiniBand, a leaf-spine fabric oversubscribed 4:1, a 2D torus of chips, sites
# on a WAN, CPU servers on Ethernet, phones around a server), the collective
# algorithm (ring, tree, recursive halving-doubling, hierarchical, torus,
# parameter server), and for decentralized training the gossip graph.
#
# **What to look at.** Time to a target loss per topology; which all-reduce wins
# as messages and clusters grow; how fast gossip graphs reach consensus; the
# per-rank timeline with and without overlap; and the model's predictions
# against real gloo processes on shaped links.

# %% tags=["parameters"]
steps = 120  # local steps per worker in the training runs
num_workers = 8
topologies = ["nvlink_node", "multinode_4x8", "leaf_spine", "torus_2d", "wan_sites", "ethernet"]
techniques = ["ddp", "local_sgd", "dpsgd"]  # DDP; Local SGD and D-PSGD (exponential graph) with H = 8
target_loss = 0.6  # time to reach this training loss
sizes = [1024, 65536, 4194304, 268435456]  # all-reduce payloads in bytes
rank_counts = [8, 16, 32, 64]  # ranks, 4 per node
graphs = ["ring", "torus", "exponential", "one_peer_exponential", "complete"]
gossip_ranks = 16
gossip_steps = 60
overlap_steps = 4  # DDP steps of the small GPT for the timeline
netlab_path = "bench/results/netlab.json"  # what bench/netlab.py measured (relative to the repository root)
metrics_path = ""  # if set, results are written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
import warnings
from pathlib import Path

import altair as alt
import pandas as pd

import widgets
from lab import gossip, topology as topo
from lab.config import config_for, dropped
from lab.experiment import ExperimentConfig, run
from lab.paths import resolve
from widgets.topology_view import TopologyView, consensus_chart, gantt_chart, predicted_vs_measured_chart

warnings.filterwarnings("ignore", message=".*batching rule.*")  # vmap falls back for attention on CPU
_ = widgets.enable_offline()  # charts render without internet

# %% [markdown]
# ## Try it: the topology part of the lab
#
# Pick a network: the predicted bytes per link class and time per step redraw
# before anything trains; Run trains the config shown. The cells below start
# from it: its workers and steps are theirs, and its network is the one drawn
# and shown carrying a run.

# %%
lab = widgets.Lab(config_for("local_sgd", num_workers=num_workers, steps=steps, eval_every=steps, sync_period=8,
                             topology="multinode_4x8"), focus="topology", load_runs=False)
lab

# %% [markdown]
# ## The picker
#
# Pick a preset and a number of workers; the drawing shows the wiring: ranks
# around their node's switch, nodes joined through the fabric (a torus draws its
# neighbour links, a star its clients around the server). An impossible
# combination (9 workers on 4 nodes) is explained under the picker. After a
# run, `show_run` colours the links by the bytes the run's Ledger put on them.

# %%
picked = lab.chosen()  # the Lab's settings above
num_workers, steps = picked.num_workers, picked.steps
view = TopologyView(picked.topology, num_workers=num_workers)
view

# %%
ddp_multinode = run(ExperimentConfig(technique="ddp", num_workers=num_workers, steps=steps, eval_every=steps,
                                     topology=picked.topology), save=False, progress=False)
view.show_run(ddp_multinode)  # the hierarchical all-reduce: rings inside nodes, thinner rings across them


# %% [markdown]
# ## The same training run on every network
#
# Training does not depend on the network — only the simulated clock does. Each
# technique runs once per topology with the same data, model and seed; the clock
# adds compute (the preset's device) and communication (the α-β cost of every
# Ledger entry). What to look at: the simulated seconds to reach the target
# loss, and how the ranking of techniques changes with the network.
#
# One set of settings serves every technique; `config_for` keeps what each
# reads (Local SGD and D-PSGD sync every H = 8 steps, D-PSGD over the
# exponential graph; DDP reads neither), and the table says what each left out.

# %%
shared = dict(num_workers=num_workers, steps=steps, eval_every=steps, sync_period=8, graph="exponential")
pd.DataFrame([{"technique": t, "left out": field, "why": why} for t in techniques
              for field, why in dropped(t, shared).items()])

# %%
runs = {(t, tp): run(config_for(t, **shared, topology=tp), save=False, progress=False)
        for tp in topologies for t in techniques}
rows = []
for (t, tp), r in runs.items():
    m = r.metrics
    hit = m[m.loss <= target_loss]
    rows.append({"technique": t, "topology": tp, "final_loss": float(m.loss.iloc[-1]),
                 "time_to_target_s": float(hit.sim_seconds.iloc[0]) if len(hit) else float("nan"),
                 "sim_seconds": float(m.sim_seconds.iloc[-1]), "bytes": int(m.bytes.iloc[-1]),
                 "comm_share": float(m.comm_seconds.iloc[-1] / m.sim_seconds.iloc[-1])})
across = pd.DataFrame(rows)
across.pivot(index="technique", columns="topology", values="time_to_target_s")

# %%
widgets.show(alt.Chart(across).mark_bar().encode(
    x=alt.X("time_to_target_s:Q", scale=alt.Scale(type="log"), title=f"simulated seconds to loss {target_loss}"),
    y=alt.Y("technique:N", title=None), color="technique:N", row=alt.Row("topology:N", title=None),
).properties(width=360, height=60))

# %% [markdown]
# ## Ring, tree, hierarchical: which all-reduce wins?
#
# The cost model writes each algorithm as a schedule of messages and times it
# on the network (α per step, bytes over the slowest link each step, NICs and
# node uplinks shared). Here: nodes of 4 GPUs on NVLink joined by 100 Gb/s
# links, with 8 to 64 ranks, payloads from 1 KB to 256 MB. What to look at: the
# latency-bound corner (small messages, many ranks) where trees and recursive
# halving-doubling win, and the bandwidth-bound corner where the hierarchical
# all-reduce wins because it sends only 2(n−1)/n · M/D across nodes.

# %%
algorithms = ["ring", "tree", "rhd", "hierarchical"]
table = pd.concat([topo.algorithm_table(topo.build(num_nodes=p // 4, ranks_per_node=4, intra_gbit=3600,
                                                   inter_gbit=100, name=f"{p} ranks"), "all_reduce", sizes, algorithms)
                   for p in rank_counts], ignore_index=True)
best = table.loc[table.groupby(["ranks", "bytes"]).seconds.idxmin(), ["ranks", "bytes", "algorithm"]]
best.pivot(index="bytes", columns="ranks", values="algorithm")

# %%
widgets.show(alt.Chart(table).mark_line(point=True).encode(
    x=alt.X("bytes:Q", scale=alt.Scale(type="log"), title="payload bytes"),
    y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="simulated seconds"),
    color="algorithm:N", column=alt.Column("ranks:O", title="ranks"),
).properties(width=170, height=200))

# %% [markdown]
# ## Gossip graphs and their consensus rates
#
# Decentralized training replaces the all-reduce by neighbour averaging with a
# mixing matrix W. The spectral gap 1 − |λ₂| sets how fast repeated mixing
# reaches the average; the bytes per round are the degree. The one-peer
# exponential graph sends to one neighbour per round yet reaches the *exact*
# average after log2 n rounds (n a power of two).

# %%
graph_table = pd.DataFrame([gossip.describe(g, gossip_ranks) for g in graphs])
graph_table["bytes_per_round_per_rank"] = graph_table.degree  # × the model's bytes
curves = pd.concat([pd.DataFrame({"label": g, "round": range(len(c)), "consensus_distance": c})
                    for g in graphs for c in [gossip.consensus_curve(g, gossip_ranks, 24)]])
widgets.show(consensus_chart(curves, x="round", title=f"pure gossip on {gossip_ranks} ranks"))
graph_table

# %% [markdown]
# D-PSGD trains with those graphs: a local step, then one gossip round (H = 1). The
# consensus distance sqrt(1/n Σ‖x_i − x̄‖²) measures how far the workers drift
# apart; data split by a Dirichlet(0.3) draw pulls them apart, mixing pulls them
# together.

# %%
dpsgd = {g: run(config_for("dpsgd", graph=g, sync_period=1, num_workers=gossip_ranks, steps=gossip_steps,
                           eval_every=gossip_steps, partition="dirichlet", dirichlet_alpha=0.3, topology="ethernet"),
                save=False, progress=False) for g in graphs}
df = pd.concat([r.metrics.assign(label=g) for g, r in dpsgd.items()])
widgets.show(consensus_chart(df, title=f"D-PSGD on {gossip_ranks} ranks: consensus distance"))

# %% [markdown]
# ## The simulated clock: overlap and stragglers
#
# Each rank has a compute stream and a communication stream. Without overlap
# DDP computes, then all-reduces; with `overlap=True` the gradient is cut into
# buckets that are all-reduced while the backward pass goes on. A straggler
# (`slow_ranks=1`, 3× slower) makes every synchronous step wait. What to look
# at: the orange bars sliding under the blue ones, and the idle gaps.

# %%
gpt = dict(technique="ddp", model="gpt", dataset="chars", batch_size=8, optimizer="adamw", lr=3e-3, num_workers=4,
           steps=overlap_steps, eval_every=overlap_steps, topology="ethernet")
clock_runs = {"serial": run(ExperimentConfig(**gpt), save=False, progress=False),
              "overlap": run(ExperimentConfig(**gpt, overlap=True), save=False, progress=False),
              "straggler": run(ExperimentConfig(**gpt, slow_ranks=1, straggler_slowdown=3.0), save=False,
                               progress=False)}
widgets.show(alt.vconcat(*[gantt_chart(r.timeline, steps=(0, 1), title=f"{k}: first two steps")
                           for k, r in clock_runs.items()]).resolve_scale(x="shared"))

# %%
clock = pd.DataFrame([{"run": k, **{c: float(r.metrics[c].iloc[-1]) for c in ("compute_seconds", "comm_seconds",
                                                                            "sim_seconds")}}
                      for k, r in clock_runs.items()])
clock

# %% [markdown]
# ## Is the model right? Real gloo processes on shaped links
#
# `bench/netlab.py` (run as root) puts gloo ranks in Linux network namespaces
# joined through a bridge by veth pairs, shapes every link with `tc tbf` at
# 100 Mbit/s or 1 Gbit/s, times all_reduce, all_gather, reduce_scatter,
# all_to_all and broadcast from 64 KB to 64 MB on 2, 4 and 8 ranks, and predicts
# each with this cost model (the link's bandwidth from the tbf rate, α from a
# ping-pong, the switch's total capacity from every rank streaming at once, the
# schedule gloo runs). Below: its committed results file; the dashed diagonal
# is a perfect prediction.

# %%
netlab = json.loads(resolve(netlab_path).read_text())
measured = pd.DataFrame(netlab["rows"])
widgets.show(predicted_vs_measured_chart(measured))

# %%
big = measured[measured["size"] >= 2**20]
by = big.assign(abs_error=big.error.abs()).groupby(["rate_mbit", "op"]).abs_error.median().unstack("rate_mbit")
median = netlab["summary"]["median_abs_error_at_least_1MB"]
print(f"median |error| over {len(big)} cases of at least 1 MB: {median:.1%}")
by.style.format("{:.0%}")

# %%
results = {
    "across": across.to_dict(orient="records"),
    "best_all_reduce": best.to_dict(orient="records"),
    "graphs": graph_table.to_dict(orient="records"),
    "dpsgd_consensus": {g: r.metrics.consensus_distance.tolist() for g, r in dpsgd.items()},
    "clock": clock.to_dict(orient="records"),
    "netlab_summary": netlab["summary"],
    "netlab_cases": len(measured),
    "view_links": int((view.traffic > 0).sum()),
}
if metrics_path:
    Path(metrics_path).write_text(json.dumps(results, indent=2))

# %% [markdown]
# ## Takeaway
#
# The topology changes *time*, not *bytes*: the same run spends almost nothing
# on communication inside an NVLink node and is dominated by it across a WAN,
# where cutting messages (Local SGD) or latency steps pays off most. No single
# all-reduce wins: trees and recursive halving-doubling for small messages on
# many ranks, hierarchical schedules for large ones across slow links. Among
# gossip graphs, the exponential graphs reach consensus orders of magnitude
# faster than a ring for a few more (or the same) bytes. Overlap hides
# communication only when buckets are bandwidth-bound: on latency-bound small
# models, more buckets means more α. And the α-β model, given the schedule gloo
# really runs and link parameters measured by micro-benchmarks, lands within
# about 10% (median) of real gloo processes on shaped links; the outliers are
# gloo's own quirks (its all-gather moves large messages slower than its
# all-reduce) and, at 1 Gbit/s on a 2-core machine, the host's bridge, which
# the benchmark measures and models as the switch's capacity.
