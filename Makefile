# raftlog's one entry point. `make run` and `make test` work on a fresh clone: every
# target that needs the virtual environment, the generated code, the Serf binary or the
# development certificates depends on the target that makes them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOOLS  := .tools
SERF   := $(TOOLS)/bin/serf
PROMETHEUS := $(TOOLS)/bin/prometheus
STAMP  := $(VENV)/.installed
PROTO  := api/v1/log.proto
GEN    := api/v1/log_pb2.py api/v1/log_pb2_grpc.py api/v1/log_pb2.pyi
ADMIN_PROTO := api/admin/v1/admin.proto
ADMIN_GEN   := api/admin/v1/admin_pb2.py api/admin/v1/admin_pb2_grpc.py api/admin/v1/admin_pb2.pyi
CERTS  := certs/ca.pem certs/server.pem certs/root-client.pem certs/nobody-client.pem certs/gossip.key
PYTEST_ARGS ?=
# pytest workers of `make test` (pytest-xdist; 0 runs in this process). Most of the suite's
# time is spent waiting on agent processes, so 2 workers halve it on this 2-core machine.
TEST_JOBS ?= 2

.PHONY: help install run cluster test test-shuffle test-alone lint fmt proto certs bench chaos \
        clean typeroot prometheus soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

install: $(STAMP) $(GEN) $(ADMIN_GEN) $(SERF) ## venv, Python deps, generated code, the Serf binary

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml setup.py internal/log/_frames.c | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# protoc sees the contract at raftlog/api/v1/log.proto, so the generated modules import
# each other as raftlog.api.v1.* (the package they are installed in); the admin contract
# likewise at raftlog/api/admin/v1/admin.proto (proto package raftlog.admin.v1).
proto: $(GEN) $(ADMIN_GEN) ## generate the gRPC code from api/v1/log.proto and api/admin/v1/admin.proto
$(GEN) &: $(PROTO) $(STAMP)
	rm -rf .build/proto && mkdir -p .build/proto/src/raftlog/api/v1 .build/proto/out
	cp $(PROTO) .build/proto/src/raftlog/api/v1/log.proto
	$(PY) -m grpc_tools.protoc -I .build/proto/src --python_out=.build/proto/out \
	    --pyi_out=.build/proto/out --grpc_python_out=.build/proto/out \
	    raftlog/api/v1/log.proto
	cp .build/proto/out/raftlog/api/v1/log_pb2*.py* api/v1/

$(ADMIN_GEN) &: $(ADMIN_PROTO) $(STAMP)
	rm -rf .build/proto-admin && mkdir -p .build/proto-admin/src/raftlog/api/admin/v1 \
	    .build/proto-admin/out
	cp $(ADMIN_PROTO) .build/proto-admin/src/raftlog/api/admin/v1/admin.proto
	$(PY) -m grpc_tools.protoc -I .build/proto-admin/src --python_out=.build/proto-admin/out \
	    --pyi_out=.build/proto-admin/out --grpc_python_out=.build/proto-admin/out \
	    raftlog/api/admin/v1/admin.proto
	cp .build/proto-admin/out/raftlog/api/admin/v1/admin_pb2*.py* api/admin/v1/

# Serf: the real HashiCorp agent. Debian's package enables a systemd service on install,
# so it is extracted (never installed) into .tools/.
$(SERF):
	@mkdir -p $(TOOLS)/bin
	@if command -v serf >/dev/null 2>&1; then \
	    ln -sf "$$(command -v serf)" $(SERF); \
	elif command -v apt-get >/dev/null 2>&1; then \
	    rm -rf $(TOOLS)/deb && mkdir -p $(TOOLS)/deb; \
	    ( cd $(TOOLS)/deb && apt-get download serf >/dev/null 2>&1 ) || \
	    { echo "apt-get update (package lists are missing or stale)"; \
	      apt-get update -qq && ( cd $(TOOLS)/deb && apt-get download serf ); }; \
	    dpkg-deb -x $(TOOLS)/deb/serf_*.deb $(TOOLS)/root; \
	    ln -sf ../root/usr/bin/serf $(SERF); \
	else \
	    echo "error: serf not found and apt-get is not available;" \
	         "install HashiCorp Serf 0.9+ on PATH and run make again" >&2; exit 1; \
	fi
	@$(SERF) version | sed -n 1p  # sed reads it all: head could end serf with SIGPIPE (pipefail)

# Prometheus (server and promtool) for the metrics tests: Debian's package, extracted like
# Serf (its postinst would start a system service), never installed.
prometheus: $(PROMETHEUS) ## the Prometheus server and promtool in .tools/bin (metrics tests)
$(PROMETHEUS):
	@mkdir -p $(TOOLS)/bin
	@if command -v apt-get >/dev/null 2>&1; then \
	    rm -rf $(TOOLS)/deb-prometheus && mkdir -p $(TOOLS)/deb-prometheus; \
	    ( cd $(TOOLS)/deb-prometheus && apt-get download prometheus >/dev/null 2>&1 ) || \
	    { echo "apt-get update (package lists are missing or stale)"; \
	      apt-get update -qq && ( cd $(TOOLS)/deb-prometheus && apt-get download prometheus ); }; \
	    dpkg-deb -x $(TOOLS)/deb-prometheus/prometheus_*.deb $(TOOLS)/root-prometheus; \
	    ln -sf ../root-prometheus/usr/bin/promtool $(TOOLS)/bin/promtool; \
	    ln -sf ../root-prometheus/usr/bin/prometheus $(PROMETHEUS); \
	elif command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
	    ln -sf "$$(command -v promtool)" $(TOOLS)/bin/promtool; \
	    ln -sf "$$(command -v prometheus)" $(PROMETHEUS); \
	else \
	    echo "error: prometheus not found and apt-get is not available;" \
	         "install Prometheus 2.x (server and promtool) on PATH and run make again" >&2; \
	    exit 1; \
	fi
	@$(PROMETHEUS) --version 2>&1 | sed -n 1p

