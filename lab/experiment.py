"""Experiments: a validated config, `run(config)`, and Runs that persist and load back.

`ExperimentConfig` (`lab.config`, re-exported here) is checked on construction:
a bad value, a knob the technique does not read or a cross-field rule raises
ValueError naming the field, the value and what is allowed. What needs the data
or the machine is checked when the run starts, before the model is replicated:
a batch larger than the smallest worker's shard (`batch_size`), and the memory
the run would need (`lab.budget`). `run(config)` trains with the
chosen technique, simulated in one process or on a torch.distributed process
group (`backend='distributed'` under torchrun), and returns a `Run` whose
`metrics` is a tidy table, one row per round:

  step, round, loss, eval_loss, eval_accuracy, bytes, bytes_peer, bytes_inter,
  bytes_uplink, bytes_downlink, comm_seconds, compute_seconds, sim_seconds,
  wall_seconds, plus technique columns (e.g. sync_period, payload_ratio, traffic_ratio)

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
finished. With `checkpoint_every=K` a run also writes checkpoint.pt every K
steps (rounds), and `resume(run_dir)` continues it bit for bit (lab.checkpoint).
"""
from __future__ import annotations

import numbers
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from lab import checkpoint, pretrain, threads, topology as topo
from lab.budget import check_memory
from lab.clock import Clock
from lab.cluster import Cluster
from lab.comm import Ledger, SimulatedCollective
from lab.config import ExperimentConfig, config_for
from lab.data import RankBatches, load_dataset, partition
from lab.device import data_on, resolve as resolve_device
from lab.knobs import bad
from lab.models import model_for
from lab.optim import make_optimizer
from lab.registry import technique as technique_class, techniques
from lab.runs import Run, begin as begin_run, default_runs_dir, new_run_dir, runs_table, save as save_run, write_status
from lab.technique import Diverged, Stopped, TrainContext

__all__ = ["ExperimentConfig", "Run", "build_context", "config_for", "make_optimizer", "resume", "run", "runs_table",
           "techniques"]


def build_context(config: ExperimentConfig, *, collective=None) -> tuple[TrainContext, object]:
    """Everything a technique needs, for the ranks this process holds."""
    torch.manual_seed(config.seed)
    tech = technique_class(config.technique)
    # the fine-tuning part of the data when the run starts from a pre-trained backbone (lab.pretrain)
    data = pretrain.task_data(config, load_dataset(config.dataset, seed=config.seed, num_workers=config.num_workers),
                              tech)
    spec = model_for(config, data)
    local = None if collective is None and config.backend == "simulated" else 1
    check_memory(config, dim=sum(p.numel() for p in spec.module.parameters()),
                 example_numel=data.x_train[0].numel(), num_local=local)
    topology = topo.for_config(config)  # the preset, with the pinned algorithm and any slow ranks
    ledger = Ledger(topology)
    ledger.clock = Clock(config.num_workers, speed=topology.rank_speed)
    if config.backend == "distributed" and collective is None:
        from lab.comm.distributed import DistributedCollective, init_from_env

        _, world = init_from_env(timeout=config.comm_timeout, heartbeat_timeout=config.heartbeat_timeout)
        if world != config.num_workers:
            bad("num_workers", config.num_workers, f"the process-group size {world} under backend='distributed'")
        collective = DistributedCollective(ledger=ledger, timeout=config.comm_timeout,
                                           heartbeat_timeout=config.heartbeat_timeout)
    elif collective is None:
        collective = SimulatedCollective(world_size=config.num_workers, ledger=ledger)
    else:
        collective.ledger = ledger
    shards = partition(data.num_train, data.labels, scheme=config.partition, num_workers=config.num_workers,
                       seed=config.seed, alpha=config.dirichlet_alpha, shards_per_worker=config.shards_per_worker,
                       min_size=config.batch_size if config.partition == "dirichlet" else 1,
                       examples_per_worker=config.examples_per_worker)
    smallest = min(len(s) for s in shards)
    if config.batch_size > smallest:
        bad("batch_size", config.batch_size, f"at most the smallest worker's shard ({smallest} examples with "
             f"{config.num_workers} workers on {config.dataset})")
    pretrain.load_backbone(config, spec.module, tech)
    device = resolve_device(config.device)
    spec.module.to(device)
    data = data_on(data, device)
    cluster = Cluster(spec.module, num_workers=config.num_workers, loss_fn=spec.loss_fn, ranks=collective.ranks)
    batches = RankBatches(data.x_train, data.y_train, shards, batch_size=config.batch_size, seed=config.seed,
                          ranks=collective.ranks)
    # the local optimizer, for techniques that step one (federated ones run their own SGD); building a torch
    # optimizer first imports torch._dynamo, seconds of setup a run without one need not pay
    opt = make_optimizer(config, cluster.params, cluster=cluster) if "optimizer" in tech.read_fields() else None
    ctx = TrainContext(config, cluster, collective, ledger, topology, batches, spec, opt, data=data,
                       clock=ledger.clock)
    ledger.clock.compute_source = lambda: ctx.compute_seconds
    return ctx, data


