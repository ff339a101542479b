"""`RunsTable`: the runs of the persistent store (runs/ by default), compared.

One row per run: status, the knobs that differ between the runs shown (config-diff columns), final loss and
accuracy, bytes, simulated and wall time, and the loss relative to a pinned baseline. Runs are picked for the
charts in `.shown` (show/hide), overlaid, labelled by what differs between them (`diff_labels`); diverged runs
are marked. `.export_table(path)` writes the table as CSV or Parquet, `.export_run(run_id, path)` one run's
metrics, `export_chart(chart, path)` a chart as PNG or SVG (vl-convert).
"""
from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as w
import pandas as pd

from lab.runs import Run, default_runs_dir
from widgets.lab_charts import SHORT, diff_fields, diff_labels, downsample, si

#: the newest runs loaded from the store
MAX_STORED = 40


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
        self.shown = w.SelectMultiple(description="show runs", rows=5, layout=w.Layout(width="32em"),
                                      style={"description_width": "7em"})
        self.baseline = w.Dropdown(description="baseline", options=[("none", "")], value="",
                                   layout=w.Layout(width="24em"), style={"description_width": "5em"})
        self.html = w.HTML()
        self.refresh_button = w.Button(description="Reload", icon="refresh", tooltip=f"reload runs from {self.root}")
        self.csv_button = w.Button(description="CSV", icon="download", tooltip="export the table as CSV")
        self.parquet_button = w.Button(description="Parquet", icon="download", tooltip="export the table as Parquet")
        self.exported = w.HTML()
        self.refresh_button.on_click(lambda _: self.load())
        self.csv_button.on_click(lambda _: self._export("csv"))
        self.parquet_button.on_click(lambda _: self._export("parquet"))
        self.shown.observe(lambda _: self.render(), names="value")
        self.baseline.observe(lambda _: self.render(), names="value")
        super().__init__([w.HBox([self.shown, w.VBox([self.baseline, w.HBox(
            [self.refresh_button, self.csv_button, self.parquet_button]), self.exported])]), self.html])
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
        path = Path(path)
        if path.suffix not in (".csv", ".parquet"):
            raise ValueError(f"path={str(path)!r} is invalid: expected a .csv or .parquet file")
        path.parent.mkdir(parents=True, exist_ok=True)
        t = self.table()
        t.to_csv(path, index=False) if path.suffix == ".csv" else t.astype(
            {c: str for c in t.columns if t[c].dtype == object}).to_parquet(path, index=False)
        return path

    def export_run(self, run_id: str, path) -> Path:
        """Write one run's full metrics rows as CSV or Parquet."""
        if run_id not in self.runs:
            raise ValueError(f"run_id={run_id!r} is unknown; known: {list(self.runs)}")
        path = Path(path)
        if path.suffix not in (".csv", ".parquet"):
            raise ValueError(f"path={str(path)!r} is invalid: expected a .csv or .parquet file")
        path.parent.mkdir(parents=True, exist_ok=True)
        m = self.runs[run_id].metrics
        m.to_csv(path, index=False) if path.suffix == ".csv" else m.to_parquet(path, index=False)
        return path

    def _export(self, kind: str) -> None:
        try:
            path = self.export_table(self.root / "exports" / f"runs_table.{kind}")
            self.exported.value = f"<small>wrote {html.escape(str(path))}</small>"
        except (ValueError, OSError) as e:
            self.exported.value = f"<small style='color:#b00020'>{html.escape(str(e))}</small>"
