"""`make dashboard` in a real headless Chromium: Voila serves notebooks/dashboard.ipynb on the loopback with token
auth, the widgets render, no cell fails, and the token never appears on a command line.

The fixtures are meant to be built on: `voila_dashboard` runs the Makefile's own recipe (`make -o <stamp>
dashboard`, so the test serves exactly what a user gets, without reinstalling) on a free port, once per module;
`dashboard_page` opens it in a fresh page and waits until Voila has run every cell and the widgets are drawn.
Interaction tests (knobs redrawing charts, Stop, runs table) take `dashboard_page` and drive it. Screenshots go to
the test's tmp dir and to notebooks/_out/ (git-ignored).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.launch import free_port

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "notebooks" / "_out"
START_TIMEOUT_S = 90.0
RENDER_TIMEOUT_MS = 240_000  # Voila starts a kernel and runs every cell before the page is complete
URL_LINE = re.compile(r"commlab dashboard: (http://127\.0\.0\.1:(\d+)/\?token=([0-9a-f]+))")
#: what a failed cell looks like in Voila: an error output, or (with show_tracebacks, as `make dashboard` runs it)
#: the traceback as text on stderr
ERROR_MIME = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
STDERR_MIME = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
ERROR_TEXT = re.compile(r"Traceback|Error\b|Exception\b")


@dataclass
class VoilaDashboard:
    url: str  # the URL `make dashboard` printed, token included
    base_url: str  # "http://127.0.0.1:PORT/"
    token: str
    log_path: Path
    process: subprocess.Popen = field(repr=False)  # `make`, leader of its own session

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str) -> tuple[int, str]:
    """(status, Location header) of a GET that does not follow redirects."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Location", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", "")


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM to the session this test started (make, Voila, its kernels), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def voila_dashboard(tmp_path_factory) -> VoilaDashboard:
    """`make dashboard` on a free loopback port, from this interpreter's venv; the URL parsed from its output."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "voila").exists():
        pytest.skip(f"voila is not installed in {venv}: run `make install`")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    state = tmp_path_factory.mktemp("voila")
    log_path = state / "make_dashboard.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
    # runs the dashboard saves go to the test's tmp dir, not the developer's runs/
    env.update(JUPYTER_RUNTIME_DIR=str(state / "runtime"), PYTHONUNBUFFERED="1", COMMLAB_RUNS_DIR=str(state / "runs"))
    # -o: take the install stamp as up to date, so the test never reinstalls the shared venv
    cmd = ["make", "-s", "-o", str(venv / ".installed"), "dashboard", f"VENV={venv}", f"DASHBOARD_PORT={port}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        dashboard = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"make dashboard exited with code {proc.returncode}:\n{log_path.read_text()}")
            match = URL_LINE.search(log_path.read_text(errors="replace"))
            if match and dashboard is None:
                assert int(match.group(2)) == port, match.group(0)
                dashboard = VoilaDashboard(url=match.group(1), base_url=f"http://127.0.0.1:{port}/",
                                           token=match.group(3), log_path=log_path, process=proc)
            if dashboard is not None:
                try:
                    _get(dashboard.base_url + "voila/static/voila.js")
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Voila did not answer within {START_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield dashboard
    finally:
        _stop_session(proc)


@pytest.fixture
def dashboard_page(voila_dashboard, browser_page):
    """The dashboard in a fresh page, once Voila has run every cell and the widgets are drawn.

    `page.js_errors` collects uncaught JavaScript errors from the moment the page opens.
    """
    page = browser_page
    page.js_errors = []
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    page.goto(voila_dashboard.url, timeout=RENDER_TIMEOUT_MS)
    # Voila streams the cells' outputs, then removes its "Running ..." spinner (#loading)
    page.wait_for_selector("#loading", state="detached", timeout=RENDER_TIMEOUT_MS)
    page.wait_for_selector(".jp-OutputArea-output .jupyter-widgets", timeout=60_000)
    return page


def error_outputs(page) -> list[str]:
    """Text of every output that reports a failure: error outputs, and stderr carrying a traceback or an error."""
    stderr = [t for t in page.locator(STDERR_MIME).all_inner_texts() if ERROR_TEXT.search(t)]
    return page.locator(ERROR_MIME).all_inner_texts() + stderr


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """The whole page as a PNG in the test's tmp dir and in notebooks/_out/ (git-ignored); returns the tmp one."""
    path = tmp_path / f"{name}.png"
    # Voila scrolls inside its own container, so a full-page shot would stop at the viewport: grow the viewport
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('body *')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": max(600, min(int(height) + 40, 4000))})
    page.screenshot(path=str(path), full_page=True)
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUT / path.name)
    return path


def test_dashboard_requires_the_token_and_keeps_it_off_the_command_line(voila_dashboard):
    base = voila_dashboard.base_url
    for url in (base, f"{base}?token=not-{voila_dashboard.token}"):
        status, location = _get(url)
        assert status in (302, 403) and (status == 403 or "/login" in location), (url, status, location)
    # every process of the session the test started: make, the shell, Voila, its kernels
    ps = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-s", str(voila_dashboard.process.pid)],
                        capture_output=True, text=True, check=True).stdout
    assert "voila" in ps and "notebooks/dashboard.ipynb" in ps, ps
    assert voila_dashboard.token not in ps
    # ... because it travels in Voila's environment
    voila_pid = next(int(line.split()[0]) for line in ps.splitlines() if "bin/voila" in line)
    environ = Path(f"/proc/{voila_pid}/environ").read_bytes().split(b"\0")
    assert f"JUPYTER_TOKEN={voila_dashboard.token}".encode() in environ
    assert "--allow-root" not in ps  # Voila needs none, even as root


def test_dashboard_renders_its_widgets_without_errors(voila_dashboard, dashboard_page, tmp_path):
    page = dashboard_page
    errors = error_outputs(page)
    assert not errors, "\n\n".join(errors) + "\n\n" + voila_dashboard.log()[-4000:]
    assert not page.js_errors, page.js_errors
    assert page.locator(".jupyter-widgets").count() >= 5
    page.get_by_role("button", name=re.compile(r"\bRun\b")).first.wait_for(timeout=30_000)
    page.get_by_role("button", name=re.compile(r"\bStop\b")).first.wait_for(timeout=30_000)
    assert page.locator("select, input").count() >= 3  # knobs
    # the code is hidden: Voila shows outputs and markdown, not the notebook's source
    assert page.get_by_text("hasattr(widgets").count() == 0
    png = screenshot(page, "dashboard_voila", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_dashboard_run_button_trains_in_the_kernel(voila_dashboard, dashboard_page, tmp_path):
    """The widgets are live under Voila, not just drawn: Run reaches the kernel, the run finishes, charts redraw."""
    page = dashboard_page
    run = page.get_by_role("button", name=re.compile(r"\bRun\b")).first
    run.click()
    page.get_by_text(re.compile(r"\bfinished\b")).first.wait_for(timeout=120_000)
    expect(run).to_be_enabled(timeout=30_000)  # the panel is ready for the next run
    errors = error_outputs(page)
    assert not errors, "\n\n".join(errors) + "\n\n" + voila_dashboard.log()[-4000:]
    assert not page.js_errors, page.js_errors
    page.wait_for_selector(".vega-embed canvas, .vega-embed svg", timeout=30_000)
    screenshot(page, "dashboard_voila_run", tmp_path)
