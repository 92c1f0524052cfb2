# The README's commands: `make run` (the main job: dvc repro of the default profile), `make test`
# (the suite less its slow tests) and `make test-slow` (DVC runs, multi-process and browser tests;
# CI runs both). All create .venv and install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# dvc stages call the `senseflow` console scripts: put the venv first on PATH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup render run run-ablations run-study smoke test test-slow test-all lint format clean dashboard

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision pinned in the same command, so nothing later swaps torch
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1 -e '.[dev]'
	# hpsv2 and image-reward pin versions that break the rest (timm==0.6.13, protobuf<4,
	# pytest==7.2.0): install them without their declared deps, then their real runtime needs
	$(PY) -m pip install -q --no-deps -c constraints.txt hpsv2 image-reward
	$(PY) -m pip install -q -c constraints.txt clip-anytorch fairscale clint webdataset braceexpand \
	    'setuptools<81' einops accelerate datasets
	# headless Chromium for the dashboard's browser test (Debian package: needs root and apt-get;
	# elsewhere that one test skips and says why)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	    echo "note: chromium not installed; tests/test_dashboard_browser.py will skip"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything

# dvc.yaml is rendered from senseflow/dvc_plan.py for params.yaml's profile; `make run PROFILE=smoke`
# renders it for another profile first (docs/pipeline.md)
PROFILE ?=

render: setup  ## write dvc.yaml for params.yaml's profile (or PROFILE=NAME, which also sets params.yaml)
	$(VENV)/bin/senseflow pipeline render $(if $(PROFILE),--profile $(PROFILE))

run: setup  ## the main job: dvc repro of the profile in params.yaml (embedded by default)
	$(if $(PROFILE),$(VENV)/bin/senseflow pipeline render --profile $(PROFILE))
	$(VENV)/bin/dvc repro

run-ablations: setup  ## the same plus the ablations (no-IDA, no-ISG, no-GAN, vanilla DMD)
	$(VENV)/bin/dvc exp run -S ablations=true

run-study: setup  ## every method x 3 seeds after `make run`: mean, 95% interval, paired tests (build/study/study.md)
	$(VENV)/bin/python -m senseflow.study --profile $${PROFILE:-embedded} --seeds $${SEEDS:-0 1 2}

smoke: setup  ## the smoke profile end to end in a temporary copy, then the gate (what CI runs)
	.ci/smoke

test: setup  ## the suite without the slow tests: under 10 minutes on 2 cores
	$(PY) -m pytest -m "not slow"

test-slow: setup  ## the slow tests: the smoke pipeline once (gate, broken DMD sign), dvc status, DDP/FSDP, browser
	$(PY) -m pytest -m slow

test-all: setup  ## both of the above in one pytest run (what `.ci/run` runs)
	$(PY) -m pytest

lint: setup  ## ruff, and dvc.yaml is the rendered plan
	$(VENV)/bin/senseflow pipeline render --check
	$(VENV)/bin/ruff check senseflow eval dashboard tests benchmarks
	$(VENV)/bin/ruff format --check senseflow eval dashboard tests benchmarks

format: setup
	$(VENV)/bin/ruff format senseflow eval dashboard tests benchmarks
	$(VENV)/bin/ruff check --fix senseflow eval dashboard tests benchmarks

clean:
	rm -rf build results

# The dashboard: reads results/, build/ and the repository's DVC experiments (override the roots
# with SENSEFLOW_RESULTS / SENSEFLOW_BUILD). Local only by default: HOST=0.0.0.0 to share it.
HOST ?= 127.0.0.1
PORT ?= 8501
dashboard: setup  ## the Streamlit dashboard on http://$(HOST):$(PORT)
	$(VENV)/bin/streamlit run dashboard/app.py --server.address $(HOST) --server.port $(PORT) \
	    --server.headless true --browser.gatherUsageStats false
