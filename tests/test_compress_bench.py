"""bench/compress_throughput.py prints its table: a copy baseline and one row per compressor (small vector here)."""
import subprocess
import sys
from pathlib import Path

from lab.compress import COMPRESSORS

REPO = Path(__file__).resolve().parents[1]


def test_compress_throughput_prints_a_row_per_compressor_beside_a_copy():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "compress_throughput.py"), "--numel", "200000",
                          "--repeats", "1"], capture_output=True, text=True, timeout=600, check=True).stdout
    lines = out.splitlines()
    assert lines[2].startswith("copy (clone)")
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) == set(COMPRESSORS) - {"none", "3sfc"}
    for name, cells in rows.items():
        gbs, vs_copy = float(cells[-2]), float(cells[-1])
        assert gbs > 0 and vs_copy > 0, name
        assert 0 < float(cells[-4]) <= 0.51, name  # the measured ratio at --ratio 0.01 (fp16/bf16: 0.5)
