"""`RunsTable`: the runs of the persistent store (runs/ by default), compared.

One row per run: status, the knobs that differ between the runs shown (config-diff columns), final loss and
accuracy, bytes, simulated and wall time, and the loss relative to a pinned baseline. Runs are picked for the
charts in `.shown` (show/hide), overlaid, labelled by what differs between them (`diff_labels`); diverged runs
are marked. `.export_table(path)` writes the table as CSV or Parquet, `.export_rows(path)` every metrics row of the
shown runs (the charts carry at most 500 per run; "full data CSV/Parquet"), `.export_run(run_id, path)` one run's
metrics, `export_chart(chart, path)` a chart as PNG or SVG (vl-convert).

`parse_grid` reads a sweep row's typed values; `sweep_configs(base, grid)` turns a sweep (one knob's values, or a
small grid of several knobs' values) into the configs to run, all validated before the first starts, at most
`MAX_SWEEP`.
"""
from __future__ import annotations

import dataclasses
import html
import itertools
import math
from pathlib import Path

import ipywidgets as w
import pandas as pd

from lab.runs import Run, default_runs_dir
from widgets.lab_charts import SHORT, diff_fields, diff_labels, downsample, si

#: the newest runs loaded from the store
MAX_STORED = 40
#: the most runs one sweep starts (a grid's size is the product of its knobs' numbers of values)
MAX_SWEEP = 16


def sweep_configs(base, grid: dict, *, limit: int = MAX_SWEEP) -> list:
    """`base` (an ExperimentConfig) at every point of `grid` = {field: values} (the product; the first field
    varies slowest), all validated before any is returned. ValueError naming the field, the value and what is
    allowed for an unknown field, empty values, a grid over `limit` runs or a point that is not a valid config."""
    from lab.config import KNOBS

    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid={grid!r} is invalid: expected {{field: values}} with at least one field")
    grid = dict(grid)
    for field, values in grid.items():
        if field not in KNOBS:
            raise ValueError(f"field={field!r} is unknown; allowed: {sorted(KNOBS)}")
        listed = [] if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__") else list(values)
        if not listed:
            raise ValueError(f"values={values!r} of field={field!r} are invalid: expected a non-empty list of "
                             f"values, each {KNOBS[field].allowed()}")
        grid[field] = listed
    size = math.prod(len(v) for v in grid.values())
    if size > limit:
        shape = " × ".join(f"{len(v)} {f}" for f, v in grid.items())
        raise ValueError(f"the sweep has {size} runs ({shape}); allowed: at most {limit} runs: give fewer values")
    configs = []
    for point in itertools.product(*grid.values()):
        changes = dict(zip(grid, point))
        try:
            configs.append(dataclasses.replace(base, **changes))
        except ValueError as e:
            where = ", ".join(f"{f}={v!r}" for f, v in changes.items())
            raise ValueError(f"sweep point {where}: {e}") from None
    return configs


def parse_grid(rows) -> dict:
    """{field: values} from (field, 'v1, v2, ...') pairs typed in a sweep row, each value as its field's type;
    a pair with no field ('') is skipped. ValueError naming the field for a value or a field given twice."""
    from lab.config import KNOBS

    grid = {}
    for field, text in rows:
        if not field:
            continue
        if field in grid:
            raise ValueError(f"sweep knob {field!r} is given twice; expected each knob once (or '—')")
        knob, grid[field] = KNOBS[field], []
        for v in filter(None, (v.strip() for v in text.split(","))):
            try:
                grid[field].append(knob.type(v))
            except ValueError:
                raise ValueError(f"{field}={v!r} is invalid: expected {knob.allowed()}") from None
    return grid


