# Developer and CI entry points for django-redis-logstream.
#
# Everything here must work on a fresh machine that has only Python and access
# to the package registries (PyPI, Debian's apt): the venv is built from
# pyproject.toml, and the system tools the tests need (redis-server, valgrind,
# rabbitmq-server) are installed with apt-get when missing and we are root.
# The browser tests drive Debian's chromium with the playwright package (a dev
# dependency); playwright's own browser download is never used.

SHELL := /bin/sh
.DEFAULT_GOAL := test

VENV := .venv
VENV_PY := $(VENV)/bin/python
# The stamp is newer than pyproject.toml once `pip install -e ".[dev]"` has
# succeeded for its current contents, so repeated runs skip pip entirely.
STAMP := $(VENV)/.installed

# First interpreter that is at least the project's minimum (3.10); 3.11 is
# what the project is developed and tested with.
PYTHON ?= $(shell for p in python3.11 python3; do \
	if $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then \
	echo $$p; break; fi; done)

PYTEST_ARGS ?=

.PHONY: venv install test lint demo bench bench-viewers bench-cluster bench-consumer bench-amqp \
	soak tools clean distclean

venv install: $(STAMP)

$(VENV_PY):
	@test -n "$(PYTHON)" || { echo "No python3 >= 3.10 found on PATH."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_PY)
	@echo "Installing the package and its dependencies into $(VENV) (first run, or after pyproject.toml changed; about a minute)..."
	$(VENV_PY) -m pip install --disable-pip-version-check --quiet -e ".[dev]"
	@touch $(STAMP)

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

# The whole suite runs twice: on the newest Django LTS (5.2, in .venv) with
# the newest redis-py, and on the oldest versions supported (Django 4.2, the
# django-redis release for it, redis-py 5.2 and a Celery that supports it) in
# .venv-django42.
OLD_VENV := .venv-django42
OLD_STAMP := $(OLD_VENV)/.installed

$(OLD_STAMP): pyproject.toml Makefile | $(VENV_PY)
	@test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --disable-pip-version-check --quiet \
		-e ".[dev]" "Django>=4.2,<5.0" "django-redis>=5.4,<7" "redis>=5.2,<5.3" \
		"celery>=5.3,<5.6"
	@touch $(OLD_STAMP)

test: install tools $(OLD_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV_PY) -m pytest $(PYTEST_ARGS)
	@echo "--- again on Django 4.2 ---"
	$(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

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
