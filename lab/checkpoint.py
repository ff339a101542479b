"""Checkpoints: everything a run needs to continue bit for bit, in one file that loads with weights_only=True.

`run(config, checkpoint_every=K)` (lab.experiment) writes `runs/<id>/checkpoint.pt` every K steps (K rounds
for a technique budgeted in rounds), at the end of the round that crosses the multiple of K, atomically
(lab.runs.atomic_write). It holds

- the cluster's parameters (n, d) and the local optimizer's state;
- the technique's `state_dict()` (its channels: error-feedback memory, compressor call counts, warm starts;
  its generators' states; its server, anchors, control variates, ...);
- the data streams (lab.data.RankBatches: each rank's generator state, epoch order and position);
- the Ledger (every entry and the totals, so the metrics' cumulative bytes continue) and the simulated clock;
- `ctx.step`, `ctx.rounds`, `compute_seconds`, `comm_hidden_seconds`; the metrics rows so far, the step of
  the last evaluation and the evaluated model; the global torch, numpy and Python RNG states;
- the config (as config.json has it) and K.

`run(config, resume=RUN_DIR)`, `resume(RUN_DIR)` or `commlab run --resume RUN_DIR` rebuild the run from its
config exactly as a fresh run does (same seed, same setup), then overwrite its state with the checkpoint's
and go on from there; the run directory is the same and its status goes to 'running', then to how the run
ends. A resumed run equals the uninterrupted one bit for bit: metrics (except `wall_seconds`), Ledger and
model (tests/test_resume.py, over every registered technique).

What the file may hold is what `torch.load(weights_only=True)` accepts: tensors, numbers, strings, None and
lists, tuples and dicts of them. numpy arrays and scalars in a state are stored as their bytes (a uint8
tensor) tagged with their dtype and shape, and come back as equal numpy values (`pack` / `unpack`); anything
else is a TypeError naming where it sits, so a technique that keeps an object in its state fails loudly
instead of resuming wrongly.

Simulated runs only: under backend='distributed' each process holds its own ranks' state and only rank 0 has
the run directory, so `checkpoint_every` and `resume` are refused there.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from lab.runs import atomic_write

FILE = "checkpoint.pt"
FORMAT = 1
_NUMPY = "__numpy__"


# ---- what a checkpoint may hold ------------------------------------------------------------------------------
def pack(x, where: str = "state"):
    """`x` with numpy arrays/scalars turned into tagged tensors; TypeError (naming `where`) for objects that
    weights_only loading would refuse."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray | np.generic):  # first: np.float64 is a float too
        a = np.asarray(x)
        if a.dtype == object:
            raise TypeError(f"{where}: a numpy array of Python objects cannot go into a checkpoint")
        raw = np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=np.uint8).copy()  # any fixed-size dtype
        return {_NUMPY: torch.from_numpy(raw), "dtype": a.dtype.str, "scalar": isinstance(x, np.generic),
                "shape": list(a.shape)}
    if isinstance(x, bool | int | float | str | type(None)):
        return x
    if isinstance(x, dict):
        if _NUMPY in x:
            raise TypeError(f"{where}: the key {_NUMPY!r} is reserved")
        return {k: pack(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, list):
        return [pack(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, tuple):
        return tuple(pack(v, f"{where}[{i}]") for i, v in enumerate(x))
    raise TypeError(f"{where}: a {type(x).__module__}.{type(x).__qualname__} cannot go into a checkpoint "
                    f"(tensors, numbers, strings, None, numpy arrays and lists/tuples/dicts of them only)")


def unpack(x):
    """The inverse of `pack`."""
    if isinstance(x, dict):
        if _NUMPY in x:
            a = np.frombuffer(x[_NUMPY].numpy().tobytes(), dtype=np.dtype(x["dtype"])).reshape(x["shape"]).copy()
            return a[()] if x["scalar"] else a
        return {k: unpack(v) for k, v in x.items()}
    if isinstance(x, list):
        return [unpack(v) for v in x]
    if isinstance(x, tuple):
        return tuple(unpack(v) for v in x)
    return x


# ---- capture and restore -------------------------------------------------------------------------------------
def capture(ctx, technique, *, rows: list, last_eval_step: int, model, every: int) -> dict:
    """The state of a run at a round boundary (see the module docstring)."""
    opt = ctx.optimizer
    state = {
        "format": FORMAT,
        "config": json.dumps(ctx.config.to_dict(), sort_keys=True),
        "checkpoint_every": int(every),
        "step": ctx.step, "rounds": ctx.rounds,
        "compute_seconds": ctx.compute_seconds, "comm_hidden_seconds": ctx.comm_hidden_seconds,
        "params": ctx.cluster.params.detach(),
        "optimizer": opt.state_dict() if opt is not None else None,
        "technique": technique.state_dict(),
        "batches": ctx.batches.state_dict(),
        "ledger": ctx.ledger.state_dict(),
        "clock": ctx.clock.state_dict() if ctx.clock is not None else None,
        "rows": rows, "last_eval_step": int(last_eval_step), "model": model,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    return pack(state, "checkpoint")


def restore(ctx, technique, state: dict) -> dict:
    """Put a checkpoint's state into a freshly built and set-up run; returns
    {'rows', 'last_eval_step', 'model', 'checkpoint_every'} for the round loop."""
    state = unpack(state)
    ctx.step, ctx.rounds = state["step"], state["rounds"]
    ctx.compute_seconds, ctx.comm_hidden_seconds = state["compute_seconds"], state["comm_hidden_seconds"]
    params = state["params"]
    if params.shape != ctx.cluster.params.shape:
        raise ValueError(f"the checkpoint's parameters are {tuple(params.shape)}, this run's "
                         f"{tuple(ctx.cluster.params.shape)}: not a checkpoint of this config")
    with torch.no_grad():
        ctx.cluster.params.copy_(params)
    ctx.cluster.params.grad = None
    if state["optimizer"] is not None:
        ctx.optimizer.load_state_dict(state["optimizer"])
    technique.load_state_dict(state["technique"])
    ctx.batches.load_state_dict(state["batches"])
    ctx.ledger.load_state_dict(state["ledger"])
    if state["clock"] is not None:
        ctx.clock.load_state_dict(state["clock"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return {k: state[k] for k in ("rows", "last_eval_step", "model", "checkpoint_every")}


# ---- on disk -------------------------------------------------------------------------------------------------
def write(run_dir: Path, state: dict) -> None:
    atomic_write(Path(run_dir) / FILE, lambda t: torch.save(state, t))


def read(run_dir) -> dict:
    """The checkpoint of run directory `run_dir`; ValueError naming `resume` if there is none."""
    file = Path(run_dir) / FILE
    if not file.exists():
        raise ValueError(f"resume={str(run_dir)!r} is invalid: it has no {FILE} (a run directory written with "
                         f"checkpoint_every set is required)")
    state = torch.load(file, weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"resume={str(run_dir)!r} is invalid: checkpoint format {state.get('format')!r}, this "
                         f"commlab reads {FORMAT}")
    return state


def stored_config(state: dict) -> dict:
    return json.loads(state["config"])


def check_config(config, state: dict, run_dir) -> None:
    """ValueError naming the first field where `config` differs from the checkpointed run's."""
    mine = json.loads(json.dumps(config.to_dict(), sort_keys=True))
    theirs = stored_config(state)
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            raise ValueError(f"{name}={mine.get(name)!r} differs from the resumed run's {theirs.get(name)!r} "
                             f"({run_dir}): a run resumes with its own config")
