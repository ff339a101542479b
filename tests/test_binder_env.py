"""The Binder environment builds from binder/ the way repo2docker builds it, runs the tour, and has no CUDA packages.

How: a copy of the repository's working tree (tracked and new files, as git would commit them), a fresh venv of
this Python (binder/runtime.txt names it), and then repo2docker's two steps, from the copy's root, with the venv's
bin/ first on PATH: `pip install -r binder/requirements.txt`, then `./binder/postBuild`. Both run verbatim, with
this machine's pip configuration; the only additions are PIP_RETRIES=0 (this machine cannot reach
download.pytorch.org: pip warns once per package and goes on, instead of retrying each for minutes) and leaving
out repo2docker's --no-cache-dir on step 1, so repeated runs reuse pip's cache. Jupyter's user directories point
into the temp dir, so only the venv's own kernelspec can answer to the name `commlab`.

What the tests prove, on this machine:
- the two steps install, and papermill from that venv runs notebooks/00_tour.ipynb on the venv's `commlab` kernel
  to the end, with the metrics the tour test expects (16x fewer bytes for Local SGD H=16, accuracy > 0.5);
- the installed environment, and a dry-run resolution of both steps together (`pip install --dry-run --report`),
  hold torch 2.13.0+cpu and no nvidia-*, triton or cuda-* package;
- the plain package index (PyPI, without this machine's local wheels) has torch 2.13.0 but no 2.13.0+cpu: the
  `+cpu` pin can only come from the CPU wheel index (or a local CPU wheel), so a build that cannot reach that
  index fails at step 1 instead of installing the CUDA build.

What they cannot prove:
- that download.pytorch.org/whl/cpu serves torch==2.13.0+cpu for Binder's Python: it is unreachable here, and the
  wheel comes from this machine's local CPU wheel of the same name and version (pip config find-links);
- that the plain index's torch==2.13.0 is the CUDA build with nvidia-* and triton: measured by hand (a dry-run
  with `--isolated` downloads the 527 MB wheel to read its metadata: 29 packages, 17 of them nvidia-*/cuda-*/triton),
  too heavy for a test;
- Binder itself: repo2docker's image (a conda env with its own jupyterlab/notebook, Docker, the jovyan user),
  mybinder.org's limits, and that the README badge's repository is public.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"
CUDA_NAME = re.compile(r"^(nvidia-|triton$|cuda-|pytorch-triton)", re.I)
PIP_TIMEOUT_S = 600


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_packages(names) -> list[str]:
    """The CUDA runtime packages among distribution names (nvidia-*, triton, cuda-*)."""
    return sorted(n for n in map(_normalize, names) if CUDA_NAME.match(n))


def torch_pin() -> tuple[str, list[str]]:
    """(the torch version binder/requirements.txt pins, its --extra-index-url values)."""
    text = (BINDER / "requirements.txt").read_text()
    pins = re.findall(r"^torch==(\S+)\s*$", text, flags=re.M)
    indexes = re.findall(r"^--extra-index-url\s+(\S+)\s*$", text, flags=re.M)
    assert len(pins) == 1, f"binder/requirements.txt should pin torch exactly once: {pins}"
    return pins[0], indexes


def _run(cmd, *, env, cwd, timeout=PIP_TIMEOUT_S) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc, elapsed


def test_binder_pins_torch_to_the_cpu_index():
    version, indexes = torch_pin()
    assert version == "2.13.0+cpu"
    assert indexes == ["https://download.pytorch.org/whl/cpu"]
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert os.access(BINDER / "postBuild", os.X_OK)


@pytest.fixture(scope="module")
def binder_repo(tmp_path_factory) -> Path:
    """A copy of the working tree as git would commit it (tracked and untracked-not-ignored files)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to know which files a clone would have")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    root = tmp_path_factory.mktemp("binder") / "repo"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():  # deleted-but-tracked files are skipped
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    return root


