# Two commands on a fresh Debian 12 machine (as root): `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
# test modules run this many at once, each worker with its own lab addresses (tests/conftest.py); on two cores a
# third worker fills the time the others wait on windows, intervals and timeouts (one probe each way found it
# faster, within this machine's noise; no committed benchmark). Timing tests must leave room for it.
TEST_WORKERS ?= 3
# Debian 12's own interpreter (3.11.2) is what a bastion has; a newer python3 earlier on PATH hides what breaks there
PYTHON ?= /usr/bin/python3
PY := $(VENV)/bin/python
# sudo and python3-apt: the lab's hosts (whole machines over this one's root) log in as deploy and use
# sudo; the example installs a .deb with the apt module; chromium: the dashboard's browser tests;
# prometheus: its promtool lints the /metrics exposition in the tests (the server itself is never started);
# systemd: only its systemd-analyze, which checks the shipped unit offline (nothing starts systemd here);
# tmux: a real terminal for the tests that read live progress as a person sees it; procps: the tests' pgrep
SYSTEM_PACKAGES := openssh-server openssh-client git age gnupg util-linux python3-venv sudo python3-apt \
                   chromium chromium-driver prometheus systemd tmux procps tzdata postgresql

.PHONY: demo test lint bench bench-quick system venv clean

demo: system venv  ## a local Git remote, 5 real SSH hosts, a real `controller sync`
	VENV=$(VENV) demo/run.sh

test: system venv  ## lint, type-check, then the whole test suite against real hosts (TEST_WORKERS at once)
	$(VENV)/bin/ruff check controller lab tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

bench: system venv  ## against plain Ansible at 10 and 50 hosts, then one bastion at 50, 200 and 500 (about 3.5 hours); writes docs/benchmarks.*
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m bench

bench-quick: system venv  ## the same at 3 and 10 hosts, one repetition (a few minutes)
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m bench --quick --out .bench-quick

lint: venv
	$(VENV)/bin/ruff check controller lab tests bench
	$(VENV)/bin/mypy

system:  ## the Debian packages the controller and the lab need
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

clean:
	-[ -d .demo/lab ] && $(PY) -m lab down --dir .demo/lab
	rm -rf $(VENV) .demo .bench-quick
