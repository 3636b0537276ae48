# Developer and CI entry points for django-redis-logstream.
#
# Everything here must work on a fresh machine that has only Python and access
# to the package registries (PyPI, Debian's apt): the venv is built from
# pyproject.toml, and the system tools the tests need (redis-server, valgrind,
# rabbitmq-server) are installed with apt-get when missing and we are root.
# The browser tests drive Debian's chromium with the playwright package (a dev
# dependency); playwright's own browser download is never used.

SHELL := /bin/sh
comma := ,
.DEFAULT_GOAL := test

VENV := .venv
VENV_PY := $(VENV)/bin/python
OLD_VENV := .venv-django42

# The suite runs on the newest and the oldest Python the project supports
# (pyproject's classifiers): .venv on 3.13, .venv-django42 on 3.10. Each is
# found as pythonX.Y on PATH or as pyenv's copy (installed but not the active
# version); where it is not installed, python3 stands in, with a notice.
# find_python(X.Y): the first of those that runs and is X.Y, or nothing.
find_python = $(shell for p in python$(1) \
	$${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(1).*/bin/python$(1) \
	$$(pyenv root 2>/dev/null)/versions/$(1).*/bin/python$(1); do \
	if $$p -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != "$(1)")' >/dev/null 2>&1; \
	then echo $$p; break; fi; done)
NEWEST := 3.13
OLDEST := 3.10
PYTHON ?= $(call find_python,$(NEWEST))
OLD_PYTHON ?= $(call find_python,$(OLDEST))

PYTEST_ARGS ?=

.PHONY: venv install old-venv test lint demo bench bench-viewers bench-cluster bench-consumer \
	bench-amqp soak tools clean distclean

# ensure_venv(dir, python, wanted X.Y, pip arguments, files): make `dir` a venv
# of `python` (python3 when empty), rebuilt when it runs any other Python (a
# .venv from an older Makefile, an upgraded interpreter), and pip-installed
# again only when `files` changed since its stamp, so repeated runs skip pip.
define ensure_venv
	@py='$(2)'; \
	if [ -z "$$py" ]; then \
	  py=python3; echo "python$(3) not found: $(1) uses python3 ($$(python3 -V 2>&1))."; \
	fi; \
	$$py -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 \
	  || { echo "No python3 >= 3.10 found on PATH."; exit 1; }; \
	want=$$($$py -c 'import sys; print(sys.version.split()[0])'); \
	have=$$($(1)/bin/python -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true); \
	if [ "$$have" != "$$want" ]; then \
	  if [ -n "$$have" ]; then echo "$(1) runs Python $$have, not $$want: rebuilding it."; fi; \
	  rm -rf $(1) && $$py -m venv $(1) || exit 1; \
	fi; \
	stale=; for f in $(5); do [ $$f -nt $(1)/.installed ] && stale=1; done; \
	if [ ! -f $(1)/.installed ] || [ -n "$$stale" ]; then \
	  echo "Installing the package and its dependencies into $(1) (Python $$want) with pip:" \
	    "about a minute on a first run, silent meanwhile..."; \
	  $(1)/bin/python -m pip install --disable-pip-version-check --quiet $(4) || exit 1; \
	  touch $(1)/.installed; \
	fi
endef

venv install:
	$(call ensure_venv,$(VENV),$(PYTHON),$(NEWEST),-e ".[dev]",pyproject.toml)

# The oldest versions supported: Django 4.2, the django-redis release for it,
# redis-py 5.2 and a Celery that supports it.
old-venv:
	$(call ensure_venv,$(OLD_VENV),$(OLD_PYTHON),$(OLDEST),-e ".[dev]" "Django>=4.2$(comma)<5.0" \
		"django-redis>=5.4$(comma)<7" "redis>=5.2$(comma)<5.3" "celery>=5.3$(comma)<5.6",pyproject.toml Makefile)

# ensure_apt(command, debian package): install the package when the command is
# missing. Services that the package would start (Debian's redis-server starts
# one on 6379) are kept stopped with a temporary policy-rc.d: the tests run
# their own servers and must never depend on, or collide with, a system one.
define ensure_apt
	@if ! command -v $(1) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "$(1) is needed by the tests: run 'sudo apt-get install $(2)' first."; exit 1; \
	  fi; \
	  echo "$(1) not found: installing Debian package $(2) (its service is not started)"; \
	  created=; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created=1; \
	  fi; \
	  rc=0; \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(2); } || rc=$$?; \
	  if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  if [ $$rc -ne 0 ]; then echo "apt-get install $(2) failed"; exit $$rc; fi; \
	  command -v $(1) >/dev/null 2>&1 || { echo "$(1) still missing after installing $(2)"; exit 1; }; \
	fi
endef

tools:
	$(call ensure_apt,redis-server,redis-server)
	$(call ensure_apt,valgrind,valgrind)
	$(call ensure_apt,chromium,chromium)
	$(call ensure_apt,rabbitmq-server,rabbitmq-server)

# The whole suite runs twice: on the newest Python, the newest Django LTS
# (5.2) and the newest redis-py in .venv, and on the oldest of each in
# .venv-django42.
VERSIONS := import sys, django, redis; \
	print(f"--- Python {sys.version.split()[0]}, Django {django.__version__}, redis-py {redis.__version__} ---")

test: install tools old-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@$(VENV_PY) -c '$(VERSIONS)'
	$(VENV_PY) -m pytest $(PYTEST_ARGS)
	@$(OLD_VENV)/bin/python -c '$(VERSIONS)'
	$(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: install
	$(VENV_PY) testproject/demo.py

bench: install tools
	$(VENV_PY) bench/bench_handler.py

bench-viewers: install tools
	$(VENV_PY) bench/bench_viewers.py

bench-cluster: install tools
	$(VENV_PY) bench/bench_cluster.py

bench-consumer: install tools
	$(VENV_PY) bench/bench_consumer.py

bench-amqp: install tools
	$(VENV_PY) bench/bench_amqp.py

soak: install tools
	$(VENV_PY) bench/soak.py

clean:
	rm -rf .demo .pytest_cache .ruff_cache build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(OLD_VENV)