@pytest.fixture(scope="module")
def fresh_venv(binder_repo):
    """(a new venv of this Python, the environment repo2docker's steps run in)."""
    runtime = (binder_repo / "binder" / "runtime.txt").read_text().strip()
    if runtime != f"python-{sys.version_info.major}.{sys.version_info.minor}":
        pytest.skip(f"binder/runtime.txt asks for {runtime}; this is Python {sys.version.split()[0]}")
    state = binder_repo.parent
    venv = state / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    drop = ("JUPYTER", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA", "IPYTHONDIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
        VIRTUAL_ENV=str(venv),
        PYTHONNOUSERSITE="1",
        JUPYTER_DATA_DIR=str(state / "jupyter" / "data"),
        JUPYTER_CONFIG_DIR=str(state / "jupyter" / "config"),
        JUPYTER_RUNTIME_DIR=str(state / "jupyter" / "runtime"),
        IPYTHONDIR=str(state / "ipython"),
        PIP_RETRIES="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    try:
        yield venv, env
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 1.5 GB


def test_binder_resolution_has_no_cuda_packages(binder_repo, fresh_venv, tmp_path):
    """Both steps resolved together from nothing (--ignore-installed), with this machine's pip configuration."""
    venv, env = fresh_venv
    report = tmp_path / "report.json"
    _, seconds = _run([str(venv / "bin" / "pip"), "install", "--dry-run", "--ignore-installed", "--report",
                       str(report), "-r", "binder/requirements.txt", "-c", "constraints.txt", "-e", "."],
                      env=env, cwd=binder_repo)
    installs = json.loads(report.read_text())["install"]
    versions = {_normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    print(f"dry-run resolution: {len(versions)} packages in {seconds:.0f} s")
    assert versions["torch"] == "2.13.0+cpu"
    assert {"commlab", "voila", "papermill", "ipykernel", "jupyterlab"} <= set(versions)
    assert cuda_packages(versions) == []


@pytest.fixture(scope="module")
def binder_env(binder_repo, fresh_venv) -> tuple[Path, dict, dict]:
    """The venv after repo2docker's two steps: (venv, env, seconds per step)."""
    venv, env = fresh_venv
    seconds = {}
    # step 1: ${KERNEL_PYTHON_PREFIX}/bin/pip install --no-cache-dir -r binder/requirements.txt (cache kept here)
    _, seconds["requirements"] = _run([str(venv / "bin" / "pip"), "install", "-r", "binder/requirements.txt"],
                                      env=env, cwd=binder_repo)
    # step 2: chmod +x binder/postBuild && ./binder/postBuild
    _, seconds["postBuild"] = _run(["./binder/postBuild"], env=env, cwd=binder_repo)
    print(f"binder environment built: {seconds}")
    return venv, env, seconds


@pytest.mark.timeout(900)
def test_binder_env_has_cpu_torch_and_the_commlab_kernel(binder_repo, binder_env):
    venv, env, _ = binder_env
    python = str(venv / "bin" / "python")
    listed, _ = _run([python, "-m", "pip", "list", "--format=json"], env=env, cwd=binder_repo)
    versions = {_normalize(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    assert versions["torch"] == "2.13.0+cpu" and versions["voila"]
    assert cuda_packages(versions) == []
    probe, _ = _run([python, "-c", "import json, torch, lab; print(json.dumps([torch.version.cuda, lab.__file__]))"],
                    env=env, cwd=venv)
    cuda, lab_file = json.loads(probe.stdout)
    assert cuda is None
    assert Path(lab_file).is_relative_to(binder_repo)  # the editable install of the copy
    specs, _ = _run([str(venv / "bin" / "jupyter"), "kernelspec", "list", "--json"], env=env, cwd=binder_repo)
    commlab = json.loads(specs.stdout)["kernelspecs"]["commlab"]
    assert Path(commlab["resource_dir"]).is_relative_to(venv)
    assert commlab["spec"]["argv"][0] == "python"  # jupyter_client runs it with the launching jupyter's python


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_tour_runs_in_binder_env(binder_repo, binder_env, tmp_path):
    venv, env, _ = binder_env
    metrics, chart = tmp_path / "tour.json", tmp_path / "tour.png"
    _, seconds = _run([str(venv / "bin" / "papermill"), "notebooks/00_tour.ipynb", str(tmp_path / "tour.ipynb"),
                       "-k", "commlab", "--cwd", "notebooks", "--no-progress-bar", "--execution-timeout", "600",
                       "-p", "steps", "64", "-p", "sync_period", "16",
                       "-p", "metrics_path", str(metrics), "-p", "chart_path", str(chart)],
                      env=env, cwd=binder_repo)
    print(f"tour under papermill in the Binder environment: {seconds:.0f} s")
    m = json.loads(metrics.read_text())
    assert m["bytes_ratio_ddp_over_local_sgd"] == pytest.approx(16)
    for key in ("ddp", "local_sgd", "panel"):
        assert m[key]["status"] == "finished" and m[key]["steps"] == 64
        assert m[key]["eval_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # vl-convert works offline in this environment


def test_plain_index_has_no_cpu_build_of_the_pin():
    """On the package index alone the pinned release exists, its `+cpu` build does not."""
    version, _ = torch_pin()
    public = version.split("+")[0]
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch", "--isolated",
                           "--disable-pip-version-check"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PIP_RETRIES": "1"})
    listed = re.search(r"Available versions: (.*)", proc.stdout)
    if proc.returncode != 0 or not listed:
        pytest.skip(f"the package index is not reachable: {proc.stderr.strip()[-300:]}")
    versions = [v.strip() for v in listed.group(1).split(",")]
    assert public in versions
    assert version not in versions and not any("+" in v for v in versions), versions
