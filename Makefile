# Quick start:  make run   (set up, then sipd in the foreground on built-in defaults)
#               make test  (set up, then the whole test suite)
# Install:      make install [PREFIX=/usr/local] [DESTDIR=...]; make uninstall
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SIPD_ARGS ?=

# make install builds on Debian's interpreter, which every user may run
# (sippasswd) and which gets the distribution's security updates.
SYSTEM_PYTHON ?= /usr/bin/python3
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
DESTDIR ?=
BUILD := build/install
TOOLS := $(BUILD)/tools
WHEEL_STAMP := $(BUILD)/wheel/.built
SOURCES := pyproject.toml setup.py $(shell find sipd srfs -name '*.py' -o -name '*.c')

.PHONY: setup setup-run system-run system-test system-install run test test-suite test-directory \
	compiled test-compiled test-beside check lint \
	bench profile clean install uninstall

# setup-run: what running from the checkout needs; setup: that and the test tools.
setup-run: system-run $(VENV)/.run
setup: system-test $(VENV)/.test

system-run:
	@sh tools/system-setup.sh run

system-test:
	@sh tools/system-setup.sh test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -e .
	@touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@ $(VENV)/.run

run: setup-run
	$(BIN)/sipd $(SIPD_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check sipd srfs tests bench
	$(BIN)/mypy

test: setup lint $(WHEEL_STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-suite test-beside

# The directory's tests mostly wait (for its refreshes, an idle minute, an
# outage of 30 s) in a mount namespace of their own: they run beside the
# rest of the suite, and the compiled run after them in the same lane
# (the suite takes longer than both), each lane's output printed whole
# when it ends.
test-beside:
	$(MAKE) --no-print-directory test-directory
	$(MAKE) --no-print-directory test-compiled

DIRECTORY_TESTS := tests/e2e/test_ldap_e2e.py
test-suite:
	$(BIN)/pytest -q -p no:cacheprovider --ignore=$(DIRECTORY_TESTS)
test-directory:
	$(BIN)/pytest -q -p no:cacheprovider $(DIRECTORY_TESTS)

# sipd's unit tests, and those of the srfs modules it compiles, once more
# on the build make install makes: a wheel
# whose per-message modules are compiled with mypyc (setup.py). The checkout's own
# modules stay pure Python (an editable install compiles nothing), so the
# run above tested those. --import-mode=append keeps the checkout behind
# the unpacked wheel on sys.path; SIPD_EXPECT_BUILD makes a wheel that fell
# back to pure Python fail here rather than pass unnoticed.
# It is make install's own wheel (built once: make test builds it before
# the suite, whose install tests reuse it) when the checkout's Python takes
# the same extension modules; otherwise one built for the checkout's Python.
COMPILED := build/compiled
EXT_SUFFIX := import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))
compiled: setup $(WHEEL_STAMP)
	rm -rf $(COMPILED) build/lib build/lib.* build/temp.* build/bdist.*
	@if [ "$$($(BIN)/python -c '$(EXT_SUFFIX)')" = "$$($(SYSTEM_PYTHON) -c '$(EXT_SUFFIX)')" ]; then \
	  echo "$(BIN)/python -m zipfile -e $(BUILD)/wheel/*.whl $(COMPILED)/site"; \
	  $(BIN)/python -m zipfile -e $(BUILD)/wheel/*.whl $(COMPILED)/site; \
	else \
	  echo "$(BIN)/pip wheel -w $(COMPILED)/wheel ."; \
	  $(BIN)/pip wheel -q --disable-pip-version-check --no-deps -w $(COMPILED)/wheel . && \
	  $(BIN)/python -m zipfile -e $(COMPILED)/wheel/*.whl $(COMPILED)/site; \
	fi

test-compiled: compiled
	PYTHONPATH=$(CURDIR)/$(COMPILED)/site SIPD_EXPECT_BUILD="compiled with mypyc" \
	 $(BIN)/pytest -q -p no:cacheprovider --import-mode=append tests/unit/sipd \
	 tests/unit/srfs/state tests/unit/srfs/files/test_usrloc.py \
	 tests/unit/srfs/files/test_homewrite.py

# The benchmarks run the daemon as make install builds it (the compiled
# per-message modules); BENCH_ARGS=--core pure measures the checkout's pure Python.
bench: setup compiled
	$(BIN)/python bench/run.py $(BENCH_ARGS)

PROFILE_ARGS ?=
profile: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/profile_register.py $(PROFILE_ARGS)

# The wheel of the project, rebuilt when a source changes; setuptools'
# leftovers of an earlier build must not slip into it (build/lib.* when
# setup.py compiled the per-message modules), nor objects compiled for the checkout's
# Python by make test-compiled (build/temp.*).
system-install:
	@sh tools/system-setup.sh install

$(TOOLS)/bin/pip: | system-install
	$(SYSTEM_PYTHON) -m venv $(TOOLS)

$(WHEEL_STAMP): $(SOURCES) | $(TOOLS)/bin/pip
	rm -rf $(BUILD)/wheel build/lib build/lib.* build/temp.* build/bdist.*
	$(TOOLS)/bin/pip wheel -q --disable-pip-version-check --no-deps -w $(BUILD)/wheel .
	@touch $@

install: system-install $(WHEEL_STAMP)
	@PREFIX='$(PREFIX)' SYSCONFDIR='$(SYSCONFDIR)' SYSTEMDUNITDIR='$(SYSTEMDUNITDIR)' \
	 DESTDIR='$(DESTDIR)' SYSTEM_PYTHON='$(SYSTEM_PYTHON)' \
	 sh tools/install.sh install "$$(ls $(BUILD)/wheel/*.whl)" $(TOOLS)/bin/pip

uninstall:
	@PREFIX='$(PREFIX)' SYSCONFDIR='$(SYSCONFDIR)' SYSTEMDUNITDIR='$(SYSTEMDUNITDIR)' \
	 DESTDIR='$(DESTDIR)' SYSTEM_PYTHON='$(SYSTEM_PYTHON)' sh tools/install.sh uninstall

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
