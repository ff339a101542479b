"""How fast the analytic views follow a knob, in the kernel (headless): change -> new chart spec.

No kernel and no browser: each view is built in this process, a knob's `.value` is set `--repeats` times
(alternating between two values), and the time from setting it to the view's new chart spec (the vega-lite dict
the browser would receive) is measured. Views:

- `widgets.Lab` (the dashboard, when this checkout has it): its four knobs (sync period H, compression ratio,
  sharding degree S, topology), without the debounce (`Lab.flush()` redraws at once; the timer adds
  `debounce_s`);
- `widgets.sharding.ShardingExplorer`: ZeRO stage, sharding degree, micro-batch (memory and bytes from
  `lab.sharding`), redrawn in the observer;
- `widgets.topology_view.TopologyView`: topology preset and worker count (the drawing), in the observer.

Printed: median and worst milliseconds per knob and their ratio to the 200 ms budget (issues 11 and 12), with
the load average (the machine may be shared); written to bench/results/widget_latency.json. The browser adds
the comm round trip and Vega's render: tests/test_lab_browser.py measures that end to end.

    python bench/widget_latency.py [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lab  # noqa: F401  (one intra-op thread, as the lab chooses)

BUDGET_S = 0.2
OUT = Path(__file__).resolve().parent / "results" / "widget_latency.json"
#: view -> knob -> the two values it alternates between
MOVES = {
    "Lab": {"sync_period": (32, 8), "compression_ratio": (0.01, 0.1), "sharding_degree": (2, 4),
            "topology": ("nvlink_node", "multinode_2x4")},
    "ShardingExplorer": {"stage": (1, 3), "degree": (8, 32), "micro_batch": (4, 1)},
    "TopologyView": {"picker": ("leaf_spine", "multinode_4x8"), "workers": (16, 32)},
}


def views() -> dict:
    """view name -> (build() -> view, control(view, knob) -> widget, redraw(view), spec(view) -> dict)."""
    import widgets
    from widgets.sharding import ShardingExplorer
    from widgets.topology_view import TopologyView

    out = {}
    if hasattr(widgets, "Lab"):
        out["Lab"] = (lambda: widgets.Lab(runs_dir=tempfile.mkdtemp(prefix="commlab-bench-"), load_runs=False),
                      lambda v, k: v.knobs[k], lambda v: v.flush(), lambda v: v.analytic_chart.spec)
    out["ShardingExplorer"] = (lambda: ShardingExplorer(model="llama2-7b", topology="multinode_4x8"),
                               getattr, lambda v: None, lambda v: v.memory_view.widget.spec)
    out["TopologyView"] = (lambda: TopologyView("multinode_4x8", 32), getattr, lambda v: None,
                           lambda v: v.chart.widget.spec)
    return out


def measure(name: str, build, control, redraw, spec, repeats: int) -> dict:
    t = time.perf_counter()
    view = build()
    built = time.perf_counter() - t
    out = {"built_s": built, "knobs": {}}
    for knob, values in MOVES[name].items():
        times = []
        for i in range(repeats):
            before = spec(view)
            t = time.perf_counter()
            control(view, knob).value = values[i % 2]
            redraw(view)
            times.append(time.perf_counter() - t)
            assert spec(view) is not before, (name, knob)
        out["knobs"][knob] = {"median_s": statistics.median(times), "worst_s": max(times), "times_s": times}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the JSON ('-': nowhere)")
    args = ap.parse_args(argv)
    load = [os.getloadavg()[0]]
    found = views()
    if "Lab" not in found:
        print("widgets.Lab is not in this checkout: measuring the other views")
    results = {}
    print(f"{'view':<18}{'knob':<20}{'median ms':>10}{'worst ms':>10}{'median/budget':>15}")
    for name, (build, control, redraw, spec) in found.items():
        results[name] = r = measure(name, build, control, redraw, spec, args.repeats)
        for knob, k in r["knobs"].items():
            print(f"{name:<18}{knob:<20}{1000 * k['median_s']:>10.1f}{1000 * k['worst_s']:>10.1f}"
                  f"{k['median_s'] / BUDGET_S:>15.2f}")
    load.append(os.getloadavg()[0])
    medians = [k["median_s"] for r in results.values() for k in r["knobs"].values()]
    verdict = "within" if max(medians) < BUDGET_S else "OVER"
    print(f"every knob's median {verdict} the {BUDGET_S * 1e3:.0f} ms budget (slowest {max(medians) * 1e3:.1f} ms); "
          f"cores {os.cpu_count()}, load average {load[0]:.1f} -> {load[1]:.1f}")
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"budget_s": BUDGET_S, "cores": os.cpu_count(), "load_average": load,
                                        "repeats": args.repeats, "views": results}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
