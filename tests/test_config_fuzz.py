"""Fuzzing the config: every field of every technique against adversarial values either raises a ValueError that
names the field, or gives a run that ends finished, stopped or diverged — never another exception, never a silent
NaN. `COMMLAB_FUZZ_EXAMPLES=1000` runs the long version (the suite runs a short one)."""
import math
import os
import threading

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from test_contracts import contract_settings

from lab.config import ALWAYS, KNOBS, ExperimentConfig, config_for, reads
from lab.experiment import run
from lab.registry import techniques

EXAMPLES = int(os.environ.get("COMMLAB_FUZZ_EXAMPLES", "60"))
#: values no field accepts, or that test a bound
ADVERSARIAL = [None, "x", "", [], {}, True, False, -1, 0, 1, 2, 3, 7, -1.5, 0.0, 1e-12, 0.5, 1.0, 1.5, 10**400,
               1e308, -1e308, 2**31, 2**63, 20_000_000_000_000, float("nan"), float("inf"), float("-inf")]
#: the budget of a fuzzed run: small model, few workers, stopped after two rounds
SMALL = {"num_workers": 4, "steps": 4, "rounds": 2, "eval_every": 2, "batch_size": 8}


def values_for(name):
    knob = KNOBS[name]
    extra = list(knob.choices or ()) + [v for v in (knob.low, knob.high) if v is not None]
    if knob.choices is None and knob.type in (int, float):
        extra += [knob.low - 1, knob.high + 1, knob.high * 10]
    return st.sampled_from(ADVERSARIAL + extra)


@st.composite
def fuzzed(draw):
    technique = draw(st.sampled_from(sorted(techniques())))
    field = draw(st.sampled_from(sorted(reads(technique))))
    value = draw(values_for(field))
    return technique, field, value


def run_briefly(cfg):
    """At most two rounds (the stop event also ends a long round within one local step)."""
    stop = threading.Event()
    rows = []

    def after(row):
        rows.append(row)
        if len(rows) >= 2:
            stop.set()

    return run(cfg, save=False, progress=False, callback=after, stop=stop)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzzed())
def test_a_fuzzed_field_is_refused_by_name_or_runs_honestly(case):
    technique, field, value = case
    small = {**SMALL, **contract_settings(technique)}  # what the technique needs to run small (test_contracts)
    base = config_for(technique, **small).changed()  # the fuzzed field overrides its base value below
    settings_ = {**base, "technique": technique, field: value}
    try:
        cfg = ExperimentConfig(**settings_)
    except ValueError as e:
        event("refused at construction")
        named = f"{field}=" in str(e) or "technique=" in str(e) or "is not read" in str(e) or "=" in str(e)
        assert named, f"{technique}.{field}={value!r}: {e}"
        return
    # constructed: the value was allowed; it must not hide a NaN or an unhandled error
    if isinstance(value, float) and not math.isfinite(value):
        pytest.fail(f"{technique}: {field}={value!r} was accepted")
    try:
        r = run_briefly(cfg)
    except ValueError as e:  # refused while setting up (e.g. a batch larger than a shard): must say what
        assert "=" in str(e), f"{technique}.{field}={value!r}: {e}"
        return
    event(f"ran: {r.status}")
    assert r.status in ("finished", "stopped", "diverged"), (technique, field, value, r.status, r.error)
    if r.status != "diverged" and len(r.metrics):
        losses = r.metrics.loss.dropna()  # a federated round with no participant has no loss (NaN by design)
        assert losses.map(math.isfinite).all(), (technique, field, value)


def test_every_numeric_knob_has_finite_bounds():
    for name, knob in KNOBS.items():
        if knob.type in (int, float) and knob.choices is None:
            assert math.isfinite(knob.low) and math.isfinite(knob.high), name


def test_always_read_fields_are_common_knobs():
    assert set(ALWAYS) <= set(KNOBS)
