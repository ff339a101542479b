"""Checkpoint and resume (lab.checkpoint): a run stopped after k of 2k steps (rounds) and resumed from its
checkpoint equals the uninterrupted run bit for bit — metrics (all but `wall_seconds`), Ledger, every worker's
final parameters, the evaluated model, the simulated timeline and the rank-to-rank traffic — for every
technique in the registry (exact equality, no tolerance).

The tiny run of a technique is its contract run (tests/test_contracts.py: 4 workers, its `contract_settings`),
with a budget of 2k steps or rounds, k = half the contract budget rounded up; the interruption is the user's
Stop at the end of the round that reaches k, where the checkpoint (`checkpoint_every=k`) is written. A second
contract compares the restored state itself — every attribute of the technique and of the training context —
with the live state it was taken from, so state a technique keeps outside its `state_dict` fails here even
where the two short runs would not show it. Techniques with a compressor path are resumed once more with a
random compressor and error feedback (call counts, residuals, server-side memory).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import types

import numpy as np
import pandas as pd
import pytest
import torch
from test_contracts import contract_settings, run_of

from lab import checkpoint, cli
from lab.batches import RankBatches
from lab.comm import Ledger
from lab.config import ExperimentConfig, config_for
from lab.experiment import _train, build_context, resume, run
from lab.registry import technique, techniques
from lab.runs import Run, read_status

TECHNIQUES = tuple(techniques())
COMPRESSED = tuple(t for t in TECHNIQUES if technique(t).compressor_path is not None)
#: a random compressor: its per-row seeds count the compressor's calls; EF14 memory where the technique takes it
RANDK = {"compressor": "randk", "compression_ratio": 0.1}


def halves(name: str, **extra) -> tuple[ExperimentConfig, int, str]:
    """(config with a budget of 2k, k, the metrics column that counts the budget) for technique `name`."""
    cls = technique(name)
    settings = {**contract_settings(name), **extra}
    budget = "steps" if cls.budget == "steps" else "rounds"
    k = (settings[budget] + 1) // 2
    settings[budget] = 2 * k
    return config_for(name, **settings), k, "step" if budget == "steps" else "round"


def stopped_at(config, k: int, column: str, root, *, every: int | None = None) -> Run:
    """`config` run with checkpoints every `every` (default k) and stopped at the end of the round reaching k."""
    stop = threading.Event()
    r = run(config, runs_dir=root, progress=False, checkpoint_every=every or k, stop=stop,
            callback=lambda row: stop.set() if row[column] >= k else None)
    assert r.status == "stopped", f"{config.technique}: {r.status} {r.error}"
    return r


def assert_same(straight: Run, resumed: Run, what: str) -> None:
    assert resumed.status == straight.status == "finished", f"{what}: {straight.status} / {resumed.status} " \
                                                            f"{resumed.error}"
    a, b = (r.metrics.drop(columns=["wall_seconds"]) for r in (straight, resumed))
    differ = [c for c in a.columns if c not in b or not a[c].equals(b[c])] + [c for c in b if c not in a]
    assert a.equals(b), f"{what}: metrics differ in {differ}"
    assert straight.ledger.equals(resumed.ledger), f"{what}: Ledger differs"
    assert torch.equal(straight.worker_params, resumed.worker_params), f"{what}: final parameters differ"
    assert torch.equal(straight.model, resumed.model), f"{what}: evaluated model differs"
    assert straight.timeline.equals(resumed.timeline), f"{what}: simulated timeline differs"
    ta, tb = straight.traffic.state_dict(), resumed.traffic.state_dict()
    assert all(np.array_equal(ta[k], tb[k]) for k in ta), f"{what}: rank-to-rank traffic differs"


def check_resume(config, k, column, root) -> None:
    straight = run_of(config)  # shared with tests/test_contracts.py where the configs coincide
    first = stopped_at(config, k, column, root)
    resumed = resume(first.path, progress=False)
    assert resumed.path == first.path
    assert_same(straight, resumed, f"{config.technique} {config.changed()}")
    on_disk = Run.load(first.path)
    assert on_disk.status == "finished"
    assert on_disk.metrics.drop(columns=["wall_seconds"]).equals(resumed.metrics.drop(columns=["wall_seconds"]))


# ---- the contract: every technique resumes bit for bit ---------------------------------------------------------
@pytest.mark.parametrize("name", TECHNIQUES)
def test_resumed_run_equals_the_uninterrupted_one(name, tmp_path):
    check_resume(*halves(name), tmp_path)


@pytest.mark.parametrize("name", COMPRESSED)
def test_resumed_compressed_run_equals_the_uninterrupted_one(name, tmp_path):
    """randk (its per-row seeds count the compressor's calls) with EF14 memory where the technique takes it."""
    check_resume(*halves(name, **RANDK), tmp_path)


# ---- the restored state is the live state ------------------------------------------------------------------------
#: attributes that are scratch: written before they are read in every round, or caches of derived values
SCRATCH = {
    "config", "_cache",  # the config is the run's; a topology's cost cache is a pure function's
    "last_local", "last_nbytes", "last_sizes", "last_cos", "warming", "reference", "_innovation",  # compressors
    "last_agreement",  # FedVote: this round's agreement, reported and folded into credibility in the round
    "plan",  # DP-LoRA: this round's plan; sequence parallelism: its layout (with `_pos`, cached positions)
    "_pos", "memory", "secondary", "grad_full",  # sharding: per-step snapshots and buffers
    "_counted", "_tokens", "load_history", "host_history", "last_plan", "load",  # MoE: per-step routing records
    "_scratch",  # the cluster's reused step buffers (Cluster.scratch: contents undefined between calls)
}


def differences(a, b, path: str, out: list, seen: set) -> None:
    """Where `a` and `b` (a technique, a context, anything they hold) differ, into `out`."""
    if id(a) in seen:
        return
    seen.add(id(a))
    if isinstance(a, torch.Tensor):
        same = (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and bool(((a == b) | (a != a) & (b != b)).all()))
        if not same:
            out.append(f"{path}: tensors differ")
    elif isinstance(a, np.ndarray):
        if not (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")):
            out.append(f"{path}: arrays differ")
    elif isinstance(a, torch.Generator):
        if not torch.equal(a.get_state(), b.get_state()):
            out.append(f"{path}: generator states differ")
    elif isinstance(a, np.random.Generator):
        if a.bit_generator.state != b.bit_generator.state:
            out.append(f"{path}: generator states differ")
    elif isinstance(a, torch.optim.Optimizer | torch.nn.Module):
        differences(a.state_dict(), b.state_dict(), f"{path}.state_dict()", out, seen)
    elif isinstance(a, Ledger | RankBatches):  # lazily summed traffic; buffered indices: compare their states
        differences(a.state_dict(), b.state_dict(), f"{path}.state_dict()", out, seen)
        if isinstance(a, Ledger) and not a.table().equals(b.table()):
            out.append(f"{path}: tables differ")
    elif type(a).__name__ == "Channel":  # plans are built lazily: a restored channel holds their states pending
        differences(a.state_dict(), b.state_dict(), f"{path}.state_dict()", out, seen)
        for k in ("feedback", "compressor"):
            differences(getattr(a, k), getattr(b, k), f"{path}.{k}", out, seen)
    elif isinstance(a, types.FunctionType | types.MethodType | types.BuiltinFunctionType | types.ModuleType
                    | type | threading.Event) or callable(a) and not hasattr(a, "__dict__"):
        return
    elif isinstance(a, pd.DataFrame):
        if not a.equals(b):
            out.append(f"{path}: tables differ")
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or a != a and b != b):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif isinstance(a, int | str | bool | type(None) | float | bytes):
        if type(a) is not type(b) or a != b:
            out.append(f"{path}: {a!r} vs {b!r}")
    elif isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            out.append(f"{path}: keys {sorted(map(str, a))[:6]} vs {sorted(map(str, b))[:6]}")
            return
        for k in a:
            differences(a[k], b[k], f"{path}[{k!r}]", out, seen)
    elif isinstance(a, list | tuple | set | frozenset):
        if type(a) is not type(b) or len(a) != len(b):
            out.append(f"{path}: {a!r:.80} vs {b!r:.80}")
            return
        if isinstance(a, set | frozenset):
            a, b = sorted(a), sorted(b)
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out, seen)
    elif type(a) is not type(b):
        out.append(f"{path}: {type(a).__name__} vs {type(b).__name__}")
    elif hasattr(a, "__dict__"):
        for k in sorted((set(vars(a)) | set(vars(b))) - SCRATCH):
            differences(getattr(a, k, "<missing>"), getattr(b, k, "<missing>"), f"{path}.{k}", out, seen)
    elif a != b:
        out.append(f"{path}: {type(a).__name__} differs")


