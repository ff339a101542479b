"""Papermill of every notebook with its default parameters: with the lab's thread choice (no thread setting in
the notebook: `import lab` sets it, lab/threads.py) against one torch thread set by hand in a first cell.

Each notebook runs `--reps` times each way (default 2), the two ways alternating and the first way alternating
from notebook to notebook (the first run after a change warms the page cache), on the `commlab` kernel from a
temporary working directory (as the tests run them); the fastest run of each way counts. Printed and written to
bench/results/notebook_threads.json: seconds per notebook, the ratio lab / hand, and the load average.
Issue 11 asks that the lab's choice take no more than the hand-set one; issue 12 that every notebook finish in
60 s on 2 cores.

Usage: python bench/notebook_threads.py [NAME ...]   (default: every notebook in notebooks/)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "notebook_threads.json"
BY_HAND = "import torch\ntorch.set_num_threads(1)"


def seconds(name: str, *, by_hand: bool) -> float:
    """Wall seconds of papermill on notebooks/<name>.ipynb with default parameters."""
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    if by_hand:
        nb.cells.insert(0, nbformat.v4.new_code_cell(BY_HAND))
    with tempfile.TemporaryDirectory() as d:
        source = Path(d) / "in.ipynb"
        nbformat.write(nb, source)
        t0 = time.perf_counter()
        papermill.execute_notebook(str(source), str(Path(d) / "out.ipynb"), kernel_name="commlab", cwd=d,
                                   progress_bar=False)
        return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    ap.add_argument("--reps", type=int, default=2, help="runs of each way per notebook (the fastest counts)")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the JSON ('-': nowhere)")
    args = ap.parse_args(argv)
    names = args.names or sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
    print(f"{'notebook':<22} {'lab s':>7} {'hand s':>7} {'lab/hand':>8} {'load':>5}")
    rows = {}
    if args.reps < 1:
        raise SystemExit(f"--reps={args.reps} is invalid: expected an integer >= 1")
    for i, name in enumerate(names):
        times = {False: [], True: []}
        for rep in range(args.reps):
            for by_hand in ((False, True) if (i + rep) % 2 == 0 else (True, False)):
                times[by_hand].append(seconds(name, by_hand=by_hand))
        lab, hand = min(times[False]), min(times[True])
        rows[name] = {"lab_s": lab, "hand_s": hand, "ratio": lab / hand, "load": os.getloadavg()[0],
                      "lab_runs_s": times[False], "hand_runs_s": times[True]}
        print(f"{name:<22} {lab:>7.1f} {hand:>7.1f} {lab / hand:>8.2f} {rows[name]['load']:>5.1f}", flush=True)
    total_lab, total_hand = sum(r["lab_s"] for r in rows.values()), sum(r["hand_s"] for r in rows.values())
    slowest = max(rows, key=lambda n: rows[n]["lab_s"])
    print(f"all: lab {total_lab:.1f} s, hand {total_hand:.1f} s (ratio {total_lab / total_hand:.3f}); slowest "
          f"{slowest} {rows[slowest]['lab_s']:.1f} s (bound 60 s)")
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cores": os.cpu_count(), "notebooks": rows, "total_lab_s": total_lab,
                                        "total_hand_s": total_hand}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
