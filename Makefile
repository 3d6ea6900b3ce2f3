# django-async-jobs: the two commands a fresh machine needs are `make demo` and `make test`.
#
#   make demo                 example project: worker + sample jobs + admin on 127.0.0.1:8000
#   DEMO_ONESHOT=1 make demo  run the sample jobs, print a summary, exit (non-zero on failure)
#   make test                 ruff + the library's tests + the example project's tests
#   make fuzz                 poison payloads through a real worker: FUZZ_EXAMPLES (5000) batches
#   make lint                 ruff only
#   make bench                bench/run.py $(BENCH_ARGS) (e.g. BENCH_ARGS=--quick), if present
#   make docs                 build the documentation with mkdocs --strict (installs mkdocs)
#   make clean                remove the virtualenv and build leftovers
#
# Variables (override on the command line or in the environment):
#   PYTHON       interpreter that creates the virtualenv (pyenv 3.12 when present, else python3)
#   VENV         virtualenv directory
#   DJANGO_SPEC  the Django requirement installed with the package
#   REDIS_URL    Redis for tests and the demo (the demo starts its own when this one is down)
#   DATABASE_URL passed through to the tests (SQLite when unset)
#   FUZZ_EXAMPLES how many generated batches `make fuzz` tries (`make test` tries 300)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYENV_DIR := $(or $(shell pyenv root 2>/dev/null),$(PYENV_ROOT),$(HOME)/.pyenv)
PYENV_312 := $(lastword $(sort $(wildcard $(PYENV_DIR)/versions/3.12*/bin/python)))
PYTHON ?= $(if $(PYENV_312),$(PYENV_312),python3)
VENV ?= .venv
DJANGO_SPEC ?= Django>=6.1,<6.2
REDIS_URL ?= redis://127.0.0.1:6379/0
EXTRAS ?= test,fakeredis,django-redis,browser
BENCH_ARGS ?=
FUZZ_EXAMPLES ?= 5000

export REDIS_URL

VPY := $(VENV)/bin/python
# One stamp per Django spec and extras: changing either reinstalls, a second run is a no-op.
STAMP := $(VENV)/.installed-$(shell printf '%s|%s' '$(DJANGO_SPEC)' '$(EXTRAS)' | md5sum | cut -c1-10)

.PHONY: help install demo test lint pytest fuzz bench docs clean

help:
	@sed -n '3,11p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): pyproject.toml
	@test -x "$(VPY)" || { echo "Creating $(VENV) with $(PYTHON)"; "$(PYTHON)" -m venv "$(VENV)"; }
	"$(VPY)" -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]' "$(DJANGO_SPEC)"
	@rm -f "$(VENV)"/.installed-*
	@touch "$@"

install: $(STAMP)

lint: $(STAMP)
	"$(VPY)" -m ruff check .

pytest: $(STAMP)
	"$(VPY)" -m pytest -q
	cd example_project && "$(abspath $(VPY))" -m pytest -q

test: lint pytest
	@"$(VPY)" -c 'import sys, django; print("tested on Python", sys.version.split()[0], "with Django", django.get_version())'

fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) "$(VPY)" -m pytest -q -s tests/test_fuzz_payloads.py

demo: $(STAMP)
	PYTHON="$(abspath $(VPY))" bash example_project/demo.sh

bench: $(STAMP)
	@if [ -f bench/run.py ]; then "$(VPY)" bench/run.py $(BENCH_ARGS); else echo "bench/run.py not present: nothing to run"; fi

docs: $(STAMP)
	"$(VPY)" -m pip install -q --disable-pip-version-check mkdocs
	"$(VPY)" -m mkdocs build --strict

clean:
	rm -rf "$(VENV)" build dist site *.egg-info example_project/db.sqlite3* example_project/.demo
