"""bench/compress_throughput.py prints its tables: throughput beside a copy, payload beside traffic ratios, and
issue 9's targets (small sizes here)."""
import subprocess
import sys
from pathlib import Path

from lab.compress import COMPRESSORS

REPO = Path(__file__).resolve().parents[1]


def test_compress_bench_prints_throughput_payload_and_traffic_ratios_and_the_targets():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "compress_throughput.py"), "--numel", "200000",
                          "--repeats", "1", "--workers", "8"], capture_output=True, text=True, timeout=900,
                         check=True).stdout
    lines = out.splitlines()
    assert lines[2].startswith("copy (clone)")
    names = set(COMPRESSORS) - {"none", "3sfc"}
    end = lines.index("")
    rows = {line.split()[0]: line.split() for line in lines[3:end]}
    assert set(rows) == names
    for name, cells in rows.items():
        gbs, vs_copy = float(cells[-2]), float(cells[-1])
        assert gbs > 0 and vs_copy > 0, name
        assert 0 < float(cells[-4]) <= 0.51, name  # the payload ratio at --ratio 0.01 (fp16/bf16: 0.5)

    start = next(i for i, line in enumerate(lines) if line.startswith("payload and traffic ratios"))
    ratio_rows = [line.split() for line in lines[start + 2:] if line and line.split()[0] in names]
    by_name = {cells[0]: cells for cells in ratio_rows if cells[1] == "8"}
    assert set(by_name) == names
    for name, cells in by_name.items():
        payload, traffic, before = (float(x) for x in cells[-3:])
        assert traffic <= before + 1e-9, name  # two-phase never sends more than the all-gather did
    assert float(by_name["int8"][-2]) <= 0.30 and float(by_name["int8"][-1]) > 1.0  # 1.02x before, at P = 8
    assert float(by_name["topk"][-2]) <= 0.12

    targets = out[out.index("issue 9 targets"):].splitlines()[2:]
    assert len(targets) == 3
    for line in targets:
        ratio, goal = (float(x) for x in line.split()[-2:])
        assert ratio <= goal, line
