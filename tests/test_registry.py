"""The technique registry and the declared knobs: one list, well-formed declarations, and a new technique is one
module plus one line in its family's TECHNIQUES.

`lab.registry.techniques()` collects every family package's `TECHNIQUES`; `lab.config` builds the config, its
validation and the CLI from the classes' declarations (`knobs`, `reads`, `compressor_path`, `check`). These tests
check the declarations themselves (no training, except the new-technique test, which trains in a subprocess).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab import registry
from lab.config import ALWAYS, COMMON, KNOBS, ExperimentConfig, reads
from lab.technique import COMPRESSOR_PATHS, Technique

REPO = Path(__file__).resolve().parents[1]
TECHNIQUES = registry.techniques()


def test_registry_is_the_union_of_the_families_lists_in_order():
    expected = [cls.name for fam in registry.FAMILIES for cls in importlib.import_module(fam).TECHNIQUES]
    assert list(TECHNIQUES) == expected
    assert len(set(expected)) == len(expected)
    for name, cls in TECHNIQUES.items():
        assert registry.technique(name) is cls


def test_an_unknown_technique_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"technique='nope' is invalid: expected one of \['ddp'"):
        registry.technique("nope")
    with pytest.raises(ValueError, match="technique='nope'"):
        ExperimentConfig(technique="nope")


def _technique_classes():
    """Every Technique subclass defined in a family package's modules (imported here)."""
    for family in registry.FAMILIES:
        pkg = importlib.import_module(family)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{family}."):
            importlib.import_module(info.name)
    seen, stack = [], list(Technique.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__.startswith(tuple(f"{f}." for f in registry.FAMILIES))]


def test_every_named_technique_class_is_registered():
    """A class with a `name` that is missing from its family's TECHNIQUES is a forgotten step."""
    registered = set(TECHNIQUES.values())
    named = [c for c in _technique_classes() if c.__dict__.get("name")]
    assert named, "no technique classes found"
    missing = [f"{c.__module__}.{c.__qualname__} ({c.name!r})" for c in named if c not in registered]
    assert not missing, f"technique classes not listed in their family's TECHNIQUES: {missing}"


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_every_technique_declares_what_it_is_and_reads(name):
    cls = TECHNIQUES[name]
    assert cls.name == name
    assert cls.label, f"{name}: no chart label"
    own_doc = (cls.__dict__.get("__doc__") or "").strip()
    module_doc = (importlib.import_module(cls.__module__).__doc__ or "").strip()
    assert own_doc or module_doc, f"{name}: neither the class nor its module has a docstring"
    assert cls.budget in ("steps", "rounds")
    assert isinstance(cls.federated, bool)
    assert cls.compressor_path is None or cls.compressor_path in COMPRESSOR_PATHS, cls.compressor_path
    assert cls.round is not Technique.round, f"{name} does not implement round()"
    unknown = sorted(cls.read_fields() - set(KNOBS))
    assert not unknown, f"{name} reads fields no knob declares (a typo in `reads`?): {unknown}"
    assert set(cls.label_fields()) <= reads(name), f"{name}: its label shows fields it does not read"
    settings = cls.contract_setup()
    assert set(settings) <= set(KNOBS), f"{name}: contract_settings has unknown fields"
    for field, value in settings.items():
        KNOBS[field].check(field, value)


@pytest.mark.parametrize("field", list(KNOBS))
def test_every_knob_is_well_formed(field):
    """Default, probe and probe_with pass the knob's own check; a conditional knob says why; the field is
    declared once (lab.config.all_knobs refuses a second declaration at import)."""
    knob = KNOBS[field]
    assert knob.help.strip(), f"{field}: no help"
    assert knob.check(field, knob.default) == knob.default
    if knob.choices is not None:
        assert knob.default in knob.choices
    if knob.read_when is not None:
        assert knob.why.strip(), f"{field}: read_when without `why`"
    if knob.probe is not None:
        assert knob.check(field, knob.probe) != knob.default, f"{field}: probe equals the default"
    for other, value in knob.probe_with.items():
        assert other in KNOBS and other != field, f"{field}: probe_with names {other!r}"
        KNOBS[other].check(other, value)
    assert knob.probe_values(knob.default) or knob.type is str, f"{field}: no value to probe it with"
    assert field in COMMON or [t for t in TECHNIQUES if field in reads(t)], f"{field}: nobody reads it"


@pytest.mark.parametrize("field", [f for f in KNOBS if f not in ALWAYS])
def test_a_knob_the_technique_does_not_read_is_refused_naming_who_reads_it(field):
    knob = KNOBS[field]
    outsider = next((t for t in TECHNIQUES if field not in reads(t)), None)
    if outsider is None:
        return  # every technique reads it (e.g. a common knob with no condition)
    value = next(iter(knob.probe_values(knob.default)), None)
    assert value is not None
    with pytest.raises(ValueError) as e:
        ExperimentConfig(technique=outsider, **{field: value})
    text = str(e.value)
    assert text.startswith(f"{field}="), text
    readers = [t for t in TECHNIQUES if field in reads(t)]
    if f"technique={outsider!r}" in text:  # refused because the technique does not read it: say who does
        assert str(readers) in text or all(t in text for t in readers), text


