# One-command set-up: every target installs what it needs (venv, pinned Python and npm packages).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.apiary-installed
NPM_STAMP := node_modules/.apiary-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: all deps test test-fast demo lint clean

all: test

deps: $(PY_STAMP) $(NPM_STAMP) $(FASHION_MNIST)

$(PY_STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm install --no-audit --no-fund --no-save --loglevel=error
	touch $@

# Fashion-MNIST for `apiary compare --dataset fashion`: Debian's dataset-fashion-mnist.
$(FASHION_MNIST):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist

# Everything: linters, then every tier (unit and API, real devnet, real processes).
test: deps
	command -v docker-compose >/dev/null || (apt-get update && apt-get install -y docker-compose)
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
