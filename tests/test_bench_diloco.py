"""bench/diloco_vs_ddp.py runs end to end, some DiLoCo variant reaches DDP's loss, and it does so with fewer bytes.

Tiny settings (12 DDP steps on 2 workers, others up to 1.5× the steps); no timing claims. Same config and seed give
the same rows, so which variants reach the target is deterministic: at these settings DiLoCo H=50 and H=100 (one
round of 18 inner AdamW steps) reach it with 1/12 of DDP's bytes. The check fails when no row reaches the target.
"""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "diloco_vs_ddp.py"
LABELS = ("DiLoCo", "Streaming")


def reached(out: str) -> dict[str, tuple[int, float, float]]:
    """{technique: (steps, bytes / DDP, sim time / DDP)} of the rows that reached DDP's loss; AssertionError when
    the output has no rows or none of them reached it."""
    rows = [line for line in out.splitlines() if line.startswith(LABELS)]
    assert rows, f"no result rows in the bench output:\n{out}"
    hits = {}
    for line in rows:
        if "not reached" in line:
            continue
        cols = line.split()
        label = " ".join(cols[:-4])
        hits[label] = (int(cols[-4]), float(cols[-3]), float(cols[-2]))
    assert hits, f"no technique reached DDP's loss:\n{out}"
    return hits


@pytest.mark.slow
def test_bench_prints_bytes_and_time_ratios_against_ddp(capsys):
    spec = importlib.util.spec_from_file_location("diloco_vs_ddp", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--steps", "12", "--workers", "2", "--max-factor", "1.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DDP: 12 steps on 2 workers reach test loss")
    assert len([line for line in out.splitlines() if line.startswith(LABELS)]) == 5
    hits = reached(out)
    assert any(label.startswith("DiLoCo") for label in hits)
    for label, (steps, bytes_ratio, time_ratio) in hits.items():
        assert 0 < steps <= 18, label  # within the budget of 1.5 × 12 steps
        assert 0 < bytes_ratio < 1, label  # fewer bytes than DDP to the same loss
        assert time_ratio > 0, label


def test_the_check_fails_when_no_row_reaches_the_target():
    out = ("DDP: 12 steps on 2 workers reach test loss 3.0014 at step 12: 10,722,240 bytes, 0.763 s simulated\n\n"
           "technique                                 steps  bytes / DDP  sim time / DDP  wall s\n"
           "DiLoCo H=10                                   -  not reached   (best 3.0324)     2.4\n"
           "Streaming DiLoCo H=50 P=5 tau=1               -  not reached   (best 3.9976)     2.1\n")
    with pytest.raises(AssertionError, match="no technique reached"):
        reached(out)
    with pytest.raises(AssertionError, match="no result rows"):
        reached(out.splitlines()[0])
    ok = out + "DiLoCo H=50                                  18      0.08333         0.08334     1.5\n"
    assert reached(ok) == {"DiLoCo H=50": (18, 0.08333, 0.08334)}