def test_readers_are_the_techniques_that_declare_or_reference_a_field():
    for field in KNOBS:
        assert registry.readers(field) == [t for t, cls in TECHNIQUES.items() if field in cls.read_fields()]


# ---- a new technique is one module and one line --------------------------------------------------------------
PLUGIN = '''
"""Registers the family `commlab_dummy` before lab.config is imported (pytest -p commlab_dummy_plugin)."""
import lab.registry

lab.registry.FAMILIES = lab.registry.FAMILIES + ("commlab_dummy",)
'''

FAMILY = '''
"""A throwaway family: what docs/adding_a_technique.md tells a contributor to write."""
import torch

from lab.knobs import Knob
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique


class DummyAverage(Technique):
    """Average the parameters every `dummy_period` local steps (Local SGD under another name)."""

    name = "dummy_avg"
    label = "Dummy average"
    reads = LOCAL_OPTIMIZER
    label_knobs = ("dummy_period",)
    knobs = {"dummy_period": Knob(4, "local steps between averages", low=1, high=1000, probe=2)}

    def round(self, ctx):
        h = min(self.config.dummy_period, self.config.steps - ctx.step)
        losses = torch.stack([ctx.local_step() for _ in range(h)])  # (h, n)
        ctx.cluster.set_rows(ctx.collective.all_reduce(ctx.cluster.params.detach(), op="mean", tag="params")[0])
        return RoundResult(ctx.collective.mean_metric(losses.mean(0)))


class DummySilent(DummyAverage):
    """Declares a knob it never reads: the contract tests must catch it."""

    name = "dummy_silent"
    label = "Dummy silent"
    knobs = {"dummy_ignored": Knob(1.0, "read by nothing", low=0.0, high=10.0)}


TECHNIQUES = (DummyAverage, DummySilent)
'''

CHECKS = '''
import contextlib, io
import commlab_dummy_plugin  # noqa: F401
from lab import cli
from lab.config import ExperimentConfig, reads
from lab.experiment import run

out = io.StringIO()
with contextlib.redirect_stdout(out):
    cli.main(["techniques", "dummy_avg"])
assert "--dummy-period" in out.getvalue(), out.getvalue()
assert "--dummy-period" in cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
r = run(ExperimentConfig(technique="dummy_avg", num_workers=4, steps=4, dummy_period=2), save=False, progress=False)
assert r.status == "finished" and len(r.ledger) == 2, (r.status, r.ledger)
try:
    ExperimentConfig(technique="ddp", dummy_period=2)
except ValueError as e:
    assert "dummy_period" in str(e) and "dummy_avg" in str(e), e
else:
    raise AssertionError("ddp accepted dummy_period")
from widgets.technique_knobs import TechniqueKnobs
panel = TechniqueKnobs(ExperimentConfig(technique="dummy_avg"))
assert "dummy_period" in panel.fields_for("dummy_avg"), panel.fields_for("dummy_avg")
assert "dummy_period" not in panel.fields_for("ddp")
print("checks ok")
'''


@pytest.mark.slow
def test_a_new_technique_is_one_module_and_one_line_and_the_contracts_see_it(tmp_path):
    """A family package with two techniques, registered by one line (here a plugin appends it to FAMILIES,
    as a contributor adds a class to an existing family's TECHNIQUES): the CLI, validation and widgets show
    its knob, the contract tests run it and pass, and they fail its silent knob."""
    (tmp_path / "commlab_dummy").mkdir()
    (tmp_path / "commlab_dummy" / "__init__.py").write_text(textwrap.dedent(FAMILY))
    (tmp_path / "commlab_dummy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "OMP_NUM_THREADS": "1",
           "COMMLAB_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "checks ok" in done.stdout, done.stdout + done.stderr

    def contracts(select: str):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "commlab_dummy_plugin", "-p",
                               "no:cacheprovider", "tests/test_contracts.py", "-k", select, "-rA"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    good = contracts("dummy_avg")
    assert good.returncode == 0, good.stdout[-4000:] + good.stderr[-2000:]
    for test in ("test_every_technique_runs_its_tiny_config[dummy_avg]", "test_topk_compresses_or_is_refused"
                 "[dummy_avg]", "test_every_knob_changes_the_bytes_or_the_metrics[dummy_avg-dummy_period]"):
        assert f"PASSED tests/test_contracts.py::{test}" in good.stdout, good.stdout[-4000:]
    bad = contracts("dummy_silent and dummy_ignored")
    assert bad.returncode == 1, bad.stdout[-4000:]
    assert "silent knob: dummy_silent ran identically with dummy_ignored" in bad.stdout, bad.stdout[-4000:]
