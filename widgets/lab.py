"""`Lab`: the lab as one instrument — the four knobs side by side, live analytic views, runs you can compare.

    import widgets
    widgets.Lab()

Top row: the four knobs that compose (sync period H, compression ratio (log scale) and compressor, sharding degree
S among the divisors of the workers and ZeRO stage, topology), then the technique and the model/data. A knob the
combination does not read is disabled with its reason (`lab.config.is_read`); the technique's other knobs are in
the collapsed "all knobs" section (a `KnobPanel`, which turns the knobs into a validated ExperimentConfig).

Moving a knob redraws, debounced (`debounce_s`), the analytic views (`widgets.lab_charts.analytic`): predicted
bytes per step per link class, time per step on the topology, memory per rank — no training. With "auto-run" on,
a small run (`auto_steps`, shown beside it) starts after each change, TensorFlow-Playground style.

Run trains in a background thread (`lab.experiment.run`, saved under runs/ by default: `runs_dir`, `save`); Stop
ends it within one local step keeping its rows; the progress line shows step/round, rate and ETA; charts redraw at
most twice a second (`throttle_s`) from ≤ `max_points` (500) points per run ("draw every point": all; the runs
table's "full data CSV/Parquet" writes all). Finished runs join the runs table (`widgets.lab_runs.RunsTable`) and
overlay on the charts: loss vs steps, bytes per link class, loss vs simulated time, memory per rank.

`sweep("sync_period", [4, 16])` runs one knob's values, `sweep({"sync_period": [4, 16], "compression_ratio": [0.1,
0.01]})` a small grid (the product, ≤ `MAX_SWEEP` runs; so does the sweep row, with an optional second knob), in a
row under one progress bar, each run labelled by what differs; every config is validated before any run starts.

`Lab(base, focus="sync_period")` (or "compression", "sharding", "topology", or several) is a notebook's part of the
Lab: only those knobs in the top row, the others fixed at `base`'s values and said so; the rest is the same.
"""
from __future__ import annotations

import dataclasses
import html
import threading
import time
from pathlib import Path

import altair as alt
import ipywidgets as w
import pandas as pd

from lab.config import KNOBS, ExperimentConfig, is_read
from lab.experiment import run as lab_run
from lab.paths import runs_dir as runs_store
from lab.registry import technique as technique_class
from widgets.background import BackgroundRun
from widgets.charts import enable_offline
from widgets.knobs import KnobPanel, sync_period_slider
from widgets.lab_charts import (
    MAX_POINTS,
    analytic,
    analytic_chart,
    diff_labels,
    downsample,
    memory_chart,
    runs_charts,
    si,
)
from widgets.lab_parts import GROUPS, sweep_example, title
from widgets.lab_runs import MAX_SWEEP, RunsTable, export_chart, parse_grid, sweep_configs
from widgets.technique_knobs import draft, field_control, set_sharding_options, sharding_degree_control

#: the Lab's starting point: the issue's composed run (Local SGD H=8, top-k 0.1, ZeRO-2 S=4, 2 nodes x 4 ranks)
DEFAULT = dict(technique="local_sgd", num_workers=8, topology="multinode_2x4", sync_period=8, steps=48,
               eval_every=16, batch_size=16, compressor="topk", compression_ratio=0.1, zero_stage=2,
               sharding_degree=4)
FOUR = tuple(n for g in GROUPS.values() for n in g)
#: the knobs the sweep row offers
SWEEPABLE = ("sync_period", "compression_ratio", "sharding_degree", "topology", "lr")
_STYLE = {"description_width": "10.5em"}
_W = "22em"


def _reason_html(why: str) -> str:
    return (f"<div style='color:#6b6b6b;font-size:0.8em;line-height:1.15;max-width:{_W};white-space:normal'>"
            f"{html.escape(why)}</div>" if why else "")


