"""10_papers under papermill with a small budget: a row for every registered technique, each with its claim and
what the lab measured, and a verdict for every claim declared checkable at lab scale."""
import pytest
from test_notebooks import execute  # noqa: F401  (the papermill fixture)

from lab import fidelity, registry

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_papers_notebook_lists_every_technique_with_its_claim_and_verdict(execute):  # noqa: F811
    m = execute("10_papers", budget=0.5)
    rows = m["techniques"]
    assert list(rows) == list(registry.techniques())  # every technique in lab/, in registry order
    for name, row in rows.items():
        for field in ("paper", "claim", "measured", "evidence", "left"):
            assert row[field].strip(), f"{name}: empty {field}"
        assert row["holds"] in (True, False, None), name
    for name, c in fidelity.claims().items():
        if c.checkable:
            assert rows[name]["holds"] is not None, f"{name}: declared checkable, but no verdict"
    verdicts = m["verdicts"]
    assert sum(len(v) for v in verdicts.values()) == len(rows)
    # the exactness and byte-accounting claims hold at any budget
    for name in ("local_sgd", "zero", "moe_ep", "ppmoe", "sequence_parallel"):
        assert rows[name]["holds"] is True, (name, rows[name]["measured"])