def write_frame(df: pd.DataFrame, path) -> Path:
    """Write rows as CSV or Parquet (by the suffix of `path`), creating its directory."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"path={str(path)!r} is invalid: expected a .csv or .parquet file")
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False) if path.suffix == ".csv" else df.astype(
        {c: str for c in df.columns if df[c].dtype == object}).to_parquet(path, index=False)
    return path


def export_chart(chart, path) -> Path:
    """Write an altair chart as PNG or SVG (by the suffix of `path`), offline through vl-convert."""
    path = Path(path)
    if path.suffix not in (".png", ".svg"):
        raise ValueError(f"path={str(path)!r} is invalid: expected a .png or .svg file")
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), scale_factor=2) if path.suffix == ".png" else chart.save(str(path))
    return path


class RunsTable(w.VBox):
    """Runs from `root` (and runs added while the Lab is open), a formatted comparison table and pickers."""

    def __init__(self, root=None, *, load: bool = True):
        self.root = Path(root) if root is not None else default_runs_dir()
        self.runs: dict[str, Run] = {}
        self.shown = w.SelectMultiple(description="show runs", rows=5, layout=w.Layout(width="38em"),
                                      style={"description_width": "7em"})
        self.baseline = w.Dropdown(description="baseline", options=[("none", "")], value="",
                                   layout=w.Layout(width="24em"), style={"description_width": "5em"})
        self.html = w.HTML()
        self.refresh_button = w.Button(description="Reload", icon="refresh", tooltip=f"reload runs from {self.root}")
        self.csv_button = w.Button(description="table CSV", icon="download", tooltip="export the table as CSV")
        self.parquet_button = w.Button(description="table Parquet", icon="download",
                                       tooltip="export the table as Parquet")
        rows = "every metrics row of the shown runs (the charts carry at most 500 per run)"
        self.rows_csv_button = w.Button(description="full data CSV", icon="download", tooltip=rows)
        self.rows_parquet_button = w.Button(description="full data Parquet", icon="download", tooltip=rows)
        self.exported = w.HTML()
        self.refresh_button.on_click(lambda _: self.load())
        for what, kind, b in (("table", "csv", self.csv_button), ("table", "parquet", self.parquet_button),
                              ("rows", "csv", self.rows_csv_button), ("rows", "parquet", self.rows_parquet_button)):
            b.on_click(lambda _, what=what, kind=kind: self._export(what, kind))
        self.shown.observe(lambda _: self.render(), names="value")
        self.baseline.observe(lambda _: self.render(), names="value")
        buttons = [w.HBox([self.refresh_button, self.csv_button, self.parquet_button]),
                   w.HBox([self.rows_csv_button, self.rows_parquet_button])]
        super().__init__([w.HBox([self.shown, w.VBox([self.baseline, *buttons, self.exported])]), self.html])
        if load:
            self.load()

    # ---- store ------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the newest `MAX_STORED` runs under the root (unreadable directories are skipped)."""
        dirs = sorted(self.root.glob("*/status.json"))[-MAX_STORED:] if self.root.exists() else []
        for d in dirs:
            if d.parent.name not in self.runs:
                try:
                    self.runs[d.parent.name] = Run.load(d.parent)
                except (ValueError, OSError):
                    continue
        self._sync_options()

    def add(self, run: Run, *, show: bool = True) -> str:
        """Add a finished run (saved or not); returns its id; shown on the charts unless show=False."""
        key = run.path.name if run.path is not None else f"mem-{len(self.runs)}"
        self.runs[key] = run
        self._sync_options(show=[key] if show else [])
        return key

    def _sync_options(self, show=()) -> None:
        keep = [k for k in self.shown.value if k in self.runs] + list(show)
        options = [(f"{k[:40]} · {r.status}", k) for k, r in self.runs.items()]
        self.shown.options = options
        self.shown.value = tuple(dict.fromkeys(keep))
        base = self.baseline.value
        self.baseline.options = [("none", "")] + options
        self.baseline.value = base if base in self.runs else ""
        self.render()

    # ---- views ------------------------------------------------------------------------------------------
    def shown_runs(self) -> dict[str, Run]:
        return {k: self.runs[k] for k in self.shown.value}

    def labels(self) -> dict[str, str]:
        """Run id -> label from what differs between the runs shown (diverged runs marked)."""
        runs = self.shown_runs()
        labels = diff_labels([r.config for r in runs.values()])
        out, seen = {}, {}
        for (k, r), lab in zip(runs.items(), labels):
            seen[lab] = seen.get(lab, 0) + 1
            lab = lab if seen[lab] == 1 else f"{lab} #{seen[lab]}"
            out[k] = lab + (" (diverged)" if r.status == "diverged" else "")
        return out

    def table(self, runs: dict[str, Run] | None = None) -> pd.DataFrame:
        """One row per run (default: the shown ones): diff columns, final metrics, wall and simulated time."""
        runs = self.shown_runs() if runs is None else runs
        fields = diff_fields([r.config for r in runs.values()])
        rows = []
        base = self.runs.get(self.baseline.value)
        base_loss = base.summary()["final_loss"] if base is not None else None
        for k, r in runs.items():
            s = r.summary()
            row = {"run": k, "status": r.status, **{f: getattr(r.config, f) for f in fields},
                   "final loss": s["final_loss"], "accuracy": s["eval_accuracy"], "steps": s["steps"],
                   "bytes": float(s["bytes"]), "simulated s": s["sim_seconds"], "wall s": s["wall_seconds"]}
            if base_loss is not None:
                row["loss − baseline"] = s["final_loss"] - base_loss
            rows.append(row)
        return pd.DataFrame(rows)

    def frame(self, *, max_points: int | None = 500) -> pd.DataFrame:
        """The shown runs' metrics rows with labels (downsampled to `max_points` per run; None: all rows)."""
        labels = self.labels()
        parts = [r.metrics.assign(label=labels[k], diverged=r.status == "diverged")
                 for k, r in self.shown_runs().items() if len(r.metrics)]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        return downsample(df, max_points) if max_points else df

    def render(self) -> None:
        """Redraw the formatted table."""
        t = self.table()
        if t.empty:
            self.html.value = f"<i>no runs shown ({len(self.runs)} in {html.escape(str(self.root))})</i>"
            return
        fmt = {"bytes": lambda v: si(v, "B"), "simulated s": lambda v: si(v, "s"), "wall s": lambda v: si(v, "s"),
               "final loss": "{:.4f}".format, "accuracy": "{:.1%}".format, "loss − baseline": "{:+.4f}".format}
        head = "".join(f"<th style='padding:2px 8px'>{html.escape(SHORT.get(c) or c)}</th>" for c in t.columns)
        body = []
        for _, row in t.iterrows():
            style = " style='color:#b00020'" if row["status"] == "diverged" else ""
            cells = []
            for c in t.columns:
                v = row[c]
                f = fmt.get(c)
                text = f(v) if f is not None and pd.notna(v) else ("—" if isinstance(v, float) and pd.isna(v)
                                                                  else str(v)[:28])
                align = "right" if isinstance(v, (int, float)) else "left"
                cells.append(f"<td style='padding:2px 8px;text-align:{align}'>{html.escape(text)}</td>")
            body.append(f"<tr{style}>{''.join(cells)}</tr>")
        self.html.value = (f"<table class='commlab-runs' style='border-collapse:collapse;font-size:0.9em'>"
                           f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    # ---- export -----------------------------------------------------------------------------------------
    def export_table(self, path) -> Path:
        """Write the table of shown runs as CSV or Parquet (by the suffix of `path`)."""
        return write_frame(self.table(), path)

    def export_rows(self, path) -> Path:
        """Write every metrics row of the shown runs (not the charts' at most 500 per run), labelled, as CSV or
        Parquet (by the suffix of `path`)."""
        return write_frame(self.frame(max_points=None), path)

    def export_run(self, run_id: str, path) -> Path:
        """Write one run's full metrics rows as CSV or Parquet."""
        if run_id not in self.runs:
            raise ValueError(f"run_id={run_id!r} is unknown; known: {list(self.runs)}")
        return write_frame(self.runs[run_id].metrics, path)

    def _export(self, what: str, kind: str) -> None:
        try:
            write = self.export_table if what == "table" else self.export_rows
            path = write(self.root / "exports" / f"runs_{what}.{kind}")
            self.exported.value = f"<small>wrote {html.escape(str(path))}</small>"
        except (ValueError, OSError) as e:
            self.exported.value = f"<small style='color:#b00020'>{html.escape(str(e))}</small>"
