"""lab.fidelity: every registered technique has a declared claim, a technique without one gets a row that says
so, bad budgets are refused, and a small check runs end to end into a table with no raw floats."""
import math
import os
import re

import pytest

from lab import fidelity, registry
from lab.fidelity.claim import Bench, times
from lab.fidelity.report import styled, takeaway, to_metrics
from lab.technique import Technique


def test_every_registered_technique_has_a_declared_claim():
    assert fidelity.missing() == [], "add a claim for these techniques in lab/fidelity/"
    declared = fidelity.claims()
    assert list(declared) == list(registry.techniques())  # one row per technique, in registry order
    for name, c in declared.items():
        assert c.technique == name
        for field in ("paper", "claim", "evidence", "left"):
            assert getattr(c, field).strip(), f"{name}: empty {field}"
        assert c.claim.startswith("["), f"{name}: the claim names where it was read ([ABSTRACT], [RECON], ...)"
    assert set(fidelity.CLAIMS) <= set(registry.techniques()), "a claim for a technique that is not registered"


def test_a_technique_without_a_claim_is_listed_as_missing(monkeypatch):
    class Unclaimed(Technique):
        name, label = "unclaimed", "Unclaimed"

    reg = {**registry.techniques(), "unclaimed": Unclaimed}
    monkeypatch.setattr(registry, "techniques", lambda: reg)
    assert fidelity.missing() == ["unclaimed"]
    row = fidelity.measure(1.0, techniques=["unclaimed"]).iloc[0]
    assert row.claim == "" and row.holds is None and "no claim declared" in row.measured


@pytest.mark.parametrize("budget", [0, -1, 0.01, 21, math.nan, math.inf, True, "1"])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(ValueError, match="budget="):
        Bench(budget)


def test_unknown_techniques_are_refused():
    with pytest.raises(ValueError, match="techniques=.*'nope'"):
        fidelity.measure(1.0, techniques=["nope"])


def test_a_check_runs_its_baseline_once_and_reports_text_and_a_verdict(monkeypatch):
    monkeypatch.setenv("COMMLAB_RUNS_DIR", "runs-of-the-user")
    table = fidelity.measure(0.34, techniques=["local_sgd", "diloco"])  # 32 steps on 4 workers
    assert table.attrs["runs"] == 3  # DDP once for both rows, then Local SGD and DiLoCo
    assert os.environ["COMMLAB_RUNS_DIR"] == "runs-of-the-user"  # the temporary runs directory is gone again
    assert list(table.technique) == ["local_sgd", "diloco"]
    assert table.holds.map(lambda h: isinstance(h, bool)).all()
    assert table.measured.str.contains("1/16 of DDP's").all()  # one all-reduce per 16 steps
    html = styled(table).to_html()
    assert "Local SGD" in html and ("✓ holds" in html or "✗" in html)
    assert not re.search(r"\d\.\d{5,}", html) and "seconds" not in html  # no raw floats: every number is text
    m = to_metrics(table)
    assert set(m) == {"local_sgd", "diloco"} and all(isinstance(v["holds"], bool) for v in m.values())
    assert "Of 2 techniques" in takeaway(table)


def test_factors_read_as_fractions_or_multiples():
    assert times(1, 16) == "1/16" and times(3, 2) == "1.50×" and times(1, 0) == "n/a"
