# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
VENV ?= .venv
# Debian's python3 sees Debian's Mininet; use it when it can make virtual environments.
PYTHON ?= $(shell /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && echo /usr/bin/python3 || echo python3)
BIN := $(VENV)/bin
SYSTEM_PACKAGES := mininet openvswitch-switch iperf3 ethtool iputils-ping iproute2 cgroup-tools \
	prometheus prometheus-node-exporter python3-venv python3-pip docker.io debootstrap chromium poppler-utils \
	libtcmalloc-minimal4
# Containernet is not on PyPI: its wheel is kept in vendor/ (see vendor/containernet/SOURCE.txt).
CONTAINERNET_WHEEL := vendor/containernet/mininet-3.0-py3-none-any.whl
comma := ,
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)
# Faucet, the OpenFlow controller of `topo up --controller faucet`, in a venv of its own: it pins
# eventlet and os-ken, which mlfo's own environment need not carry.
FAUCET_VENV ?= .venv-faucet
FAUCET_VERSION := 1.10.12

.PHONY: demo test check install install-test system ovs docker faucet lint lint-tools clean

demo: install
	$(BIN)/mlfo demo

# Two workers: the tests that build the emulated network run one after another in one of them (tests/conftest.py).
# The two virtual environments are installed side by side (about 25 s less than one after the other).
test: system
	@$(MAKE) --no-print-directory -j2 install-test faucet
	$(BIN)/python -m pytest -n 2 --dist loadscope

$(BIN)/python:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,containers,partitions,tracking]'
	$(BIN)/python -m pip install --quiet --no-deps $(CONTAINERNET_WHEEL)

faucet: $(FAUCET_VENV)/bin/faucet

$(FAUCET_VENV)/bin/faucet:
	$(PYTHON) -m venv $(FAUCET_VENV)
	$(FAUCET_VENV)/bin/python -m pip install --quiet faucet==$(FAUCET_VERSION)

# As root: the system pieces the integration tests need (Open vSwitch in userspace mode,
# Mininet, iperf3, Prometheus). Without root this says so and the tests needing them skip.
system:
ifeq ($(IS_ROOT),yes)
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(MAKE) --no-print-directory ovs
	@$(MAKE) --no-print-directory docker
else
	@echo "not root: skipping system packages (Open vSwitch, Mininet, iperf3, Prometheus); tests needing them will skip"
endif

# Open vSwitch's userspace datapath: this kernel may have no openvswitch module. Its main thread
# allocates and frees a burst of packet buffers for every port each time it wakes: with tcmalloc
# (when installed) it takes a fifth to a quarter less CPU than with glibc's malloc (docs/measurements.md).
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4))
ovs:
	@if ovs-vsctl --timeout=2 show >/dev/null 2>&1; then echo "Open vSwitch is running"; \
	else $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) /usr/share/openvswitch/scripts/ovs-ctl --system-id=random start >/dev/null 2>&1 || true; \
	ovs-vsctl --timeout=5 show >/dev/null && echo "Open vSwitch started (userspace datapath$(if $(TCMALLOC),$(comma) tcmalloc))"; fi

# The Docker engine for Containernet hosts (started in the background when it is not running).
docker:
	@if docker info >/dev/null 2>&1; then echo "Docker engine is running"; \
	else setsid dockerd >/var/log/mlfo-dockerd.log 2>&1 < /dev/null & \
	for i in $$(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done; \
	docker info >/dev/null 2>&1 && echo "Docker engine started (log: /var/log/mlfo-dockerd.log)"; fi

# The fast loop while working: unit tests and lint, no root, no network, no Flower run (under 2 min).
check: install-test lint-tools
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/ruff check mlfo_toolkit tests bench
	$(BIN)/mypy mlfo_toolkit

lint: install-test lint-tools
	$(BIN)/ruff check mlfo_toolkit tests bench
	$(BIN)/mypy mlfo_toolkit

lint-tools: $(BIN)/python
	@$(BIN)/python -m pip install --quiet ruff mypy types-PyYAML types-requests types-psutil

clean:
	rm -rf $(VENV) $(FAUCET_VENV) .pytest_cache
