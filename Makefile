# Quick start:  make run   (set up, then sipd in the foreground on built-in defaults)
#               make test  (set up, then the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SIPD_ARGS ?=

.PHONY: setup system venv run test check lint bench clean

setup: system venv

system:
	@sh tools/system-setup.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

run: setup
	$(BIN)/sipd $(SIPD_ARGS)

lint: venv
	$(BIN)/ruff check sipd srfs tests bench
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
