"""Contract tests over the registries: whatever is registered keeps the lab's promises, so forgetting a step
fails here, loudly, instead of silently in a chart.

Every test is parametrized over `lab.registry.techniques()` (or every knob a technique reads), so a new
technique or knob is checked without touching this file:

- every technique runs 4 workers x 8 steps (or 2 rounds) to the end with a finite loss and a non-empty Ledger,
  and the same config and seed give the same metrics and Ledger (which is what makes the knob test meaningful);
- `compressor='topk', compression_ratio=0.1` either runs compressed (fewer bytes than dense, the chart label says
  so) where the technique declares a `compressor_path`, or is refused with a ValueError naming `compressor`;
- every knob a technique reads beyond the always-read common ones, moved off its value to another valid one
  (`Knob.probe_values`, under `Knob.probe_with`), changes the bytes or the metrics of the tiny run — a knob
  that changes nothing is read by nobody, and should be refused or declared conditional (`read_when`); one
  small run per (technique, knob), marked `slow` (about 2 CPU-minutes for the whole file);
- (every compressor's traffic ratio against its payload ratio, over the compressor registry, is checked in
  tests/test_compressed_allreduce.py);
- `commlab techniques` lists every technique and `commlab run --help` every knob.

The tiny run of a technique is 4 workers on digits/MLP (or the first compatible dataset and model its config
accepts), plus the technique's own `contract_settings` (`Technique.contract_setup()`).
"""
from __future__ import annotations

import contextlib
import io
import math
from functools import cache

import pandas as pd
import pytest

from lab import cli
from lab.compress.registry import RATIO_COMPRESSORS
from lab.config import ALWAYS, KNOBS, ExperimentConfig, config_for, is_read, reads
from lab.experiment import run
from lab.models import COMPATIBLE
from lab.registry import technique, techniques

TECHNIQUES = tuple(techniques())
#: non-deterministic by nature: the real time the simulation took
WALL_COLUMNS = ("wall_seconds",)


# ---- the tiny run of a technique ---------------------------------------------------------------------------
def _pairs():
    """(dataset, model) pairs, smallest first: digits/MLP, then every other compatible pair."""
    out = [("digits", "mlp")]
    out += [(ds, m) for m, sets in COMPATIBLE.items() for ds in sets if (ds, m) not in out]
    return out


@cache
def _settings(name: str) -> tuple:
    cls = technique(name)
    own = cls.contract_setup()
    budget = {"steps": 8} if cls.budget == "steps" else {"rounds": 2}
    base = {"num_workers": 4, **budget, **own}
    if "dataset" in own or "model" in own:
        return tuple(base.items())
    refusals = []
    for ds, m in _pairs():
        try:
            ExperimentConfig(technique=name, **{"dataset": ds, "model": m, **base})
        except ValueError as e:
            if str(e).startswith(("model=", "dataset=")):
                refusals.append(str(e))
                continue
            raise
        return tuple({"dataset": ds, "model": m, **base}.items())
    raise AssertionError(f"technique {name!r} accepts no (dataset, model): {refusals}; declare them in its "
                         f"contract_settings")


def contract_settings(name: str) -> dict:
    """The settings of technique `name`'s tiny contract run (4 workers, 8 steps or 2 rounds, its own)."""
    return dict(_settings(name))


def contract_config(name: str, **extra) -> ExperimentConfig:
    return ExperimentConfig(technique=name, **{**contract_settings(name), **extra})


@cache
def run_of(config: ExperimentConfig):
    """The Run of `config` (cached: several tests compare against the same baseline)."""
    return run(config, save=False, progress=False)