def run(config: ExperimentConfig, *, runs_dir: str | Path | None = None, save: bool = True, progress: bool = True,
        callback=None, stop: threading.Event | None = None, collective=None, checkpoint_every: int | None = None,
        resume: str | Path | None = None) -> Run:
    """Train `config` and return its Run.

    callback(row: dict) is called after every round (the widgets stream charts
    from it); setting `stop` ends the run after the current round with status
    'stopped'. Ctrl-C or SIGTERM ends it with status 'interrupted'; a
    non-finite loss, gradient or parameter with 'diverged' (unless
    `on_divergence='continue'`). Whatever happens, the finished rows are
    returned and, with `save`, on disk; the run directory has config.json and
    status.json from before the first step (lab.runs).

    `checkpoint_every=K` writes runs/<id>/checkpoint.pt every K steps (K rounds for a technique budgeted in
    rounds) at a round boundary; `resume=RUN_DIR` continues that run from its checkpoint, in its directory,
    and ends bit for bit where the uninterrupted run would (lab.checkpoint; `resume(run_dir)` takes the
    config from the directory). Both need a simulated run that saves.
    """
    checkpoint_every, saved = _checkpointing(config, checkpoint_every, resume, save=save, collective=collective)
    run_ = Run(config, pd.DataFrame(), pd.DataFrame(), "starting")
    is_writer = collective is None and config.backend == "simulated" or _is_rank0(collective)
    if resume is not None:
        checkpoint_every = checkpoint_every or saved["checkpoint_every"]
        run_.path = Path(resume)
        write_status(run_.path, "starting", resumed_from_step=saved["step"])
    elif save and is_writer:
        run_.path = new_run_dir(Path(runs_dir) if runs_dir is not None else default_runs_dir(), config)
        begin_run(run_)
    rows: list[dict] = []
    ctx = None
    resumed = {}

    def finish(status: str, error: str | None = None):
        run_.status, run_.error = status, error
        run_.metrics = _with_eval_columns(pd.DataFrame(rows))
        if ctx is not None:
            run_.ledger = ctx.ledger.table()
            run_.worker_params = ctx.cluster.params.detach().clone()
            run_.timeline = ctx.clock.table()
            run_.traffic = ctx.ledger.traffic  # sparse (lab.topology.Traffic), never changed in place
        if run_.path is not None:
            save_run(run_)

    bar = None
    with _sigterm_interrupts(), threads.using(config.threads):
        try:
            ctx, data = build_context(config, collective=collective)
            ctx.stop = stop
            technique = technique_class(config.technique)(config)
            technique.setup(ctx)
            if saved is not None:  # the fresh run's state, overwritten by the checkpoint's
                resumed = checkpoint.restore(ctx, technique, saved)
                rows[:] = resumed["rows"]
                run_.model = resumed["model"]
            if run_.path is not None:
                write_status(run_.path, "running")
            run_.status = "running"
            total = technique.total(config)
            if progress and ctx.collective.ranks[0] == 0:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc=f"{config.technique} ×{config.num_workers}", unit=technique.budget[:-1],
                           initial=ctx.rounds if technique.budget == "rounds" else ctx.step)
            _train(ctx, data, technique, run_, rows, bar=bar, callback=callback, stop=stop,
                   checkpoint_every=checkpoint_every if run_.path is not None else None,
                   last_eval_step=resumed.get("last_eval_step", -1))
            done = ctx.rounds >= config.rounds if technique.budget == "rounds" else ctx.step >= config.steps
            finish("finished" if done else "stopped")
        except Stopped:
            finish("stopped")
        except Diverged as d:
            run_.divergence = {"step": d.step, "quantity": d.quantity}
            finish("diverged", str(d))
            if is_writer:
                print(f"commlab: {config.technique} diverged: {d}", file=sys.stderr)
        except KeyboardInterrupt:
            finish("interrupted")
        except Exception as e:  # keep what was finished, then let the error surface
            finish("failed", f"{type(e).__name__}: {e}")
            e.run = run_  # the finished rounds travel with the error
            raise
        finally:
            if bar is not None:
                bar.close()
    return run_


