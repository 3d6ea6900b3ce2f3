# django-async-jobs: the two commands a fresh machine needs are `make demo` and `make test`.
#
#   make demo                 example project: worker + sample jobs + admin on 127.0.0.1:8000
#   DEMO_ONESHOT=1 make demo  run the sample jobs, print a summary, exit (non-zero on failure)
#   make test                 ruff + the library's tests + the example project's tests
#   make test-cluster         the library's tests against a 3-master Redis Cluster they start
#   make fuzz                 poison payloads through a real worker: FUZZ_EXAMPLES (5000) batches
#   make lint                 ruff only
#   make bench                bench/run.py $(BENCH_ARGS) (e.g. BENCH_ARGS=--quick), if present
#   make chaos                the fault suite (chaos/, docs/reliability.md); CHAOS=short: CI's version
#   make soak                 both test suites SOAK_RUNS (5) times in a row beside a CPU-bound
#                             busy loop: the suite must not depend on the machine being idle
#   make docs                 build the documentation with mkdocs --strict (installs mkdocs)
#   make clean                remove the virtualenv and build leftovers
#
# Variables (override on the command line or in the environment):
#   PYTHON       interpreter that creates the virtualenv (the newest pyenv 3.12 when present,
#                else python3); an existing VENV keeps the interpreter it was made with
#   VENV         virtualenv directory
#   DJANGO_SPEC  the Django requirement installed with the package (default: by the interpreter,
#                Django 6.1 on Python 3.12+, Django 5.2 LTS on Python 3.11)
#   REDIS_SPEC   the redis-py requirement (default: the newest pyproject.toml allows)
#   REDIS_URL    Redis for tests and the demo (the demo starts its own when this one is down)
#   DATABASE_URL passed through to the tests (SQLite when unset)
#   FUZZ_EXAMPLES how many generated batches `make fuzz` tries (`make test` tries 300)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYENV_DIR := $(or $(shell pyenv root 2>/dev/null),$(PYENV_ROOT),$(HOME)/.pyenv)
PYENV_312 := $(shell ls -d $(PYENV_DIR)/versions/3.12*/bin/python 2>/dev/null | sort -V | tail -n 1)
PYTHON ?= $(if $(PYENV_312),$(PYENV_312),python3)
VENV ?= .venv
REDIS_URL ?= redis://127.0.0.1:6379/0
EXTRAS ?= test,fakeredis,django-redis,browser,prometheus,opentelemetry
REDIS_SPEC ?=
BENCH_ARGS ?=
FUZZ_EXAMPLES ?= 5000
SOAK_RUNS ?= 5

export REDIS_URL

VPY := $(VENV)/bin/python
# The interpreter that runs everything: the virtualenv's when it exists, else the one that makes it.
PY_USED := $(if $(wildcard $(VPY)),$(VPY),$(PYTHON))
PY_INFO := $(shell "$(PY_USED)" -c 'import sys; v = sys.version_info; print("%d.%d.%d" % v[:3], int(v >= (3, 12)), int(v >= (3, 11)))' 2>/dev/null)
PY_VERSION := $(word 1,$(PY_INFO))
# Django 6 needs Python 3.12+; on 3.11 the default is the 5.2 LTS, which the library supports too.
ifeq ($(word 2,$(PY_INFO)),1)
DJANGO_SPEC ?= Django>=6.1,<6.2
DJANGO_NOTE := Django 6.1
else
DJANGO_SPEC ?= Django>=5.2,<5.3
DJANGO_NOTE := Django 5.2 LTS (Django 6 needs Python 3.12+)
endif
ifneq ($(origin DJANGO_SPEC),file)
DJANGO_NOTE := $(or $(DJANGO_SPEC),the newest Django pyproject.toml allows) (DJANGO_SPEC)
endif
# One stamp per requirement set: changing one reinstalls, a second run is a no-op.
STAMP := $(VENV)/.installed-$(shell printf '%s|%s|%s' '$(DJANGO_SPEC)' '$(REDIS_SPEC)' '$(EXTRAS)' | md5sum | cut -c1-10)


.PHONY: help using install demo test test-cluster lint pytest fuzz bench chaos soak docs clean

help:
	@sed -n '3,13p' Makefile | sed 's/^# \{0,1\}//'

# Says which Python and Django every target below uses (and refuses a Python that is too old).
using:
	@test -n "$(PY_VERSION)" || { echo "No Python at PYTHON=$(PY_USED): set PYTHON to a Python 3.11+ interpreter." >&2; exit 1; }
	@test "$(word 3,$(PY_INFO))" = 1 || { echo "$(PY_USED) is Python $(PY_VERSION); the library needs 3.11+: set PYTHON." >&2; exit 1; }
	@echo "Using Python $(PY_VERSION) with $(DJANGO_NOTE)$(if $(REDIS_SPEC), and $(REDIS_SPEC))"

# -U with redis named: a virtualenv that had an older REDIS_SPEC gets the newest allowed again.
$(STAMP): pyproject.toml | using
	@test -x "$(VPY)" || { echo "Creating $(VENV) with $(PYTHON)"; "$(PYTHON)" -m venv "$(VENV)"; }
	"$(VPY)" -m pip install -q -U --disable-pip-version-check -e '.[$(EXTRAS)]' $(if $(DJANGO_SPEC),"$(DJANGO_SPEC)") "$(or $(REDIS_SPEC),redis)"
	@rm -f "$(VENV)"/.installed-*
	@touch "$@"

install: $(STAMP)

lint: $(STAMP)
	"$(VPY)" -m ruff check .

pytest: $(STAMP)
	"$(VPY)" -m pytest -q
	cd example_project && "$(abspath $(VPY))" -m pytest -q

test: lint pytest
	@"$(VPY)" -c 'import sys, django, redis; print("tested on Python", sys.version.split()[0], "with Django", django.get_version(), "and redis-py", redis.__version__)'

# ASYNC_JOBS_TEST_CLUSTER=1: tests/conftest.py starts the cluster (redis-server, redis-cli) once.
test-cluster: $(STAMP)
	ASYNC_JOBS_TEST_CLUSTER=1 "$(VPY)" -m pytest -q

fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) "$(VPY)" -m pytest -q -s tests/test_fuzz_payloads.py

demo: $(STAMP)
	PYTHON="$(abspath $(VPY))" bash example_project/demo.sh

bench: $(STAMP)
	@if [ -f bench/run.py ]; then "$(VPY)" bench/run.py $(BENCH_ARGS); else echo "bench/run.py not present: nothing to run"; fi

chaos: $(STAMP)
	"$(VPY)" -m chaos --size $(or $(CHAOS),full)

soak: $(STAMP)
	@"$(VPY)" -c 'while True: pass' & busy=$$!; trap "kill $$busy" EXIT; \
	for run in $$(seq 1 $(SOAK_RUNS)); do \
		echo "soak run $$run of $(SOAK_RUNS)"; \
		"$(VPY)" -m pytest -q -p no:cacheprovider || exit 1; \
		(cd example_project && "$(abspath $(VPY))" -m pytest -q -p no:cacheprovider) || exit 1; \
	done; echo "soak: $(SOAK_RUNS) runs in a row passed beside a busy loop"

docs: $(STAMP)
	"$(VPY)" -m pip install -q --disable-pip-version-check mkdocs
	"$(VPY)" -m mkdocs build --strict

clean:
	rm -rf "$(VENV)" build dist site *.egg-info example_project/db.sqlite3* example_project/.demo