def trace(r) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a knob may change: the metrics table (without the wall clock) and the Ledger."""
    return r.metrics.drop(columns=[c for c in WALL_COLUMNS if c in r.metrics]), r.ledger


def same_run(a, b) -> bool:
    (ma, la), (mb, lb) = trace(a), trace(b)
    return a.status == b.status and ma.equals(mb) and la.equals(lb)


def total_bytes(r) -> int:
    return int(r.metrics["bytes"].iloc[-1])


# ---- every technique runs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_technique_runs_its_tiny_config(name):
    cfg = contract_config(name)
    r = run_of(cfg)
    assert r.status == "finished", f"{name}: {r.status} {r.error}"
    assert len(r.metrics) > 0, f"{name}: no metrics rows"
    losses = r.metrics["loss"].to_numpy()
    assert all(math.isfinite(x) for x in losses), f"{name}: non-finite training loss {losses}"
    assert len(r.ledger) > 0 and total_bytes(r) > 0, (
        f"{name}: nothing was sent in {cfg.changed()} (is its period longer than the run? declare "
        f"contract_settings)")
    budget = cfg.steps if technique(name).budget == "steps" else cfg.rounds
    done = int(r.metrics["step"].iloc[-1]) if technique(name).budget == "steps" else int(r.metrics["round"].iloc[-1])
    assert done == budget, f"{name}: ran {done} of {budget} {technique(name).budget}"


@pytest.mark.parametrize("name", TECHNIQUES)
def test_same_config_and_seed_give_the_same_run(name):
    cfg = contract_config(name)
    again = run(cfg, save=False, progress=False)
    assert same_run(run_of(cfg), again), f"{name}: two runs of one config differ"


# ---- a compressor is honoured or refused ---------------------------------------------------------------------
#: techniques whose compressed path is declared but not wired yet: {name: reason} (xfail strict, so wiring one
#: fails its test until the entry is removed)
NOT_WIRED: dict[str, str] = {}


def _xfail_if_not_wired(name, request):
    if name in NOT_WIRED:
        request.applymarker(pytest.mark.xfail(reason=NOT_WIRED[name], strict=True))


def _assert_compresses(name: str, cfg) -> None:
    cls = technique(name)
    dense, small = run_of(contract_config(name)), run_of(cfg)
    assert small.status == "finished", f"{name} with {cfg.compressor}: {small.status} {small.error}"
    assert total_bytes(small) < total_bytes(dense), (
        f"{name}: {cfg.compressor} {cfg.compression_ratio} sent {total_bytes(small):,} B, dense "
        f"{total_bytes(dense):,} B: the compressor is accepted and ignored")
    assert cfg.compressor in cls.describe(cfg), f"{name}: the label {cls.describe(cfg)!r} does not say " \
                                                f"{cfg.compressor}"
    assert cfg.compressor not in cls.describe(contract_config(name))


@pytest.mark.parametrize("name", TECHNIQUES)
def test_topk_compresses_or_is_refused(name, request):
    """ExperimentConfig(technique=t, compressor='topk', compression_ratio=0.1) runs with fewer bytes than dense
    and says so in its label, or raises a ValueError naming `compressor`."""
    _xfail_if_not_wired(name, request)
    cls = technique(name)
    try:
        cfg = contract_config(name, compressor="topk", compression_ratio=0.1)
    except ValueError as e:
        assert str(e).startswith("compressor="), f"{name}: the refusal does not name the field first: {e}"
        return
    assert cls.compressor_path is not None, f"{name} has no compressor_path but accepted compressor='topk'"
    _assert_compresses(name, cfg)


@pytest.mark.parametrize("name", [t for t in TECHNIQUES if technique(t).compressor_path is not None])
def test_every_compressor_path_sends_fewer_bytes(name, request):
    """A technique that declares a compressor_path compresses with top-k 0.1, or (where it refuses biased
    compressors) with the first ratio compressor it accepts."""
    _xfail_if_not_wired(name, request)
    refused = []
    for comp in ("topk",) + tuple(c for c in RATIO_COMPRESSORS if c != "topk"):
        try:
            cfg = contract_config(name, compressor=comp, compression_ratio=0.1)
        except ValueError as e:
            refused.append(str(e))
            continue
        _assert_compresses(name, cfg)
        return
    pytest.fail(f"{name} declares compressor_path={technique(name).compressor_path!r} and refuses every ratio "
                f"compressor: {refused}")


# ---- every knob moves the run ---------------------------------------------------------------------------------
def probed_fields(name: str) -> list[str]:
    """The knobs of `name` the contract moves: what it reads beyond the always-read common knobs, and its own."""
    return sorted((reads(name) - set(ALWAYS)) | set(technique(name).declared_knobs()))


#: try at most this many probe values of one knob (most knobs change the run with the first)
MAX_PROBES = 3


@pytest.mark.slow
@pytest.mark.parametrize("name,field", [pytest.param(t, f, id=f"{t}-{f}") for t in TECHNIQUES
                                        for f in probed_fields(t)])
def test_every_knob_changes_the_bytes_or_the_metrics(name, field):
    knob = KNOBS[field]
    try:  # the knob's probe_with settings, those the technique reads (e.g. no `optimizer` for federated ones)
        base = config_for(name, **{**contract_settings(name), **knob.probe_with})
    except ValueError as e:
        pytest.fail(f"{field}'s probe_with={knob.probe_with} is refused for {name}: {e}")
    ok, why = is_read(base, field)
    assert ok, f"{name} lists {field} but does not read it under probe_with={knob.probe_with} ({why}); " \
               f"declare a Knob probe_with under which it is read"
    tried, refused = [], []
    for value in knob.probe_values(getattr(base, field)):
        try:
            moved = base.replace(**{field: value})
        except ValueError as e:
            refused.append(f"{value!r}: {e}")
            continue
        r = run_of(moved)
        assert r.status in ("finished", "diverged"), f"{name} with {field}={value!r}: {r.status} {r.error}"
        if not same_run(run_of(base), r):
            return
        tried.append(value)
        if len(tried) == MAX_PROBES:
            break
    assert tried, f"{name}: no valid value to move {field} to from {getattr(base, field)!r} (refused: {refused}); " \
                  f"declare Knob(probe=...)"
    pytest.fail(f"silent knob: {name} ran identically with {field} = {getattr(base, field)!r} and {tried} "
                f"(settings {base.changed()}); the technique ignores it, or it is read only under a condition "
                f"its Knob should declare (read_when), or its effect needs a Knob probe/probe_with")


# ---- the command line sees every technique and knob ---------------------------------------------------------------
def test_commlab_techniques_lists_every_technique():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["techniques"]) == 0
    listed = [line.split(":")[0] for line in out.getvalue().splitlines() if not line.startswith(" ")]
    assert listed == list(TECHNIQUES)
    for name in TECHNIQUES:
        text = cli.list_techniques(name)
        for field in probed_fields(name):
            assert cli._option(field) in text, f"`commlab techniques {name}` does not show {field}"


def test_commlab_run_help_mentions_every_knob():
    parser = cli.build_parser()
    run_parser = parser._subparsers._group_actions[0].choices["run"]
    text = run_parser.format_help()
    for field in KNOBS:
        assert cli._option(field) in text, f"`commlab run --help` does not mention {field}"
    for name in TECHNIQUES:
        assert name in text


def test_commlab_run_refuses_an_option_the_technique_does_not_read(capsys):
    """Exit status 2, and the message names the field and the technique."""
    name = next(t for t in TECHNIQUES if "sync_period" not in reads(t))
    code = cli.main(["run", "--technique", name, "--sync-period", "4", "--no-save", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "sync_period" in err and name in err
