"""The tour in a real JupyterLab in a real headless Chromium: cells run, the chart and the panel render.

A copy of the tour goes to notebooks/_out/ (git-ignored), so autosave never
touches the committed notebook.
"""
import re
import shutil

import pytest

pytestmark = pytest.mark.browser


def test_tour_runs_in_jupyterlab_and_renders_chart_and_run_panel(jupyter_server, browser_page, repo_root):
    out = repo_root / "notebooks" / "_out"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo_root / "notebooks" / "00_tour.ipynb", out / "browser_tour.ipynb")
    page = browser_page
    jupyter_server.run_all(page, "notebooks/_out/browser_tour.ipynb")  # once its commlab kernel is idle
    # every code cell gets an execution count, i.e. the whole notebook ran
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", timeout=240_000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()
    # the offline altair chart drew marks (vega renders an svg or canvas inside vega-embed)
    page.wait_for_selector(".vega-embed canvas, .vega-embed svg", timeout=60_000)
    # the run panel's widgets are live: a Run and a Stop button and a progress bar
    page.get_by_role("button", name=re.compile("Stop")).first.wait_for(timeout=30_000)
    assert page.locator(".widget-button").count() >= 2
    assert page.locator(".widget-progress, progress, .progress").count() >= 1
    chart = page.locator(".vega-embed").first
    chart.scroll_into_view_if_needed()
    chart.screenshot(path=str(out / "browser_tour_chart.png"))