def live_and_restored(config, k: int, column: str):
    """(technique, ctx) after the round reaching k, and a fresh run's after restoring their checkpoint
    (through bytes, loaded with weights_only=True)."""
    cls = technique(config.technique)

    def fresh():
        ctx, data = build_context(config)
        t = cls(config)
        t.setup(ctx)
        return ctx, data, t

    ctx, data, tech = fresh()
    stop, rows = threading.Event(), []
    _train(ctx, data, tech, Run(config, pd.DataFrame(), pd.DataFrame(), "running"), rows, bar=None, stop=stop,
           callback=lambda row: stop.set() if row[column] >= k else None)
    buf = io.BytesIO()
    torch.save(checkpoint.capture(ctx, tech, rows=rows, last_eval_step=0, model=None, every=k), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rng = torch.get_rng_state()
    ctx2, _, tech2 = fresh()
    checkpoint.restore(ctx2, tech2, saved)
    assert torch.equal(rng, torch.get_rng_state()), "the global torch RNG state is not restored"
    return (tech, ctx), (tech2, ctx2)


@pytest.mark.parametrize("name,extra", [pytest.param(t, {}, id=t) for t in TECHNIQUES]
                         + [pytest.param(t, RANDK, id=f"{t}-randk") for t in COMPRESSED])
def test_restored_state_equals_the_live_state(name, extra):
    (tech, ctx), (tech2, ctx2) = live_and_restored(*halves(name, **extra))
    out, seen = [], set()
    differences(tech, tech2, name, out, seen)
    for f in ("step", "rounds", "compute_seconds", "comm_hidden_seconds", "cluster", "collective", "ledger",
              "batches", "optimizer", "clock"):
        differences(getattr(ctx, f), getattr(ctx2, f), f"ctx.{f}", out, seen)
    assert not out, f"{name}: state not in its state_dict (or a scratch attribute to list in SCRATCH):\n" + \
                    "\n".join(out[:20])


# ---- the mechanics ---------------------------------------------------------------------------------------------
def test_rows_after_the_checkpoint_are_recomputed_not_kept(tmp_path):
    """Checkpoints every 2 steps, stopped at step 5: the resumed run starts from step 4 and still equals the
    uninterrupted one; during it status.json says 'running', after it 'finished'."""
    config = ExperimentConfig(technique="ddp", num_workers=4, steps=8, eval_every=3, momentum=0.9)
    first = stopped_at(config, 5, "step", tmp_path, every=2)
    saved = torch.load(first.path / checkpoint.FILE, weights_only=True)
    assert saved["step"] == 4 and len(saved["rows"]) == 4
    seen = []
    resumed = resume(first.path, progress=False, callback=lambda row: seen.append(read_status(first.path)["status"]))
    assert seen == ["running"] * 4
    assert read_status(first.path)["status"] == "finished"
    assert_same(run(config, save=False, progress=False), resumed, "ddp from step 4")


KILLED_AT_STEP_6 = """
import os, signal, sys
from lab.config import ExperimentConfig
from lab.experiment import run
config = ExperimentConfig(technique="local_sgd", num_workers=4, steps=8, sync_period=2, momentum=0.9)
run(config, runs_dir=sys.argv[1], progress=False, checkpoint_every=4,
    callback=lambda row: os.kill(os.getpid(), signal.SIGKILL) if row["step"] >= 6 else None)
"""


def test_resume_after_sigkill(tmp_path):
    """A process killed at step 6 leaves a 'crashed' run with its step-4 checkpoint; resumed, it ends where the
    uninterrupted run does."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_6, str(tmp_path)], env=env, timeout=300)
    assert done.returncode == -9
    (path,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert Run.load(path).status == "crashed"
    config = ExperimentConfig(technique="local_sgd", num_workers=4, steps=8, sync_period=2, momentum=0.9)
    assert_same(run(config, save=False, progress=False), resume(path, progress=False), "local_sgd after SIGKILL")
    assert read_status(path)["status"] == "finished"


def test_checkpoint_holds_only_plain_data(tmp_path):
    """The file loads with weights_only=True; numpy state comes back as numpy."""
    config, k, column = halves("fedavg")
    first = stopped_at(config, k, column, tmp_path)
    saved = torch.load(first.path / checkpoint.FILE, weights_only=True)
    assert json.loads(saved["config"]) == json.loads(json.dumps(config.to_dict()))
    ledger = checkpoint.unpack(saved["ledger"])
    assert ledger["rows"] and all(isinstance(r, np.ndarray) for r in ledger["rows"])
    with pytest.raises(TypeError, match="Generator"):
        checkpoint.pack({"gen": torch.Generator()})
    values = {"u32": np.arange(6, dtype=np.uint32).reshape(2, 3), "f32": np.float32(1.5), "text": np.array(["ab"]),
              "empty": np.zeros((0, 3)), "nan": np.float64("nan"), "pair": (1, np.int64(2))}
    buf = io.BytesIO()
    torch.save(checkpoint.pack(values), buf)
    buf.seek(0)
    back = checkpoint.unpack(torch.load(buf, weights_only=True))
    for k, v in values.items():
        assert type(back[k]) is type(v) and np.array_equal(back[k], v, equal_nan=k == "nan"), k


def test_resume_with_another_config_names_the_field(tmp_path):
    config, k, column = halves("local_sgd")
    first = stopped_at(config, k, column, tmp_path)
    with pytest.raises(ValueError, match=r"^lr=0\.1 differs"):
        run(config.replace(lr=0.1), resume=first.path, progress=False)
    assert read_status(first.path)["status"] == "stopped"  # nothing was touched


def test_refusals(tmp_path):
    config = ExperimentConfig(technique="ddp", num_workers=4, steps=4)
    for every in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="^checkpoint_every="):
            run(config, runs_dir=tmp_path, progress=False, checkpoint_every=every)
    with pytest.raises(ValueError, match="^checkpoint_every="):
        run(config, save=False, progress=False, checkpoint_every=2)
    done = run(config, runs_dir=tmp_path, progress=False, checkpoint_every=2)
    with pytest.raises(ValueError, match="^resume=.*finished"):
        resume(done.path, progress=False)
    plain = run(config.replace(steps=2), runs_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="^resume=.*checkpoint"):
        resume(plain.path, progress=False)


def test_cli_resume(tmp_path, capsys):
    """`commlab run --resume RUN_DIR` continues with the run's config; an option that changes it exits 2."""
    config, k, column = halves("diloco")
    first = stopped_at(config, k, column, tmp_path)
    assert cli.main(["run", "--resume", str(first.path), "--lr", "0.123", "--quiet"]) == 2
    assert "lr=0.123" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(first.path), "--quiet"]) == 0
    straight, on_disk = run(config, save=False, progress=False), Run.load(first.path)
    assert on_disk.status == "finished"
    assert straight.metrics.drop(columns=["wall_seconds"]).equals(on_disk.metrics.drop(columns=["wall_seconds"]))
    assert straight.ledger.equals(on_disk.ledger)
    assert torch.equal(straight.model, on_disk.model)