certs: $(CERTS) ## development CA, server/peer and client certificates, gossip key in certs/
$(CERTS) &: | $(STAMP) $(GEN)
	$(VENV)/bin/raftlog cert --out-dir certs

run: install certs ## start a local node (or cluster) on the embedded default config
	$(VENV)/bin/raftlog dev-cluster --nodes 3 --data-dir .data/cluster --certs-dir certs

# mypy cannot follow setuptools' editable import hook, so it reads the package through a
# tree of symlinks that has the installed layout (raftlog/, raftlog/api, raftlog/cmd).
typeroot:
	@rm -rf .build/typeroot && mkdir -p .build/typeroot/raftlog
	@for f in internal/*; do ln -s "../../../$$f" .build/typeroot/raftlog/; done
	@ln -s ../../../api .build/typeroot/raftlog/api
	@ln -s ../../../cmd .build/typeroot/raftlog/cmd

lint: install typeroot ## ruff (lint + format check), mypy --strict, and the import layers (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p raftlog
	PYTHONPATH=.build/typeroot $(VENV)/bin/lint-imports --cache-dir .build/import-linter

fmt: install ## format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install lint $(PROMETHEUS) ## the whole test suite (includes lint; TEST_JOBS=n workers, default 2)
	$(VENV)/bin/pytest -n $(TEST_JOBS) --dist worksteal $(PYTEST_ARGS)

# pytest-randomly is off by default (addopts: -p no:randomly); -p randomly turns it on.
# The seed is drawn here and printed first (pytest -q would hide pytest-randomly's own
# header line); SEED=N replays that order.
ifeq ($(SEED),)
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
test-shuffle: install $(PROMETHEUS) ## the suite in a random order (SEED=n replays one; the seed is printed)
	@echo "test-shuffle: --randomly-seed=$(SEED) (replay: make test-shuffle SEED=$(SEED))"
	$(VENV)/bin/pytest -p randomly -p no:cacheprovider --randomly-seed=$(SEED) $(PYTEST_ARGS)

test-alone: install $(PROMETHEUS) ## each test file in its own pytest run (TESTS=paths, default: tests)
	tests/run_each_alone.sh $(TESTS)

bench: install certs ## benchmarks, printed as ratios against baselines measured in the same run
	$(PY) bench/run.py

# The long-run storage scenario of issue 12 (not part of `make test`): 3 agents, RECORDS
# records of 100 B in batches of 1000, kill -9 all, restart; AGENT_ARGS adds agent flags
# (a retention run: AGENT_ARGS='--retention-bytes 500000000').
RECORDS ?= 10000000
AGENT_ARGS ?=
soak: install ## soak: memory, disk, restart time at RECORDS records (docs/commitlog.md)
	RECORDS=$(RECORDS) AGENT_ARGS="$(AGENT_ARGS)" $(PY) bench/soak.py

# Fault injection against a real cluster (docs/reliability.md): every scenario, including
# the 5-node one, for DURATION seconds of faults each; the table in docs/reliability.md
# is regenerated from the results even when a scenario fails (the run still fails).
# PROFILE=long: only the long run, one cluster under a stream of every nemesis for
# DURATION seconds (default 1800; issue 13: 1,000 fault events), results in
# .build/chaos-long and their own table in docs/reliability.md. CHAOS_SEED=n replays one.
PROFILE ?= full
ifeq ($(PROFILE),long)
DURATION ?= 1800
# the nodes' data and logs stay in .build/chaos-long/run (pytest's own temporary folders
# are rotated away by later pytest sessions)
CHAOS_TESTS := tests/chaos/test_scenarios.py::test_long_run --basetemp=.build/chaos-long/run
else ifeq ($(PROFILE),full)
DURATION ?= 60
CHAOS_TESTS := tests/chaos
else
CHAOS_TESTS = $(error PROFILE must be full or long, not '$(PROFILE)')
endif
chaos: install certs ## chaos scenarios + fuzz/abuse suite (DURATION=seconds per scenario; PROFILE=long: the long run), docs table
	status=0; CHAOS_DURATION=$(DURATION) CHAOS_PROFILE=$(PROFILE) $(VENV)/bin/pytest -m chaos \
	    $(CHAOS_TESTS) $(PYTEST_ARGS) || status=$$?; \
	$(PY) tests/chaos/report.py; exit $$status

clean: ## remove everything generated (venv, tools, generated code, certificates, data)
	rm -rf $(VENV) $(TOOLS) .build build dist *.egg-info .mypy_cache .ruff_cache \
	    .pytest_cache .hypothesis .data api/v1/*_pb2*.py api/v1/*_pb2*.pyi \
	    api/admin/v1/*_pb2*.py api/admin/v1/*_pb2*.pyi \
	    certs/*.pem certs/*.key