def _train(ctx, data, technique, run_: Run, rows: list, *, bar, callback, stop, checkpoint_every=None,
           last_eval_step: int = -1) -> None:
    """The round loop: one metrics row per round, evaluation every `eval_every` steps, saves after each,
    a checkpoint at the end of each round that crosses a multiple of `checkpoint_every`."""
    config = ctx.config
    t0 = time.perf_counter() - (rows[-1]["wall_seconds"] if rows else 0.0)  # a resumed run's clock goes on

    def done() -> bool:
        return ctx.rounds >= config.rounds if technique.budget == "rounds" else ctx.step >= config.steps

    while not done():
        if stop is not None and stop.is_set():
            return
        before = ctx.step
        result = technique.round(ctx)
        ctx.rounds += 1
        ctx.guard("parameters", ctx.cluster.params)
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
            save_run(run_)
        if checkpoint_every:
            unit, was = (ctx.rounds, ctx.rounds - 1) if technique.budget == "rounds" else (ctx.step, before)
            if unit // checkpoint_every > was // checkpoint_every:
                checkpoint.write(run_.path, checkpoint.capture(ctx, technique, rows=rows, model=run_.model,
                                                               last_eval_step=last_eval_step,
                                                               every=checkpoint_every))


def resume(run_dir: str | Path, **kwargs) -> Run:
    """Continue the run in `run_dir` from its checkpoint, with its own config (`run(config, resume=...)`)."""
    saved = checkpoint.read(run_dir)
    config = ExperimentConfig.from_dict(checkpoint.stored_config(saved))
    return run(config, resume=run_dir, **kwargs)


def _checkpointing(config, every, resume, *, save: bool, collective) -> tuple[int | None, dict | None]:
    """Check `checkpoint_every` and `resume` before anything is allocated; the checkpoint to resume from."""
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or not 1 <= every <= 10**9:
            bad("checkpoint_every", every, "a whole number of steps (rounds) from 1 to 10**9, or None")
        every = int(every)
    if every is None and resume is None:
        return None, None
    what = "checkpoint_every" if resume is None else "resume"
    if config.backend != "simulated" or collective is not None:
        bad(what, every if resume is None else resume, "None under backend='distributed' (checkpoints hold one "
            "process's ranks; simulated runs only)")
    if not save:
        bad(what, every if resume is None else resume, "None with save=False (a checkpoint lives in the run "
            "directory)")
    if resume is None:
        return every, None
    from lab.runs import read_status

    try:
        state = read_status(resume)
    except (ValueError, OSError) as e:
        bad("resume", str(resume), f"a run directory ({e})")
    if state["status"] in ("starting", "running"):
        bad("resume", str(resume), f"a run that is not running (process {state.get('pid')} on "
            f"{state.get('host')} still is)")
    if state["status"] == "finished":
        bad("resume", str(resume), "an unfinished run (this one is finished)")
    saved = checkpoint.read(resume)
    checkpoint.check_config(config, saved, resume)
    return every, saved


def _is_rank0(collective) -> bool:
    return collective is not None and collective.ranks[0] == 0 or collective is None and _dist_rank() == 0


def _dist_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


@contextmanager
def _sigterm_interrupts():
    """In the main thread, SIGTERM interrupts the run like Ctrl-C (status 'interrupted', rows kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_eval_columns(m: pd.DataFrame) -> pd.DataFrame:
    for c in ("eval_loss", "eval_accuracy"):
        if c not in m.columns and len(m):
            m[c] = float("nan")
    return m
