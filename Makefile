# One-command set-up: every target installs what it needs (venv, pinned Python and npm packages).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.apiary-installed
NPM_STAMP := node_modules/.apiary-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
LETTERS := /usr/lib/R/site-library/mlbench/data/LetterRecognition.rda
PYTEST_ARGS ?=
BASE_IMAGE ?=

.PHONY: all deps image engine test test-fast demo lint clean

all: test

deps: $(PY_STAMP) $(NPM_STAMP) $(FASHION_MNIST) $(LETTERS)

$(PY_STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Fashion-MNIST for `apiary compare --dataset fashion`: Debian's dataset-fashion-mnist.
$(FASHION_MNIST):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist

# UCI Letter Recognition for `apiary compare --dataset letters`: Debian's r-cran-mlbench.
$(LETTERS):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends r-cran-mlbench

# The container image, with no image or package registry reachable from the build: a
# debootstrap'ed Debian base (or BASE_IMAGE=python:3.11-slim), the locked wheels fetched here,
# anvil from node_modules; base and wheels cached in ~/.cache/apiary/image between runs.
image: deps engine
	BASE_IMAGE=$(BASE_IMAGE) deploy/image/build.sh

# The Docker client, compose 1.29 and debootstrap, from Debian, when missing.
engine:
	@command -v dockerd >/dev/null && command -v docker-compose >/dev/null \
	  && command -v debootstrap >/dev/null \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y docker.io docker-compose debootstrap)

# Everything: linters, then every tier (unit and API, real devnet, real processes, real
# containers: the tests start dockerd when no engine answers, and build the image).
test: deps engine
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Unit and API tests only: no chain, no processes; well under a minute.
test-fast: deps
	$(BIN)/pytest -m "not chain and not slow" $(PYTEST_ARGS)

demo: deps
	$(BIN)/apiary demo

lint: deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache runs
