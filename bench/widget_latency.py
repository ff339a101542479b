"""How fast the Lab's analytic views follow a knob, in the kernel (headless): change -> new chart spec.

For each of the four knobs of `widgets.Lab` (sync period H, compression ratio, sharding degree S, topology), a
value is set `--repeats` times (alternating between two values) and the time from setting `.value` to the
analytic chart's new spec is measured, without the debounce (`Lab.flush()` redraws at once). Printed: median and
worst milliseconds per knob and their ratio to the 200 ms budget of issue 12 (the browser adds the comm round trip
and Vega's render: tests/test_lab_browser.py measures that end to end).

    python bench/widget_latency.py [--repeats 10]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

BUDGET_S = 0.2
MOVES = {"sync_period": (32, 8), "compression_ratio": (0.01, 0.1), "sharding_degree": (2, 4),
         "topology": ("nvlink_node", "multinode_2x4")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    import widgets

    t = time.perf_counter()
    lab = widgets.Lab(runs_dir=tempfile.mkdtemp(prefix="commlab-bench-"), load_runs=False)
    print(f"Lab() built in {time.perf_counter() - t:.2f} s")
    print(f"{'knob':<20}{'median ms':>10}{'worst ms':>10}{'median/budget':>15}")
    for name, values in MOVES.items():
        times = []
        for i in range(args.repeats):
            before = lab.analytic_chart.spec
            t = time.perf_counter()
            lab.knobs[name].value = values[i % 2]
            lab.flush()
            times.append(time.perf_counter() - t)
            assert lab.analytic_chart.spec != before, name
        med = statistics.median(times)
        print(f"{name:<20}{1000 * med:>10.1f}{1000 * max(times):>10.1f}{med / BUDGET_S:>15.2f}")


if __name__ == "__main__":
    main()
