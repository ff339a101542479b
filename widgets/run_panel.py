"""`RunPanel`: knobs, Run / Stop buttons, a progress bar, a status line and live loss charts.

Run trains the knobs' config with `lab.experiment.run` in a background thread,
so the notebook stays responsive: every finished round arrives through
`run`'s callback, moves the progress bar, and (at most every `throttle_s`
seconds, and once at the end) redraws the charts. Stop sets the Event that
`run` checks between rounds; the run ends with status 'stopped' and keeps what
it had finished. Each run is one labelled line on the charts, so successive
runs overlay. Errors in the thread are shown in the status line and kept in
`.error`.
"""
from __future__ import annotations

import html
import time

import ipywidgets as w
import pandas as pd

from lab.experiment import ExperimentConfig, Run, run as lab_run
from lab.registry import technique as technique_class
from widgets.background import BackgroundRun
from widgets.charts import LiveChart, dashboard, run_label
from widgets.knobs import KnobPanel


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000


class RunPanel(BackgroundRun, w.VBox):
    """Train from the notebook: knobs, Run, Stop, Clear, progress, status and live charts.

    `knobs` is a KnobPanel, or an ExperimentConfig or dict of settings (or None) used as the base
    of a new one. Finished and stopped Runs collect in `.runs` (`.last_run` is
    the newest); `.frame()` is the table the charts show; `.wait(timeout)`
    blocks until the current run ends (for scripts, tests and papermill).
    Runs are not saved to disk unless `save=True` (then under `runs_dir`).
    """

    stop_message = "stopping after this round…"

    def __init__(self, knobs: KnobPanel | ExperimentConfig | dict | None = None, *, save: bool = False, runs_dir=None,
                 throttle_s: float = 0.25, build_chart=dashboard):
        self.knobs = knobs if isinstance(knobs, KnobPanel) else KnobPanel(knobs)
        self.save, self.runs_dir, self.throttle_s = save, runs_dir, throttle_s
        self.run_button = w.Button(description="Run", icon="play", button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.clear_button = w.Button(description="Clear", icon="trash", tooltip="remove all runs from the charts")
        self.progress = w.IntProgress(value=0, min=0, max=1, bar_style="info")
        self.status = w.HTML("ready")
        self.chart = LiveChart(build=build_chart)
        self.runs: list[Run] = []
        self.last_run: Run | None = None
        self.error: BaseException | None = None
        self._frames: list[pd.DataFrame] = []  # rows of the runs on the charts, one frame per run
        self._rows: list[dict] = []  # the current run's rows
        self._num_started = 0
        self._last_draw = 0.0
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        super().__init__([self.knobs, w.HBox([self.run_button, self.stop_button, self.clear_button, self.progress]),
                          self.status, self.chart.widget])

    def start(self, config: ExperimentConfig | None = None) -> bool:
        """Start training `config` (default: the knobs' config) in a background thread.

        Returns False, with the reason in the status line, if a run is already
        going or the knobs are invalid.
        """
        if self.running:
            self._set_status("a run is already going: Stop it or wait", error=True)
            return False
        config = self.knobs.config() if config is None else config
        if config is None:
            self._set_status(f"invalid knobs: {self.knobs.error}", error=True)
            return False
        self._num_started += 1
        label = f"#{self._num_started} {run_label(config)}"
        self.error, self._rows = None, []
        tech = technique_class(config.technique)
        budget = tech.budget
        self.progress.max, self.progress.value = tech.total(config), 0
        self.run_button.disabled, self.stop_button.disabled, self.clear_button.disabled = True, False, True
        self._set_status(f"{label}: running…")
        self._start(self._work, (config, label, budget), name="commlab-run")
        return True

    def clear(self) -> None:
        """Remove every run from the charts (`.runs` keeps them)."""
        if not self.running:
            self._frames = []
            self._draw()

    def frame(self) -> pd.DataFrame:
        """All rows on the charts: earlier runs plus the current one, with a `label` column."""
        frames = self._frames + ([pd.DataFrame(list(self._rows))] if self._rows else [])
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # ---- worker thread -------------------------------------------------------------------------------
    def _work(self, config: ExperimentConfig, label: str, budget: str) -> None:
        def on_row(row: dict) -> None:
            self._rows.append({**row, "label": label})
            self.progress.value = min(int(row["round" if budget == "rounds" else "step"]), self.progress.max)
            if time.monotonic() - self._last_draw >= self.throttle_s:
                self._draw()

        try:
            run = lab_run(config, runs_dir=self.runs_dir, save=self.save, progress=False, callback=on_row,
                          stop=self._stop)
            self.runs.append(run)
            self.last_run = run
            s = run.summary()
            self._set_status(f"{label}: {run.status} at step {s['steps']} (round {s['rounds']}) · "
                             f"loss {s['final_loss']:.4f} · accuracy {s['eval_accuracy']:.3f} · "
                             f"{_fmt_bytes(s['bytes'])} sent · {s['sim_seconds']:.3g} s simulated · "
                             f"{s['wall_seconds']:.2f} s wall")
        except BaseException as e:  # shown, not lost: the thread has no caller to raise to
            self.error = e
            self._set_status(f"{label}: failed after {len(self._rows)} rounds: {type(e).__name__}: {e}", error=True)
        finally:
            if self._rows:
                self._frames.append(pd.DataFrame(self._rows))
            self._rows = []
            try:
                self._draw()
            except Exception as e:
                self.error = self.error or e
                self._set_status(f"chart update failed: {type(e).__name__}: {e}", error=True)
            self.run_button.disabled, self.stop_button.disabled, self.clear_button.disabled = False, True, False

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self.chart.update(self.frame())

    def _set_status(self, text: str, *, error: bool = False) -> None:
        color = "#b00020" if error else "inherit"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"
