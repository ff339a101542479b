# commlab -- developer entry points.
#
#   make            same as `make install`
#   make install    create .venv (if missing), install commlab[dev] with the
#                   pinned versions in constraints.txt, install the kernelspec
#   make browser    install Debian's chromium for the browser tests (if missing)
#   make lab        start JupyterLab on 127.0.0.1:$(PORT) at notebooks/00_tour.ipynb
#   make dashboard  serve the dashboard (notebooks/dashboard.ipynb) with Voila on 127.0.0.1:$(DASHBOARD_PORT)
#   make test       install + browser, then the whole pytest suite (extra args: PYTEST_ARGS=...)
#   make test-fast  install, then pytest without the tests marked slow (gloo, notebook, browser, ...)
#   make lint       ruff on lab widgets tests bench (config: [tool.ruff] in pyproject.toml)
#   make bench      install, then run every bench/*.py
#   make notebooks  regenerate every notebooks/*.ipynb from its source notebooks/<name>.py (jupytext)
#   make clean      remove caches, build metadata and notebook outputs
#   make distclean  clean, and also remove .venv and runs/
#
# Only python3 (with venv) is needed to start from a fresh clone.

PYTHON     ?= python3
VENV       ?= .venv
PORT       ?= 8888
DASHBOARD_PORT ?= 8866
PYTEST_ARGS ?=
CHROMIUM   ?= /usr/bin/chromium

VPY      := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
KERNEL   := commlab
TOUR     := notebooks/00_tour.ipynb
DASHBOARD := notebooks/dashboard.ipynb

.DEFAULT_GOAL := install
.PHONY: install venv browser lab dashboard test test-fast lint bench notebooks clean distclean

install venv: $(STAMP)

# Reinstalls only when the project metadata, the pins or the kernelspec change.
$(STAMP): pyproject.toml constraints.txt kernels/$(KERNEL)/kernel.json
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -c constraints.txt -e '.[dev]'
	$(VENV)/bin/jupyter kernelspec install --sys-prefix --replace kernels/$(KERNEL)
	@# Pin the installed kernel to this venv's interpreter, so the kernel runs
	@# here even when launched by a jupyter/papermill from another environment.
	$(VPY) -c "import json, pathlib, sys; p = pathlib.Path(sys.prefix, 'share', 'jupyter', 'kernels', '$(KERNEL)', 'kernel.json'); k = json.loads(p.read_text()); k['argv'][0] = sys.executable; p.write_text(json.dumps(k, indent=1) + '\n'); print('kernel $(KERNEL):', p, '->', sys.executable)"
	@touch $@

# Debian's chromium for the browser tests. Playwright comes from pip; never run
# `playwright install` (it downloads a browser build of its own).
browser:
	@if [ -x $(CHROMIUM) ]; then \
	  echo "chromium: $(CHROMIUM) present"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1 && \
	     $$SUDO apt-get update -qq && \
	     DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; then \
	    echo "chromium: installed $(CHROMIUM)"; \
	  else \
	    echo "WARNING: could not install chromium with apt-get (needs apt-get, and root or passwordless sudo);"; \
	    echo "WARNING: tests marked 'browser' will be skipped: $(CHROMIUM) not found."; \
	  fi; \
	fi

# JupyterLab with token auth on. The token is fresh each start; the URL with it
# is printed before the server starts. The token reaches the server through the
# environment (JUPYTER_TOKEN), never the command line, so `ps` does not show it.
lab: $(STAMP)
	@TOKEN=$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(16))'); \
	EXTRA=; \
	if [ "$$(id -u)" = 0 ]; then EXTRA="$$EXTRA --allow-root"; fi; \
	if [ -n "$${CI:-}" ] || { [ -z "$${DISPLAY:-}" ] && [ -z "$${WAYLAND_DISPLAY:-}" ] && [ "$$(uname -s)" != Darwin ]; }; then \
	  EXTRA="$$EXTRA --no-browser"; fi; \
	echo ""; \
	echo "  commlab JupyterLab: http://127.0.0.1:$(PORT)/lab/tree/$(TOUR)?token=$$TOKEN"; \
	echo ""; \
	JUPYTER_TOKEN=$$TOKEN exec $(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(PORT) --ServerApp.port_retries=0 \
	  --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/$(TOUR) \
	  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
	  $$EXTRA

# The dashboard as a web app: Voila runs notebooks/dashboard.ipynb in a commlab kernel and shows its widgets
# without the code. Token auth as for `make lab`: a fresh token each start, the URL with it printed first, the
# token passed in the environment (JUPYTER_TOKEN; --Voila.auto_token=True makes Voila require one and
# jupyter_server's IdentityProvider reads it from there), never on the command line. Voila, unlike JupyterLab,
# runs as root without an --allow-root. Tracebacks are shown: the server listens on the loopback only. Runs are
# saved under the repository's runs/ (the kernel's working directory is notebooks/), or $COMMLAB_RUNS_DIR if set.
# tests/test_dashboard_voila.py runs this recipe (`make -o <stamp> dashboard DASHBOARD_PORT=...`).
dashboard: $(STAMP)
	@TOKEN=$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(16))'); \
	echo ""; \
	echo "  commlab dashboard: http://127.0.0.1:$(DASHBOARD_PORT)/?token=$$TOKEN"; \
	echo ""; \
	JUPYTER_TOKEN=$$TOKEN COMMLAB_RUNS_DIR="$${COMMLAB_RUNS_DIR:-$(CURDIR)/runs}" \
	  exec $(VENV)/bin/voila $(DASHBOARD) --no-browser \
	  --Voila.ip=127.0.0.1 --Voila.port=$(DASHBOARD_PORT) --Voila.port_retries=0 --Voila.auto_token=True \
	  --VoilaConfiguration.show_tracebacks=True

test: $(STAMP) browser
	$(VPY) -m pytest -q -ra $(PYTEST_ARGS)

# Every test not marked slow (tests/conftest.py marks gloo, notebook and browser tests slow).
test-fast: $(STAMP)
	$(VPY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lab widgets tests bench notebooks/*.py

# Every bench/*.py (helpers named _*.py are skipped); fails if any fails.
bench: $(STAMP)
	@status=0; found=0; \
	for f in bench/*.py; do \
	  [ -e "$$f" ] || continue; \
	  case "$$(basename $$f)" in _*) continue;; esac; \
	  found=1; echo "== $$f"; \
	  $(VPY) "$$f" || { echo "FAILED: $$f"; status=1; }; \
	done; \
	[ $$found = 1 ] || echo "no benchmarks in bench/"; \
	exit $$status

# A notebook's source is notebooks/<name>.py (jupytext percent format, settings in notebooks/jupytext.toml);
# its .ipynb, committed for Binder and JupyterLab, is generated from it. --update keeps the cell ids (and any
# outputs) of the existing .ipynb, so regenerating unchanged sources changes nothing.
# tests/test_notebook_sources.py fails when a .ipynb differs from its source.
notebooks: $(STAMP)
	@for f in notebooks/*.py; do \
	  $(VENV)/bin/jupytext --update --to ipynb "$$f" || exit 1; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache notebooks/_out
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) runs