class Lab(BackgroundRun, w.VBox):
    """The dashboard; see the module docstring. `.config()` is the knobs' ExperimentConfig (None if invalid)."""

    def __init__(self, base: ExperimentConfig | dict | None = None, *, runs_dir=None, save: bool = True,
                 debounce_s: float = 0.04, throttle_s: float = 0.5, auto_steps: int = 24, load_runs: bool = True,
                 max_points: int = MAX_POINTS, focus: str | tuple[str, ...] | None = None):
        focus = tuple(GROUPS) if focus is None else (focus,) if isinstance(focus, str) else tuple(focus)
        if not focus or any(f not in GROUPS for f in focus):
            raise ValueError(f"focus={focus!r} is invalid; allowed: one or more of {list(GROUPS)}, or None (all four)")
        enable_offline()
        #: the runs store: `runs_dir`, else $COMMLAB_RUNS_DIR or runs/ at the repository root (lab.paths)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else runs_store()
        self.save, self.debounce_s, self.throttle_s = save, debounce_s, throttle_s
        self.auto_steps, self.max_points = auto_steps, max_points
        self.panel = KnobPanel(DEFAULT if base is None else base)
        b = {**{n: k.default for n, k in KNOBS.items()}, **self.panel.values(), **self.panel.base}
        # ---- the four knobs, linked to the panel's controls (which validate and build the config) ----
        self.knobs: dict[str, w.Widget] = {
            "sync_period": sync_period_slider(b["sync_period"], max_value=128),
            "compression_ratio": field_control("compression_ratio", b["compression_ratio"], width=_W),
            "compressor": field_control("compressor", b["compressor"], width=_W),
            "sharding_degree": sharding_degree_control(b["num_workers"], b["sharding_degree"],
                                                       technique=b["technique"]),
            "zero_stage": field_control("zero_stage", b["zero_stage"], width=_W),
            "topology": field_control("topology", b["topology"], width=_W),
            "technique": w.Dropdown(options=self.panel.technique.options, value=b["technique"],
                                    description="technique", layout=w.Layout(width="24em")),
            "num_workers": field_control("num_workers", b["num_workers"], description="workers", width="14em"),
        }
        self.knobs["sync_period"].description = "sync period H"
        self.knobs["compression_ratio"].description = "compression ratio"
        self.knobs["sharding_degree"].description = "sharding degree S"
        for k in self.knobs.values():
            k.style = _STYLE
            k.layout.width = _W if k.description not in ("technique", "workers") else k.layout.width
        for name, k in self.knobs.items():
            w.link((k, "value"), (self.panel.controls[name], "value"))
        self.data = {n: field_control(n, b[n], width="15em", style={"description_width": "6em"})
                     for n in ("dataset", "model", "mlp_hidden")}
        self.reasons = {n: w.HTML() for n in (*FOUR, *self.data)}
        # ---- run controls ----
        self.run_button = w.Button(description="Run", icon="play", button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, bar_style="info", layout=w.Layout(width="16em"))
        self.progress_text = w.HTML("ready")
        self.auto = w.Checkbox(value=False, description=f"auto-run on change ({auto_steps} steps)", indent=False)
        row = dict(layout=w.Layout(width="16em"), style={"description_width": "4em"})
        swept = GROUPS[focus[0]][0]  # the sweep starts on the (first) knob shown
        self.sweep_field = w.Dropdown(options=SWEEPABLE, value=swept, description="sweep", **row)
        self.sweep_values = w.Text(value=sweep_example(swept, b), description="values", **row)
        self.sweep_field2 = w.Dropdown(options=[("—", ""), *zip(SWEEPABLE, SWEEPABLE)], value="",
                                       description="× knob", **row)
        self.sweep_values2 = w.Text(value="", placeholder="e.g. 0.1, 0.01", description="values", **row)
        self.sweep_button = w.Button(description="Sweep", icon="forward",
                                     tooltip=f"every value (× every value of the second knob), ≤ {MAX_SWEEP} runs")
        self.status = w.HTML()
        self.png_button = w.Button(description="chart PNG", icon="image", tooltip="export the runs chart (vl-convert)")
        self.svg_button = w.Button(description="chart SVG", icon="image", tooltip="export the runs chart (vl-convert)")
        self.png_button.on_click(lambda _: self._export_clicked("png"))
        self.svg_button.on_click(lambda _: self._export_clicked("svg"))
        self.all_points = w.Checkbox(value=False, description=f"draw every point (else ≤ {max_points} per run)",
                                     indent=False, layout=w.Layout(width="auto"))
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.sweep_button.on_click(lambda _: self._sweep_clicked())
        # ---- charts and runs ----
        self.runs = RunsTable(self.runs_dir, load=load_runs)
        svg = {"renderer": "svg"}  # text in the DOM: readable by screen readers and by the browser tests
        self.analytic_chart = alt.JupyterChart(alt.Chart(pd.DataFrame()).mark_point(), embed_options=svg)
        self.runs_chart = alt.JupyterChart(runs_charts(pd.DataFrame()), embed_options=svg)
        self.analytic_data: dict = {}
        self.latencies: list[float] = []  # seconds from a knob change to the analytic chart's new spec
        self.error: BaseException | None = None
        self._timer: threading.Timer | None = None
        self._changed_at = 0.0
        self._lock = threading.Lock()
        self._live: list[dict] = []
        self._live_label = ""
        self._last_draw = 0.0
        self._auto_pending = False
        self.status_line = ""  # the last run's summary
        for c in self.panel.controls.values():
            c.observe(self._on_change, names="value")
        for c in self.data.values():
            c.observe(self._on_data, names="value")
        self.runs.shown.observe(lambda _: self.draw_runs(), names="value")
        self.auto.observe(lambda ch: ch["new"] and self._schedule(), names="value")
        self.all_points.observe(lambda _: self.draw_runs(), names="value")

        def cell(n):
            return w.VBox([self.knobs[n], self.reasons[n]], layout=w.Layout(width="24em"))

        four = w.HBox([w.VBox([cell(n) for n in GROUPS[g]]) for g in focus], layout=w.Layout(flex_flow="row wrap"))
        heading = title(focus, self.knobs, self.panel.config())
        data = w.HBox([self.knobs["technique"], self.knobs["num_workers"],
                       *[w.VBox([c, self.reasons[n]]) for n, c in self.data.items()]],
                      layout=w.Layout(flex_flow="row wrap"))
        more = w.Accordion([self.panel], titles=("all knobs of this technique",), selected_index=None)
        controls = w.HBox([self.run_button, self.stop_button, self.progress, self.progress_text],
                          layout=w.Layout(align_items="center"))
        sweep = w.HBox([self.sweep_field, self.sweep_values, self.sweep_field2, self.sweep_values2,
                        self.sweep_button, self.auto], layout=w.Layout(align_items="center", flex_flow="row wrap"))
        exports = w.HBox([self.png_button, self.svg_button, self.all_points], layout=w.Layout(align_items="center"))
        self.status.add_class("commlab-status")
        analytic_box, runs_box = w.Box([self.analytic_chart]), w.Box([self.runs_chart])
        analytic_box.add_class("commlab-analytic")
        runs_box.add_class("commlab-runs-chart")
        super().__init__([w.HTML(f"<b>{heading}</b>"), four, data, self.panel.message, more, controls, sweep,
                          self.status, w.HTML("<b>Predicted, before any run</b>"), analytic_box,
                          w.HTML("<b>Runs</b>"), runs_box, exports, self.runs])
        self.add_class("commlab-lab")
        self._on_change()
        self.flush()
        self.draw_runs()

    # ---- knobs ------------------------------------------------------------------------------------------
    def config(self) -> ExperimentConfig | None:
        return self.panel.config()

    def chosen(self) -> ExperimentConfig:
        """The knobs' config for the cells below a notebook's part of the Lab; ValueError saying what is wrong."""
        config = self.config()
        if config is None:
            raise ValueError(f"the Lab's knobs hold an invalid setting: {self.panel.error}")
        return config

    def _on_data(self, change) -> None:
        for n, c in self.data.items():
            if c.value != KNOBS[n].default:
                self.panel.base[n] = c.value
            else:
                self.panel.base.pop(n, None)
        self.panel._on_change()
        self._on_change()

    def _on_change(self, change=None) -> None:
        if change is not None and change["owner"] in (self.panel.controls["num_workers"], self.panel.technique):
            set_sharding_options(self.knobs["sharding_degree"], self.panel.num_workers.value,
                                 technique=self.panel.technique.value)
        d = draft(self.panel.technique.value, {**self.panel.base, **self.panel.values()})
        for n, why_box in self.reasons.items():
            ok, why = is_read(d, n)
            (self.knobs.get(n) or self.data[n]).disabled = not ok
            why_box.value = _reason_html("" if ok else why)
        self._changed_at = time.perf_counter()
        self._schedule()

    def _schedule(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce_s, self._redraw_analytic)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Redraw the analytic views now (what the debounce timer does), e.g. in tests and scripts."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._redraw_analytic()

    def _redraw_analytic(self) -> None:
        config = self.config()
        if config is None:
            return
        try:
            self.analytic_data = analytic(config)
            self.analytic_chart.chart = analytic_chart(self.analytic_data)
            self.latencies.append(time.perf_counter() - self._changed_at)
        except Exception as e:  # shown, not lost: this may run in the timer thread
            self.error = e
            self._set_status(f"analytic view failed: {type(e).__name__}: {e}", error=True)
            return
        if self.auto.value:
            self._auto_run(config)

    def _auto_run(self, config: ExperimentConfig) -> None:
        if self.running:
            self._auto_pending = True
            self.stop()
            return
        budget = technique_class(config.technique).budget
        small = dataclasses.replace(config, **({"steps": min(config.steps, self.auto_steps)} if budget == "steps"
                                               else {"rounds": min(config.rounds, max(1, self.auto_steps // 8))}))
        self.start(small)

    # ---- runs -------------------------------------------------------------------------------------------
    def start(self, config: ExperimentConfig | None = None) -> bool:
        """Train `config` (default: the knobs') in the background; False (reason in the status) if not started."""
        config = self._knobs_config() if config is None else config
        return config is not None and self._launch([config])

    def sweep(self, knobs: str | dict, values=None) -> bool:
        """Run the knobs' config once per value of one knob (`sweep("sync_period", [4, 16])`) or per point of a
        small grid (`sweep({"sync_period": [4, 16], "compression_ratio": [0.1, 0.01]})`), in a row, under one
        progress bar. Every config is validated first (ValueError: nothing started); at most `MAX_SWEEP` runs."""
        if isinstance(knobs, str) == (values is None):
            raise ValueError(f"values={values!r} is invalid: expected the values of one knob, sweep('sync_period', "
                             f"[4, 16]), or a grid and no values, sweep({{'sync_period': [4, 16], ...}})")
        base = self._knobs_config()
        return base is not None and self._launch(sweep_configs(base, {knobs: values} if isinstance(knobs, str)
                                                                      else knobs))

    def sweep_grid(self) -> dict:
        """The sweep row's grid: {knob: values} of the first knob, and of the second unless it is '—'."""
        return parse_grid([(self.sweep_field.value, self.sweep_values.value),
                           (self.sweep_field2.value, self.sweep_values2.value)])

    def _sweep_clicked(self) -> None:
        try:
            self.sweep(self.sweep_grid())
        except ValueError as e:
            self._set_status(str(e), error=True)

    def _knobs_config(self) -> ExperimentConfig | None:
        config = self.config()
        if config is None:
            self._set_status(f"invalid knobs: {self.panel.error}", error=True)
        return config

    def _launch(self, configs) -> bool:
        if self.running:
            self._set_status("a run is already going: Stop it or wait", error=True)
            return False
        budgets = [technique_class(c.technique).total(c) for c in configs]
        self.progress.max, self.progress.value = sum(budgets), 0
        self.run_button.disabled, self.stop_button.disabled, self.sweep_button.disabled = True, False, True
        self._start(self._work, (configs, budgets), name="commlab-lab")
        return True

    def _work(self, configs, budgets) -> None:
        offset, t0, n = 0, time.perf_counter(), len(configs)
        labels = diff_labels(configs) if n > 1 else [technique_class(configs[0].technique).describe(configs[0])]
        try:
            for i, (config, budget, label) in enumerate(zip(configs, budgets, labels), 1):
                if self._stop.is_set():
                    break
                unit = "round" if technique_class(config.technique).budget == "rounds" else "step"
                self._live, self._live_label = [], f"running: {label}"
                which = f"sweep run {i}/{n}: " if n > 1 else ""
                self._set_status(f"{which}{self._live_label} ({budget} {unit}s)")

                def on_row(row, offset=offset, unit=unit, which=which):
                    self._live.append(row)
                    done = offset + int(row[unit])
                    self.progress.value = min(done, self.progress.max)
                    elapsed = time.perf_counter() - t0
                    rate = done / elapsed if elapsed > 0 else 0.0
                    eta = (self.progress.max - done) / rate if rate > 0 else float("nan")
                    self.progress_text.value = (f"{which}step {int(row['step'])} · round {int(row['round'])} · "
                                                f"{done}/{self.progress.max} {unit}s · {rate:.3g} {unit}s/s · "
                                                f"ETA {si(eta, 's')}")
                    if time.monotonic() - self._last_draw >= self.throttle_s:
                        self.draw_runs()

                r = lab_run(config, runs_dir=self.runs_dir, save=self.save, progress=False, callback=on_row,
                            stop=self._stop)
                self._live = []
                self.runs.add(r)
                s = r.summary()
                self.status_line = (f"{which}{r.status} at step {s['steps']} (round {s['rounds']}) · loss "
                                    f"{s['final_loss']:.4f} · {si(s['bytes'], 'B')} sent · "
                                    f"{si(s['sim_seconds'], 's')} simulated · {si(s['wall_seconds'], 's')} wall")
                self._set_status(self.status_line)
                offset += budget
        except BaseException as e:  # shown, not lost: the thread has no caller to raise to
            self.error = e
            self._set_status(f"run failed: {type(e).__name__}: {e}", error=True)
        finally:
            self._live = []
            self.run_button.disabled, self.stop_button.disabled, self.sweep_button.disabled = False, True, False
            if self._stop.is_set():
                self._set_status(f"Stop pressed · last run: {self.status_line}")
            try:
                self.draw_runs()
            except Exception as e:
                self.error = self.error or e
            if self._auto_pending and self.auto.value:
                self._auto_pending = False
                self._schedule()

    # ---- charts -----------------------------------------------------------------------------------------
    def frame(self, *, max_points: int | None = MAX_POINTS) -> pd.DataFrame:
        """The rows on the charts: the shown runs and the running one (downsampled; None: all rows)."""
        df = self.runs.frame(max_points=max_points)
        if self._live:
            live = pd.DataFrame(list(self._live)).assign(label=self._live_label, diverged=False)
            df = pd.concat([df, downsample(live, max_points) if max_points else live], ignore_index=True)
        return df

    def runs_chart_spec(self):
        """The altair chart of the shown runs: loss, bytes per link class, simulated time, memory per rank."""
        labels = self.runs.labels()
        mem = [analytic(r.config)["memory"].assign(label=labels[k]) for k, r in self.runs.shown_runs().items()]
        top = runs_charts(self.frame(max_points=None if self.all_points.value else self.max_points))
        return (alt.vconcat(top, memory_chart(pd.concat(mem, ignore_index=True))).resolve_scale(color="independent")
                if mem else top)

    def draw_runs(self) -> None:
        self._last_draw = time.monotonic()
        self.runs_chart.chart = self.runs_chart_spec()

    def export_chart(self, path, which: str = "runs"):
        """Write the runs chart (or which='analytic') as PNG or SVG."""
        chart = self.runs_chart_spec() if which == "runs" else analytic_chart(self.analytic_data)
        return export_chart(chart, path)

    def _export_clicked(self, kind: str) -> None:
        try:
            path = self.export_chart(self.runs_dir / "exports" / f"runs_chart.{kind}")
            self._set_status(f"wrote {path}")
        except (ValueError, OSError) as e:
            self._set_status(str(e), error=True)

    def _set_status(self, text: str, *, error: bool = False) -> None:
        color = "#b00020" if error else "inherit"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"
