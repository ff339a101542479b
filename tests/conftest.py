"""Shared pytest fixtures for commlab.

- ``repo_root``: the repository root as a ``Path``.
- ``chromium_browser``: a Playwright (sync API) Chromium ``Browser`` running
  Debian's ``/usr/bin/chromium`` headless (``make browser`` installs it). Skips
  with a reason when Chromium or Playwright is missing. Never run
  ``playwright install``: it downloads a browser build and fails here.
- ``browser_page``: a fresh context and page in ``chromium_browser``, closed
  after the test.
- ``jupyter_server``: a JupyterLab server on 127.0.0.1 with token auth, rooted
  at the repository, started from this interpreter's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from urllib.parse import urlencode

import pytest

from lab.launch import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 60.0


#: markers (and fixtures) that make a test slow: `make test-fast` runs `pytest -m "not slow"`
SLOW_MARKERS = ("gloo", "notebook", "browser")
SLOW_FIXTURES = ("chromium_browser", "browser_page", "jupyter_server")


def pytest_collection_modifyitems(config, items):
    """Mark every gloo, notebook and browser test (and any test using the browser or JupyterLab fixtures)
    `slow` too, in this one place, so `-m "not slow"` leaves them all out."""
    for item in items:
        if any(item.get_closest_marker(m) for m in SLOW_MARKERS) or set(SLOW_FIXTURES) & set(item.fixturenames):
            if item.get_closest_marker("slow") is None:
                item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(autouse=True, scope="session")
def private_runs_store(tmp_path_factory):
    """Every test's runs and cached pre-trained backbones (lab.pretrain) go to a temporary runs store, never the
    repository's runs/; a test that needs its own sets COMMLAB_RUNS_DIR (monkeypatch) or passes runs_dir."""
    old = os.environ.get("COMMLAB_RUNS_DIR")
    os.environ["COMMLAB_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs-store"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COMMLAB_RUNS_DIR", None)
        else:
            os.environ["COMMLAB_RUNS_DIR"] = old


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """Every test (and every kernel or process it starts) uses one intra-op thread.

    The lab's models are tiny: a second thread buys nothing, and on a 2-core
    machine OpenMP threads spin against each other (a 120-step digits run took
    20x the CPU time with 2 threads under load). Restored after the session.
    """
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


# ---------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_browser(tmp_path_factory):
    """A headless Chromium ``playwright.sync_api.Browser`` for the session.

    Playwright refuses ``--user-data-dir`` in ``args`` for ``launch()``; it
    gives each launched browser a fresh temporary profile of its own, so the
    profile is always new and empty. Downloads go to a fresh temp dir.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run `make browser` (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")

    downloads = tmp_path_factory.mktemp("chromium-downloads")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            downloads_path=str(downloads),
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser):
    """A new page in a new, isolated browser context; closed after the test."""
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


# ---------------------------------------------------------------------------
# JupyterLab server
# ---------------------------------------------------------------------------


@dataclass
class JupyterServer:
    base_url: str  # e.g. "http://127.0.0.1:PORT/" (always ends in "/")
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def url(self, path: str = "lab", **params: str) -> str:
        """Absolute URL for ``path`` (relative to the server root) with the token."""
        query = urlencode({**params, "token": self.token})
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path.lstrip('/')}{sep}{query}"

    def run_all(self, page, path: str) -> None:
        """Open the notebook at ``path`` (relative to the root) in ``page``, wait for its commlab kernel to be
        idle, then Run All Cells from the menu."""
        page.goto(self.url(f"lab/tree/{path}", reset=""))
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        page.wait_for_function("() => /commlab/.test(document.querySelector('.jp-KernelName')?.textContent || '')",
                               timeout=90_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")

    def api(self, path: str, timeout: float = 10.0):
        """GET ``/api/<path>`` with token auth and return the decoded JSON."""
        req = urllib.request.Request(
            f"{self.base_url}api/{path.lstrip('/')}",
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory) -> JupyterServer:
    """JupyterLab on a free loopback port, token auth on, rooted at the repo.

    Runtime files, workspaces and user settings go to a temp dir so the tests
    neither read nor change the developer's JupyterLab state.
    """
    state = tmp_path_factory.mktemp("jupyter")
    port = free_port()
    token = token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={REPO_ROOT}",
        f"--LabApp.workspaces_dir={state / 'workspaces'}",
        f"--LabApp.user_settings_dir={state / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # the token travels in the environment, never on the command line (`ps` shows argv)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(state / "runtime"), PYTHONUNBUFFERED="1", JUPYTER_TOKEN=token)
    # The kernels must run this environment even if PATH points elsewhere.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

    log_path = state / "jupyter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = JupyterServer(
        base_url=f"http://127.0.0.1:{port}/", token=token, root_dir=REPO_ROOT,
        log_path=log_path, process=proc,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with code {proc.returncode} before answering:\n{server.log()}"
                )
            try:
                server.api("status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"jupyter lab did not answer /api/status within "
                    f"{SERVER_START_TIMEOUT_S:.0f} s:\n{server.log()}"
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(state / "runtime", ignore_errors=True)
