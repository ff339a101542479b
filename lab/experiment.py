"""Experiments: a validated config, `run(config)`, and Runs that persist and load back.

`ExperimentConfig` is checked on construction: a bad value raises ValueError
naming the field, the value and what is allowed. `run(config)` trains with the
chosen technique, simulated in one process or on a torch.distributed process
group (`backend='distributed'` under torchrun), and returns a `Run` whose
`metrics` is a tidy table, one row per round:

  step, round, loss, eval_loss, eval_accuracy, bytes, bytes_peer, bytes_inter,
  bytes_uplink, bytes_downlink, comm_seconds, compute_seconds, sim_seconds,
  wall_seconds, plus technique columns (e.g. sync_period, measured_ratio)

`bytes` counts every byte every rank sent (downlink counted at the receiving
client); `sim_seconds` is the simulated clock (compute from the topology's
device FLOP/s + communication from the Ledger, minus what a technique hides
behind compute: `TrainContext.comm_hidden_seconds`, e.g. Streaming DiLoCo's overlap; with `overlap=True` or
slow ranks it is the makespan of the per-rank timeline in `lab.clock`, `Run.timeline`); `wall_seconds` is
the real time the simulation took — the only column that differs between two
runs of the same config and seed.

Runs persist under `runs/<id>/` — config.json, metrics.parquet, ledger.parquet,
model.pt, status.json — each written atomically (temporary file, then rename),
metrics after every evaluation, so a stopped or crashed run keeps what it had
finished.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lab import topology as topo
from lab.cluster import Cluster
from lab.comm import Ledger, SimulatedCollective
from lab.compress import COMPRESSORS
from lab.compress.error_feedback import FEEDBACK
from lab.data import DATASETS, PARTITIONS, RankBatches, load_dataset, partition
from lab.models import COMPATIBLE, MODELS, build_model
from lab.sync.ddp import DDP
from lab.sync.diloco import DiLoCo
from lab.sync.fedavg import FedAvg
from lab.sync.local_sgd import LocalSGD
from lab.sync.qsr import QSR
from lab.sync.fedprox import FedProx
from lab.sync.scaffold import Scaffold, Scafcom, Scallion
from lab.sync.modest import MoDeST
from lab.sync.fedvote import FedVote
from lab.sync.pgfed import PGFed
from lab.sync.dimat import DIMAT
from lab.sync.streaming_diloco import StreamingDiLoCo
from lab.schedule import SCHEDULES
from lab.sync import options as sync_options
from lab.sharding import options as sharding_options
from lab.sharding.zero import ZeRO
from lab.compress import options as compress_options
from lab import lora, zeroth_order
from lab.technique import TrainContext
from lab.clock import Clock
from lab.gossip import GRAPHS
from lab.sync.dpsgd import DPSGD

TECHNIQUES = {t.name: t for t in (DDP, LocalSGD, FedAvg, QSR, DiLoCo, StreamingDiLoCo)}
TECHNIQUES.update({t.name: t for t in (FedProx, Scaffold, Scallion, Scafcom, MoDeST, FedVote, PGFed, DIMAT)})  # sync-period family (lab/sync)
TECHNIQUES.update({t.name: t for t in (ZeRO,)})  # the sharding family (lab/sharding)
TECHNIQUES.update({t.name: t for t in (DPSGD,)})  # the topology family (decentralized gossip)
TECHNIQUES.update({t.name: t for t in zeroth_order.TECHNIQUES + lora.TECHNIQUES})  # compression family
OPTIMIZERS = ("sgd", "adamw", "adam_mini")
BACKENDS = ("simulated", "distributed")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ExperimentConfig:
    technique: str = _f("ddp", "training technique", choices=tuple(TECHNIQUES))
    num_workers: int = _f(8, "number of workers (ranks or federated clients)")
    steps: int = _f(200, "local steps per worker (for techniques budgeted in steps; federated ones use rounds)")
    rounds: int = _f(20, "communication rounds (round-budgeted techniques: fedavg)")
    sync_period: int = _f(16, "local steps between syncs H (local_sgd, qsr: H_base, diloco, streaming_diloco, dimat)")
    compressor: str = _f("none", "compressor of what is sent: ddp gradients, local_sgd pseudo-gradients, fedavg "
                         "client updates (lab.compress)", choices=COMPRESSORS)
    compression_ratio: float = _f(1.0, "target encoded bytes / dense fp32 bytes, in (0, 1]")
    error_feedback: str = _f("ef", "error feedback around the compressor", choices=tuple(FEEDBACK))
    client_fraction: float = _f(1.0, "fraction of clients sampled per round, in (0, 1] (fedavg)")
    local_epochs: int = _f(1, "local epochs per round (fedavg)")
    dataset: str = _f("digits", "dataset", choices=DATASETS)
    model: str = _f("mlp", "model", choices=MODELS)
    partition: str = _f("iid", "how data is split across workers", choices=PARTITIONS)
    dirichlet_alpha: float = _f(0.5, "Dirichlet concentration for partition=dirichlet (> 0; small = skewed)")
    shards_per_worker: int = _f(2, "label shards per worker for partition=shards")
    batch_size: int = _f(32, "minibatch size per worker")
    optimizer: str = _f("sgd", "local optimizer", choices=OPTIMIZERS)
    lr: float = _f(0.5, "learning rate (> 0)")
    momentum: float = _f(0.0, "SGD momentum in [0, 1)")
    weight_decay: float = _f(0.0, "weight decay (>= 0)")
    grad_clip: float = _f(0.0, "per-worker gradient-norm clip (0 = off)")
    topology: str = _f("nvlink_node", "network preset for simulated time", choices=tuple(topo.PRESETS))
    eval_every: int = _f(20, "evaluate every this many steps")
    seed: int = _f(0, "random seed")
    backend: str = _f("simulated", "simulated (one process) or distributed (torchrun)", choices=BACKENDS)
    # ---- sharding family (lab/sharding: zero) ----
    zero_stage: int = _f(3, "zero: model states sharded: 1 optimizer states, 2 + gradients, 3 + parameters",
                         choices=(1, 2, 3))
    sharding_degree: int = _f(0, "zero: ranks sharing one copy of the model state, S (0 = all workers; a divisor "
                              "of num_workers; S < num_workers replicates it R = num_workers/S times)")
    zeropp: str = _f("none", "zero stage 3: ZeRO++ options, 'none' or a '+'-joined subset of qwz (int8 weight "
                     "gather), hpz (node-local secondary weights), qgz (int4 2-hop gradient reduction)")
    hpz_size: int = _f(0, "zero with hpz: ranks per secondary-partition group (0 = ranks per node)")
    quant_block: int = _f(256, "zero with qwz/qgz: values per fp32 scale in block-wise quantization")
    reduce_levels: str = _f("flat", "zero (sharding_degree = all): gradient reduction: one reduce-scatter, or "
                            "hierarchical all-to-alls by node (ZeRO++'s 2 hops) or by die, GPU and node (Frontier's 3)",
                            choices=("flat", "node", "die+node"))
    dies_per_gpu: int = _f(2, "zero with reduce_levels='die+node': ranks per GPU (a divisor of the ranks per node)")
    # ---- sync-period family (lab/sync: qsr, diloco, streaming_diloco, federated techniques, client faults) ----
    lr_schedule: str = _f("constant", "learning-rate schedule over `steps` (step-budgeted techniques)",
                          choices=SCHEDULES)
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps (>= 0)")
    qsr_alpha: float = _f(0.2, "qsr: H = max(sync_period, floor((qsr_alpha / lr)^2)) after each sync (>= 0)")
    outer_lr: float = _f(0.7, "diloco, streaming_diloco: outer SGD learning rate (> 0)")
    outer_momentum: float = _f(0.9, "diloco, streaming_diloco: outer Nesterov momentum in [0, 1)")
    num_fragments: int = _f(1, "streaming_diloco: fragments P synced at staggered steps (1 <= P <= sync_period)")
    overlap_steps: int = _f(0, "streaming_diloco: inner steps tau a fragment's sync overlaps (< sync_period / P)")
    merge_alpha: float = _f(0.5, "streaming_diloco: weight of the local fragment when merging the new global one")
    outer_bits: int = _f(32, "streaming_diloco: bits per outer-gradient value on the wire", choices=(32, 16, 8, 4))
    local_steps: int = _f(0, "federated techniques: local steps per round (0 = local_epochs x ceil(n_i / B))")
    server_lr: float = _f(1.0, "scaffold, scallion, scafcom: server learning rate eta_g (> 0)")
    cv_alpha: float = _f(0.0, "scallion, scafcom: control-variate step alpha (0 = 1/(1+omega) for unbiased "
                         "compressors, 1 otherwise)")
    scafcom_beta: float = _f(1.0, "scafcom: momentum weight beta in (0, 1] (1 = no momentum)")
    prox_mu: float = _f(0.01, "fedprox: proximal term mu (>= 0)")
    modest_aggregators: int = _f(1, "modest: aggregators a per round (1..num_workers)")
    success_fraction: float = _f(1.0, "modest: fraction of the sample's models an aggregator waits for, in (0, 1]")
    dimat_matching: str = _f("activation", "dimat: align neighbours' neurons before merging, or plain averaging",
                             choices=("activation", "none"))
    dimat_graph: str = _f("ring", "dimat: agents' communication graph", choices=("ring", "full"))
    fedvote_k: float = _f(1.5, "fedvote: weights are tanh(k * latent) (> 0)")
    fedvote_levels: str = _f("binary", "fedvote: what clients upload per weight", choices=("binary", "ternary"))
    pgfed_mu: float = _f(0.1, "pgfed: weight mu of the other clients' approximated risks (>= 0)")
    pgfed_lambda: float = _f(0.01, "pgfed: step size of the per-client weights a_ij (>= 0)")
    pgfed_beta: float = _f(0.0, "pgfed: momentum on the auxiliary gradient (0 = PGFed, 0.5 = PGFedMo), in [0, 1)")
    dropout_prob: float = _f(0.0, "client faults: probability a sampled client drops out of a round, in [0, 1)")
    straggler_prob: float = _f(0.0, "client faults: probability a sampled client is a straggler, in [0, 1)")
    straggler_slowdown: float = _f(4.0, "client faults: how many times slower a straggler computes (>= 1)")
    round_deadline: float = _f(0.0, "client faults: the server's deadline in multiples of the round's nominal "
                               "compute time (0 = wait for every client)")
    clients_stop: int = _f(0, "client faults: clients that stop responding for good (chosen by the seed)")
    stop_round: int = _f(0, "client faults: the round from which those clients stop")
    byzantine_clients: int = _f(0, "client faults: clients that upload sign-flipped updates (chosen by the seed)")
    byzantine_scale: float = _f(1.0, "client faults: a sign-flipping client sends x - scale * (y - x) (> 0)")
    # ---- compression family (lab/compress, lab/zeroth_order, lab/lora) ----
    econtrol_eta: float = _f(0.1, "error_feedback=econtrol: weight eta of the fed-back error, in [0, 1]")
    zo_seeds: int = _f(4096, "fedkseed: candidate seeds K")
    zo_eps: float = _f(1e-3, "fedkseed, justonebyte: perturbation size eps of the two-point estimate (> 0)")
    zo_seed_sampling: str = _f("uniform", "fedkseed: how clients draw seeds (importance = FedKSeed-Pro)",
                               choices=("uniform", "importance"))
    zo_samples: int = _f(4, "justonebyte: projected gradients per machine per iteration")
    zo_scalar_format: str = _f("int8", "justonebyte: how a projected gradient is sent (one byte or fp32)",
                               choices=("int8", "fp32"))
    ferret_seeds: int = _f(200, "ferret: shared seeds K (projection directions per group, at most)")
    ferret_server_lr: float = _f(3.0, "ferret: server learning rate on the reconstructed update (> 0)")
    fzoos_features: int = _f(256, "fzoos: random Fourier features D of the shared surrogate")
    fzoos_candidates: int = _f(100, "fzoos: exploration candidates per local step (the 5 most uncertain "
                               "are queried)")
    peft_mode: str = _f("lora", "fedpeft: what clients train and send (the head always)",
                        choices=("lora", "bias", "head", "full"))
    lora_rank: int = _f(4, "fedpeft, fedex_lora, dp_lora, cellm: LoRA rank r")
    lora_alpha: float = _f(8.0, "LoRA scale alpha (the update is alpha / r * B A) (> 0)")
    dp_clip: float = _f(1.0, "dp_lora: clipping norm C of a client's update (> 0)")
    dp_noise: float = _f(0.3, "dp_lora: noise multiplier sigma (noise std sigma * C) (> 0)")
    dp_delta: float = _f(1e-5, "dp_lora: the delta of the reported (epsilon, delta), in (0, 1)")
    cellm_up_density: float = _f(0.1, "cellm: fraction of the LoRA update each client sends, in (0, 1]")
    cellm_down_density: float = _f(0.25, "cellm: fraction of the global LoRA change sent down, in (0, 1]")
    # ---- topology family (lab/topology, lab/gossip, lab/clock, lab/sync/dpsgd) ----
    all_reduce_algorithm: str = _f("auto", "all-reduce algorithm of the cost model: auto (ring vs hierarchical/torus), "
                                   "cheapest (every algorithm), or one pinned", choices=topo.ALL_REDUCE_CHOICES)
    graph: str = _f("ring", "dpsgd: gossip graph", choices=GRAPHS)
    gossip_period: int = _f(1, "dpsgd: local steps between gossip rounds H (>= 1)")
    graph_degree: int = _f(4, "dpsgd with graph=random_regular: neighbours per rank")
    overlap: bool = _f(False, "ddp: bucketed gradient all-reduce overlaps the backward pass on the simulated clock")
    num_buckets: int = _f(4, "ddp with overlap: gradient buckets, each all-reduced when its backward slice is done")
    slow_ranks: int = _f(0, "simulated clock: the last ranks compute straggler_slowdown times slower (stragglers)")

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                _bad(f.name, v, "an integer")
            if f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    _bad(f.name, v, "a number")
                object.__setattr__(self, f.name, float(v))
            if "choices" in f.metadata and v not in f.metadata["choices"]:
                _bad(f.name, v, f"one of {list(f.metadata['choices'])}")
        for name in ("num_workers", "steps", "rounds", "sync_period", "local_epochs", "batch_size", "eval_every",
                     "shards_per_worker"):
            if getattr(self, name) < 1:
                _bad(name, getattr(self, name), "an integer >= 1")
        if not 0 < self.compression_ratio <= 1:
            _bad("compression_ratio", self.compression_ratio, "a number in (0, 1]")
        if not 0 < self.client_fraction <= 1:
            _bad("client_fraction", self.client_fraction, "a number in (0, 1]")
        if self.dirichlet_alpha <= 0:
            _bad("dirichlet_alpha", self.dirichlet_alpha, "a number > 0")
        if self.lr <= 0:
            _bad("lr", self.lr, "a number > 0")
        if not 0 <= self.momentum < 1:
            _bad("momentum", self.momentum, "a number in [0, 1)")
        if self.weight_decay < 0:
            _bad("weight_decay", self.weight_decay, "a number >= 0")
        if self.grad_clip < 0:
            _bad("grad_clip", self.grad_clip, "a number >= 0 (0 turns clipping off)")
        if self.seed < 0:
            _bad("seed", self.seed, "an integer >= 0")
        if self.dataset not in COMPATIBLE[self.model]:
            _bad("model", self.model, f"a model for dataset={self.dataset!r}: "
                 f"{[m for m, ds in COMPATIBLE.items() if self.dataset in ds]}")
        if self.dataset == "chars" and self.partition != "iid":
            _bad("partition", self.partition, "'iid' for dataset='chars' (text has no labels to skew)")
        sync_options.check(self, _bad)
        sharding_options.check(self, _bad)
        compress_options.check(self, _bad)
        topo.preset(self.topology, self.num_workers)  # raises if the workers do not fit the preset
        topo.check_config(self, _bad)

    def replace(self, **changes) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def _bad(name, value, allowed):
    raise ValueError(f"{name}={value!r} is invalid: expected {allowed}")


# ---- runs --------------------------------------------------------------------------------------------
@dataclass
class Run:
    config: ExperimentConfig
    metrics: pd.DataFrame
    ledger: pd.DataFrame
    status: str  # 'running' | 'finished' | 'stopped' | 'interrupted' | 'failed'
    model: torch.Tensor | None = None  # (d,) the evaluated model's flat parameters
    path: Path | None = None
    error: str | None = None
    worker_params: torch.Tensor | None = None  # (n_local, d) final rows of this process's workers (not saved)
    timeline: pd.DataFrame | None = None  # the simulated clock's per-rank events (lab.clock; not saved)
    traffic: np.ndarray | None = None  # (P+1, P+1) bytes sent rank to rank (index P: a star's server; not saved)

    def summary(self) -> dict:
        m = self.metrics
        last = m.iloc[-1] if len(m) else None
        evals = m.dropna(subset=["eval_loss"]) if len(m) else m
        ev = evals.iloc[-1] if len(evals) else None
        out = {"technique": self.config.technique, "status": self.status, "steps": int(last.step) if last is not None else 0,
               "rounds": int(last["round"]) if last is not None else 0,
               "final_loss": float(last.loss) if last is not None else float("nan"),
               "eval_loss": float(ev.eval_loss) if ev is not None else float("nan"),
               "eval_accuracy": float(ev.eval_accuracy) if ev is not None and "eval_accuracy" in ev else float("nan"),
               "bytes": int(last.bytes) if last is not None else 0,
               "sim_seconds": float(last.sim_seconds) if last is not None else 0.0,
               "wall_seconds": float(last.wall_seconds) if last is not None else 0.0}
        return out

    @classmethod
    def load(cls, path) -> "Run":
        path = Path(path)
        config = ExperimentConfig.from_dict(json.loads((path / "config.json").read_text()))
        status = json.loads((path / "status.json").read_text())
        metrics = pd.read_parquet(path / "metrics.parquet")
        ledger = pd.read_parquet(path / "ledger.parquet") if (path / "ledger.parquet").exists() else pd.DataFrame()
        model = torch.load(path / "model.pt") if (path / "model.pt").exists() else None
        return cls(config, metrics, ledger, status["status"], model, path, status.get("error"))


def _atomic_write(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _save(run: Run):
    p = run.path
    _atomic_write(p / "config.json", lambda t: t.write_text(json.dumps(run.config.to_dict(), indent=2)))
    _atomic_write(p / "metrics.parquet", lambda t: run.metrics.to_parquet(t, index=False))
    _atomic_write(p / "ledger.parquet", lambda t: run.ledger.to_parquet(t, index=False))
    if run.model is not None:
        _atomic_write(p / "model.pt", lambda t: torch.save(run.model, t))
    _atomic_write(p / "status.json", lambda t: t.write_text(json.dumps({"status": run.status, "error": run.error})))


def default_runs_dir() -> Path:
    return Path(os.environ.get("COMMLAB_RUNS_DIR", "runs"))


def make_optimizer(config: ExperimentConfig, param: torch.Tensor, *, cluster: Cluster, layout=None):
    """The configured optimizer over one rank-stacked flat tensor `param` (n, ·): the cluster's parameters,
    or a sharding technique's slices of them (`layout`: the technique, which knows each row's slice)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD([param], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam_mini":  # one second moment per block (lab/sharding/adam_mini.py)
        from lab.sharding.adam_mini import AdamMini, cluster_layout

        bounds, decay = cluster_layout(cluster)
        slices = layout.adam_mini_slices(bounds) if layout is not None else {}
        return AdamMini(param, bounds=bounds, decay=decay, lr=config.lr, weight_decay=config.weight_decay, **slices)
    return torch.optim.AdamW([param], lr=config.lr, weight_decay=config.weight_decay)


def build_context(config: ExperimentConfig, *, collective=None) -> tuple[TrainContext, object]:
    """Everything a technique needs, for the ranks this process holds."""
    torch.manual_seed(config.seed)
    topology = topo.for_config(config)  # the preset, with the pinned algorithm and any slow ranks
    ledger = Ledger(topology)
    ledger.clock = Clock(config.num_workers, speed=topology.rank_speed)
    if config.backend == "distributed" and collective is None:
        from lab.comm.distributed import DistributedCollective, init_from_env

        _, world = init_from_env()
        if world != config.num_workers:
            _bad("num_workers", config.num_workers, f"the process-group size {world} under backend='distributed'")
        collective = DistributedCollective(ledger=ledger)
    elif collective is None:
        collective = SimulatedCollective(world_size=config.num_workers, ledger=ledger)
    else:
        collective.ledger = ledger
    data = load_dataset(config.dataset, seed=config.seed, num_workers=config.num_workers)
    shards = partition(data.num_train, data.labels, scheme=config.partition, num_workers=config.num_workers,
                       seed=config.seed, alpha=config.dirichlet_alpha, shards_per_worker=config.shards_per_worker,
                       min_size=config.batch_size if config.partition == "dirichlet" else 1)
    smallest = min(len(s) for s in shards)
    if config.batch_size > smallest:
        _bad("batch_size", config.batch_size, f"at most the smallest worker's shard ({smallest} examples with "
             f"{config.num_workers} workers on {config.dataset})")
    spec = build_model(config.model, data, seed=config.seed)
    cluster = Cluster(spec.module, num_workers=config.num_workers, loss_fn=spec.loss_fn, ranks=collective.ranks)
    batches = RankBatches(data.x_train, data.y_train, shards, batch_size=config.batch_size, seed=config.seed,
                          ranks=collective.ranks)
    opt = make_optimizer(config, cluster.params, cluster=cluster)
    ctx = TrainContext(config, cluster, collective, ledger, topology, batches, spec, opt, data=data,
                       clock=ledger.clock)
    ledger.clock.compute_source = lambda: ctx.compute_seconds
    return ctx, data


def run(config: ExperimentConfig, *, runs_dir: str | Path | None = None, save: bool = True, progress: bool = True,
        callback=None, stop: threading.Event | None = None, collective=None) -> Run:
    """Train `config` and return its Run.

    callback(row: dict) is called after every round (the widgets stream charts
    from it); setting `stop` ends the run after the current round with status
    'stopped'. Ctrl-C ends it with status 'interrupted'. Either way what was
    finished is returned and, with `save`, on disk.
    """
    ctx, data = build_context(config, collective=collective)
    technique = TECHNIQUES[config.technique](config)
    technique.setup(ctx)
    is_writer = ctx.collective.ranks[0] == 0
    run_ = Run(config, pd.DataFrame(), pd.DataFrame(), "running")
    if save and is_writer:
        root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        run_.path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.technique}-{config.digest()}-{os.getpid()}"
        run_.path.mkdir(parents=True, exist_ok=True)
    total = config.rounds if technique.budget == "rounds" else config.steps
    bar = None
    if progress and is_writer:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{config.technique} ×{config.num_workers}", unit=technique.budget[:-1])
    rows: list[dict] = []
    t0 = time.perf_counter()
    last_eval_step = -1

    def done() -> bool:
        return ctx.rounds >= config.rounds if technique.budget == "rounds" else ctx.step >= config.steps

    def finish(status: str, error: str | None = None):
        run_.status, run_.error = status, error
        run_.metrics = pd.DataFrame(rows)
        run_.ledger = ctx.ledger.table()
        run_.worker_params = ctx.cluster.params.detach().clone()
        run_.timeline = ctx.clock.table()
        run_.traffic = ctx.ledger.traffic.copy()
        if run_.path is not None:
            _save(run_)

    try:
        while not done():
            if stop is not None and stop.is_set():
                break
            before = ctx.step
            result = technique.round(ctx)
            ctx.rounds += 1
            row = {"step": ctx.step, "round": ctx.rounds, "loss": result.loss}
            final = done()
            if ctx.step // config.eval_every > last_eval_step // config.eval_every or final:
                model = technique.model_row(ctx)
                out = ctx.cluster.evaluate(model, data.x_test)
                row.update(ctx.spec.metrics_fn(out, data.y_test))
                run_.model = model.detach().clone()
                last_eval_step = ctx.step
            row.update(ctx.ledger.counters())
            row["compute_seconds"] = ctx.compute_seconds
            # communication hidden behind compute (overlap) is not on the critical path
            row["sim_seconds"] = ctx.compute_seconds + ctx.ledger.seconds - ctx.comm_hidden_seconds
            ctx.clock.sync()
            if topo.clock_decides(config, ctx.topology):  # overlap or stragglers: the per-rank timeline's makespan
                row["sim_seconds"] = ctx.clock.seconds - ctx.comm_hidden_seconds
            row["wall_seconds"] = time.perf_counter() - t0
            row.update(result.extras)
            rows.append(row)
            if bar is not None:
                bar.update((ctx.step - before) if technique.budget == "steps" else 1)
                bar.set_postfix(loss=f"{result.loss:.3f}", refresh=False)
            if callback is not None:
                callback(row)
            if "eval_loss" in row and run_.path is not None:
                run_.metrics, run_.ledger = pd.DataFrame(rows), ctx.ledger.table()
                _save(run_)
        finish("finished" if done() else "stopped")
    except KeyboardInterrupt:
        finish("interrupted")
    except Exception as e:  # keep what was finished, then let the error surface
        finish("failed", f"{type(e).__name__}: {e}")
        e.run = run_  # the finished rounds travel with the error
        raise
    finally:
        if bar is not None:
            bar.close()
    run_.metrics = _with_eval_columns(run_.metrics)
    return run_


def _with_eval_columns(m: pd.DataFrame) -> pd.DataFrame:
    for c in ("eval_loss", "eval_accuracy"):
        if c not in m.columns and len(m):
            m[c] = float("nan")
    return m
