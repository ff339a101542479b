"""bench/diloco_vs_ddp.py runs end to end and prints its ratios against DDP (tiny settings; no timing claims)."""
import importlib.util
from pathlib import Path


BENCH = Path(__file__).resolve().parents[1] / "bench" / "diloco_vs_ddp.py"


def test_bench_prints_bytes_and_time_ratios_against_ddp(capsys):
    spec = importlib.util.spec_from_file_location("diloco_vs_ddp", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--steps", "12", "--workers", "2", "--max-factor", "1.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DDP: 12 steps on 2 workers reach test loss")
    rows = [line for line in out.splitlines() if line.startswith(("DiLoCo", "Streaming"))]
    assert len(rows) == 5
    for line in rows:
        cols = line.split()
        assert "not reached" in line or 0 < float(cols[-3]) < 1  # bytes / DDP: fewer bytes than DDP
