"""The Lab dashboard in a real JupyterLab in a real headless Chromium: each of the four knobs redraws its analytic
chart within 500 ms, the composed run (Local SGD H=8, top-k 0.1, ZeRO-2 S=4, 2 nodes x 4 ranks) runs and reports
the predicted bytes, Stop ends a sweep within 1 s, and the runs table shows the runs' differing knob.

The notebook is written to notebooks/_out/ (git-ignored); screenshots go there and to the test's tmp dir.
"""
import json
import re
import shutil
import time

import nbformat
import pytest

from tests.test_dashboard_voila import dashboard_page, voila_dashboard  # noqa: F401 (fixtures)

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.browser

SMALL = dict(technique="local_sgd", num_workers=8, topology="multinode_2x4", sync_period=8, steps=16, eval_every=8,
             batch_size=16, compressor="topk", compression_ratio=0.1, zero_stage=2, sharding_degree=4)
REDRAW_S = 0.5  # the bound for a redrawn analytic chart on 2 cores
STOP_S = 1.0


def _notebook(path, runs_dir):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "commlab", "display_name": "commlab (Python 3)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(f"import widgets\nlab = widgets.Lab({SMALL!r}, runs_dir={str(runs_dir)!r})\n"
                                          "lab")]
    nbformat.write(nb, str(path))


def _analytic_text(page) -> str:
    return page.evaluate("() => document.querySelector('.commlab-analytic .vega-embed svg')?.innerHTML || ''")


def _timed_redraw(page, action) -> float:
    before = _analytic_text(page)
    t = time.monotonic()
    action()
    page.wait_for_function("old => (document.querySelector('.commlab-analytic .vega-embed svg')?.innerHTML || '')"
                           " !== old", arg=before, timeout=10_000, polling="raf")
    return time.monotonic() - t


def _type_readout(page, label: str, text: str) -> None:
    readout = page.locator(".widget-slider", has_text=label).first.locator(".widget-readout")
    readout.fill(text)
    readout.press("Enter")


def _select(page, label: str, option: str) -> None:
    page.locator(".widget-dropdown", has_text=label).first.locator("select").select_option(label=option)


def _shot(page, out, tmp_path, name):
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, out / path.name)
    return path


def test_lab_dashboard_in_jupyterlab(jupyter_server, browser_page, repo_root, tmp_path):
    out = repo_root / "notebooks" / "_out"
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = tmp_path / "runs"
    _notebook(out / "browser_lab.ipynb", runs_dir)
    page = browser_page
    page.set_viewport_size({"width": 1600, "height": 1400})
    jupyter_server.run_all(page, "notebooks/_out/browser_lab.ipynb")
    page.wait_for_selector(".commlab-analytic .vega-embed svg", timeout=240_000)
    drive_lab(page, out, tmp_path, prefix="lab_dashboard", steps=SMALL["steps"])


def test_lab_dashboard_under_voila(voila_dashboard, dashboard_page, repo_root, tmp_path):  # noqa: F811
    """The same dashboard served by `make dashboard` (notebooks/dashboard.ipynb: `widgets.Lab()`, its defaults)."""
    from widgets.lab import DEFAULT

    page = dashboard_page
    page.set_viewport_size({"width": 1600, "height": 1400})
    drive_lab(page, repo_root / "notebooks" / "_out", tmp_path, prefix="lab_voila", steps=DEFAULT["steps"])


def drive_lab(page, out, tmp_path, *, prefix: str, steps: int) -> None:
    """Move the four knobs (each redraw < 500 ms), run the composed run, stop a sweep (< 1 s), read the runs table."""
    page.wait_for_function("() => (document.querySelector('.commlab-analytic .vega-embed svg')?.textContent || '')"
                           ".includes('How many bytes')", timeout=60_000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()
    _shot(page, out, tmp_path, prefix)

    # ---- each of the four knobs redraws the analytic chart ----
    times = {
        "sync period H": _timed_redraw(page, lambda: _type_readout(page, "sync period H", "32")),
        "compression ratio": _timed_redraw(page, lambda: _type_readout(page, "compression ratio", "0.01")),
        "sharding degree S": _timed_redraw(page, lambda: _select(page, "sharding degree S", "2")),
        "topology": _timed_redraw(page, lambda: _select(page, "topology", "nvlink_node")),
    }
    print("knob -> redrawn analytic chart (s):", json.dumps({k: round(v, 3) for k, v in times.items()}))
    (out / f"{prefix}_latency.json").write_text(json.dumps(times, indent=1))
    _shot(page, out, tmp_path, f"{prefix}_knobs_moved")
    assert all(t < REDRAW_S for t in times.values()), times

    # ---- back to the composed run and Run it ----
    _type_readout(page, "sync period H", "8")
    _type_readout(page, "compression ratio", "0.1")
    _select(page, "sharding degree S", "4")
    _select(page, "topology", "multinode_2x4")
    page.wait_for_timeout(500)
    lab = page.locator(".commlab-lab").first
    lab.get_by_role("button", name=re.compile(r"\bRun\b")).click()
    status = page.locator(".commlab-status")
    status.get_by_text(re.compile(rf"finished at step {steps}\b")).wait_for(timeout=120_000)
    expected = _predicted_total(steps)
    assert f"{expected} sent" in status.inner_text(), (expected, status.inner_text())
    page.locator(".commlab-runs").first.wait_for(timeout=30_000)
    _shot(page, out, tmp_path, f"{prefix}_composed_run")

    # ---- a sweep over H, stopped: Stop ends it within a second, keeping the runs it finished ----
    page.locator(".widget-text", has_text="values").first.locator("input").fill("2, 4, 16, 32, 64, 128, 2, 4")
    page.locator(".widget-text", has_text="values").first.locator("input").press("Enter")
    lab.get_by_role("button", name=re.compile(r"\bSweep\b")).click()
    stop = lab.get_by_role("button", name=re.compile(r"\bStop\b"))
    expect(stop).to_be_enabled(timeout=60_000)
    page.wait_for_timeout(1500)
    t = time.monotonic()
    stop.click()
    page.wait_for_function("() => [...document.querySelectorAll('.commlab-lab button')].some(b => "
                           "/\\bRun\\b/.test(b.textContent) && !b.disabled)", timeout=10_000, polling="raf")
    stop_s = time.monotonic() - t
    print(f"Stop -> Run enabled again: {stop_s:.3f} s")
    # the runs table: the composed run and the sweep's runs, H (sync_period) differs between them
    page.wait_for_timeout(1000)
    table = page.locator(".commlab-runs").first
    headers = table.locator("th").all_inner_texts()
    rows = table.locator("tbody tr").count()
    _shot(page, out, tmp_path, f"{prefix}_runs")
    assert stop_s < STOP_S, stop_s
    assert rows >= 2 and "H" in headers, (rows, headers)
    legend = page.evaluate("() => document.querySelector('.commlab-runs-chart .vega-embed svg')?.textContent || ''")
    assert "H=8" in legend and "H=2" in legend, legend[:500]


def _predicted_total(steps: int) -> str:
    """The composed run's predicted bytes over its `steps` steps, formatted as the Lab's status line formats them."""
    from lab.config import ExperimentConfig
    from lab.experiment import build_context
    from lab.sharding.composed import predict_for_config
    from widgets.lab_charts import si

    cfg = ExperimentConfig(**{**SMALL, "steps": steps})
    ctx, _ = build_context(cfg)
    p = predict_for_config(cfg, num_params=ctx.cluster.dim, numels=tuple(ctx.cluster.numels))
    return si(sum(p.values()) * steps, "B")
