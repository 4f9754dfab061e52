# wssfleet: every command an operator or CI runs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Empty: the CLI's default ($WSSFLEET_INVENTORY, else wssfleet.toml's inventory, else the lab).
INVENTORY ?=
INVENTORY_OPTION = $(if $(INVENTORY),-i $(INVENTORY))
VENV := .venv
PY := $(VENV)/bin/python
WSSFLEET := $(VENV)/bin/wssfleet
PYTEST := $(VENV)/bin/pytest -p no:cacheprovider
ARTIFACTS := artifacts

# Debian packages the lab and the tests need (deploying to your own servers needs none of
# them: `make control`): the lab (nspawn, debootstrap, nftables), the unit tests (a real
# redis-server, haproxy to validate rendered configs) and the browser test (Chromium, its
# driver, NSS tools to trust the lab's ACME root).
HOST_PACKAGES := systemd-container debootstrap nftables iproute2 redis-server haproxy \
	openssl openssh-client curl chromium chromium-driver libnss3-tools python3-venv nodejs
HOST_STAMP := build/.host-packages
# Prometheus's promtool, unpacked from Debian's package without installing it (which would
# start a Prometheus here): the unit tests check the rendered config and test the alert rules.
PROMTOOL := build/prometheus/usr/bin/promtool
# The lab's DNS server for DNS-01 (RFC 2136 updates): Knot, unpacked from Debian's packages
# with the libraries this machine lacks, for the same reason (the package starts a server).
KNOTD := build/knot/usr/sbin/knotd
KNOT_PACKAGES := knot libknot13 libdnssec9 libzscanner4 liburcu8 liblmdb0 libxdp1 libbpf1
# The lab's ACME server: the newest Pebble Debian packages, from its testing suite (2.10:
# renewal information and ACME profiles; Debian 12 has 2.4, Debian 13 2.6 without profiles),
# unpacked whatever this machine runs: two binaries that need only the C library.
PEBBLE := build/pebble/usr/bin/pebble
PEBBLE_SUITE := forky
# apt, pointed at that suite of this machine's own mirror, with its own lists under build/.
SUITE_APT = apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$(CURDIR)/build/apt-$(PEBBLE_SUITE)/sources \
	-o Dir::State::Lists=$(CURDIR)/build/apt-$(PEBBLE_SUITE)/lists \
	-o Dir::Cache=$(CURDIR)/build/apt-$(PEBBLE_SUITE)/cache -o Dir::State::Status=/dev/null
VENV_STAMP := $(VENV)/.installed
# sslyze, the TLS scanner the end-to-end tests point at the front door, in a virtualenv of its
# own: it requires cryptography < 47, older than the control package's.
SSLYZE := build/sslyze/bin/sslyze
SSLYZE_VERSION := 6.3.1

.PHONY: help tools control deploy plan rollback drain ready drain-master front-door-move soak verify check status details renew private-ca test test-unit test-lab test-e2e \
	test-browser test-infra test-debian12 lab-up lab-down lint bench bench-storm bench-capacity bench-publish bench-loopback token rotate-secret \
	audit lock-status lock-release logs ssh

help: ## list the commands
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

tools: $(HOST_STAMP) $(VENV_STAMP) $(PROMTOOL) $(PEBBLE) $(KNOTD) $(SSLYZE) ## what the lab and the tests need (Debian packages: root)

control: $(VENV_STAMP) ## only what deploying to your own servers needs: the virtualenv, no root

$(PEBBLE): | $(HOST_STAMP)
	@echo "==> unpacking Pebble from Debian $(PEBBLE_SUITE)'s package"
	@rm -rf build/pebble build/apt-$(PEBBLE_SUITE) && mkdir -p build/apt-$(PEBBLE_SUITE)/sources \
		build/apt-$(PEBBLE_SUITE)/lists/partial build/apt-$(PEBBLE_SUITE)/cache/archives/partial
	@sed -E 's/\b(bookworm|trixie)\b/$(PEBBLE_SUITE)/g' /etc/apt/sources.list.d/debian.sources \
		> build/apt-$(PEBBLE_SUITE)/sources/debian.sources
	@$(SUITE_APT) update >/dev/null
	@cd build/apt-$(PEBBLE_SUITE) && { $(SUITE_APT) download pebble >download.log 2>&1 \
		|| { cat download.log >&2; exit 1; }; }
	@dpkg-deb -x build/apt-$(PEBBLE_SUITE)/pebble_*.deb build/apt-$(PEBBLE_SUITE)/unpacked
	@install -D -m 755 -t build/pebble/usr/bin build/apt-$(PEBBLE_SUITE)/unpacked/usr/bin/pebble \
		build/apt-$(PEBBLE_SUITE)/unpacked/usr/bin/pebble-challtestsrv
	@rm -r build/apt-$(PEBBLE_SUITE)
	@test -x $(PEBBLE)

$(KNOTD): | $(HOST_STAMP)
	@echo "==> unpacking Knot DNS from Debian's packages"
	@rm -rf build/knot build/knot-deb && mkdir -p build/knot-deb
	@cd build/knot-deb && { apt-get download -q $(KNOT_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get download -q $(KNOT_PACKAGES) >/dev/null; }; }
	@for package in build/knot-deb/*.deb; do dpkg-deb -x "$$package" build/knot; done
	@rm -r build/knot-deb
	@LD_LIBRARY_PATH=build/knot/usr/lib/x86_64-linux-gnu $(KNOTD) --version >/dev/null

$(PROMTOOL): | $(HOST_STAMP)
	@echo "==> unpacking promtool from Debian's prometheus package"
	@rm -rf build/prometheus build/prometheus-deb && mkdir -p build/prometheus-deb
	@cd build/prometheus-deb && { apt-get download -q prometheus >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null; }; }
	@dpkg-deb -x build/prometheus-deb/prometheus_*.deb build/prometheus-deb/unpacked
	@install -D -m 755 build/prometheus-deb/unpacked/usr/bin/promtool $(PROMTOOL)
	@rm -r build/prometheus-deb
	@$(PROMTOOL) --version >/dev/null

$(SSLYZE): | $(HOST_STAMP)
	@echo "==> preparing sslyze $(SSLYZE_VERSION) in build/sslyze"
	@rm -rf build/sslyze && python3 -m venv build/sslyze
	@build/sslyze/bin/pip install -q --disable-pip-version-check 'sslyze==$(SSLYZE_VERSION)' 2>&1 \
		| grep -v '^WARNING: Location' || true
	@$(SSLYZE) --help >/dev/null

$(HOST_STAMP): Makefile
	@missing=$$(for p in $(HOST_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		[ "$$(id -u)" = 0 ] || { echo "installing $$missing needs root: run as root or sudo make tools" >&2; exit 1; }; \
		echo "==> installing Debian packages:" $$missing; \
		apt-get update -q >/dev/null; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
	@# Debian's nodejs comes without npm (its npm package); another build of nodejs may carry it.
	@command -v npm >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "installing npm needs root: run as root or sudo make tools" >&2; exit 1; }; \
		echo "==> installing Debian packages: npm"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null; }
	@mkdir -p build && touch $@

$(VENV_STAMP): pyproject.toml service/pyproject.toml clients/python/pyproject.toml
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "python3 needs venv: sudo apt-get install python3-venv" >&2; exit 1; }; \
		echo "==> installing python3-venv"; apt-get update -q >/dev/null; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null; }
	@echo "==> preparing the virtualenv $(VENV)"
	@python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e './service[server]' -e ./clients/python -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import pyinfra, websockets, testinfra, selenium, wssfleet, wssfleet_control, wssfleet_client' && touch $@

# Each target is one call of the `wssfleet` CLI (wssfleet_control/cli.py). Only deploy builds
# the lab (and installs the lab's tools), and only when the inventory is the lab's.
deploy: control ## deploy the fleet (tools and the lab first when the inventory is the lab's, the default; REPLACE_SECRETS=1: give hosts this machine's secrets even where they run with others)
	@if $(WSSFLEET) inventory --is-lab $(INVENTORY_OPTION); then \
		$(MAKE) --no-print-directory tools; fi
	@$(WSSFLEET) deploy $(INVENTORY_OPTION) $(if $(REPLACE_SECRETS),--replace-secrets)

plan: control ## dry run: what a deploy would change, on which host; changes nothing (DIFF=1: how)
	@$(WSSFLEET) plan $(INVENTORY_OPTION) $(if $(DIFF),--diff) $(if $(REPLACE_SECRETS),--replace-secrets)

rollback: control ## every instance back onto the release it ran before (TO=release: a kept one; APP=name: an app's), drained one at a time
	@$(WSSFLEET) rollback $(INVENTORY_OPTION) $(if $(TO),--to $(TO)) $(if $(APP),--app $(APP))

drain: control ## take WORKER=name out of rotation, its clients moved gently to the others
	@$(WSSFLEET) drain $(INVENTORY_OPTION) $(WORKER)

ready: control ## put WORKER=name back in rotation after a drain
	@$(WSSFLEET) ready $(INVENTORY_OPTION) $(WORKER)

drain-master: control ## before maintenance of MASTER=name: front door handed over, its clients moved
	@$(WSSFLEET) drain-master $(INVENTORY_OPTION) $(MASTER)

front-door-move: control ## hand the front door to another master (TO=name: that one) unnoticed
	@$(WSSFLEET) front-door move $(INVENTORY_OPTION) $(if $(TO),--to $(TO))

verify: control ## the testinfra suite against the inventory's hosts
	@$(WSSFLEET) verify $(INVENTORY_OPTION)

status: control ## hosts, services, certificates, connections; exit 1 when something needs attention
	@$(WSSFLEET) status $(INVENTORY_OPTION) $(if $(JSON),--json)

check: control ## validate the inventory and its settings; HOSTS=1 also looks at the hosts (SSH, root, Debian, DNS, port 80 between masters), changing nothing
	@$(WSSFLEET) check $(INVENTORY_OPTION) $(if $(HOSTS),--hosts) $(if $(JSON),--json)

details: control ## what runs where: each worker's releases, each instance's release, age and HAProxy state
	@$(WSSFLEET) details $(INVENTORY_OPTION) $(if $(JSON),--json)

renew: control ## force a certificate renewal through the cron job's own script
	@$(WSSFLEET) renew $(INVENTORY_OPTION)

private-ca: control ## print the private CA's root (certificate_source=private_ca), for clients to trust
	@$(WSSFLEET) private-ca $(INVENTORY_OPTION)

audit: control ## the last runs that held the fleet lock: who, from where, which commit, the outcome (N=20)
	@$(WSSFLEET) audit $(INVENTORY_OPTION) -n $(or $(N),20) $(if $(JSON),--json)

logs: control ## the journals of wssfleet's units merged in time order (HOSTS='worker1 master' or a role; FOLLOW=1; SINCE=-1h)
	@$(WSSFLEET) logs $(INVENTORY_OPTION) $(HOSTS) $(if $(FOLLOW),-f) $(if $(SINCE),--since=$(SINCE))

ssh: control ## a shell on HOST=name with the inventory's SSH settings
	@$(WSSFLEET) ssh $(INVENTORY_OPTION) $(HOST)

lock-status: control ## who holds the fleet lock that deploy, rollback, rotate-secret, drain, ready and renew take
	@$(WSSFLEET) lock status $(INVENTORY_OPTION)

lock-release: control ## remove the fleet lock a dead run left behind
	@$(WSSFLEET) lock release $(INVENTORY_OPTION)

rotate-secret: control ## new token signing key, deployed; old tokens work for token_max_ttl (REVOKE=1: not at all)
	$(WSSFLEET) rotate-secret $(INVENTORY_OPTION) $(if $(REVOKE),--revoke)

token: control ## print a client token: make token SUB=alice [CHANNELS='lobby user.alice.*'] [TTL=3600]
	@$(WSSFLEET) token $(INVENTORY_OPTION) --sub $(or $(SUB),operator) --ttl $(or $(TTL),3600) \
		$(foreach pattern,$(or $(CHANNELS),lobby),--subscribe '$(pattern)' --publish '$(pattern)')

test-unit: tools ## fast tests: the service on loopback with a real redis-server, settings, templates
	$(PYTEST) tests/unit -q -n 6 --dist worksteal

test-lab: tools ## the lab itself: up, idempotent, reachable, and down leaves nothing
	$(PYTEST) tests/lab -q

test-e2e: tools ## end to end through the deployed lab: TLS, WebSockets, deploy behaviour, renewals
	$(PYTEST) tests/e2e -q --durations=40

lint: tools ## ruff at line length 100
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# `make soak`: outside `make test`, for as long as DURATION (2h, 30m, 900s); SEED picks the
# faults and their times; the report goes to REPORT (default artifacts/soak-SEED).
DURATION ?= 2h
SEED ?= 1
soak: deploy ## hours of random faults under a crowd, the whole history checked: DURATION= SEED= REPORT=
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[soak]'
	$(PY) -m tests.soak --duration $(DURATION) --seed $(SEED) $(if $(REPORT),--report $(REPORT))

bench: tools ## wssfleet against the Node ws peer behind the same HAProxy: the performance table
	$(PY) -m bench $(if $(ROUNDS),--rounds $(ROUNDS))

bench-storm: tools ## only make bench's reconnect storm, against the same peer
	$(PY) -m bench --storm-only $(if $(ROUNDS),--rounds $(ROUNDS))

bench-capacity: tools ## only make bench's capacity rows: a process of each side at the open-file limit; the lab's master at haproxy_maxconn when the lab is up
	$(PY) -m bench --capacity-only $(if $(ROUNDS),--rounds $(ROUNDS))

bench-publish: tools ## only make bench's publish rows: throughput, how long a publish waits for its answer, with and without a Redis replica
	$(PY) -m bench --publish-only $(if $(ROUNDS),--rounds $(ROUNDS))

bench-loopback: tools ## the service alone on loopback; COMPARE=<git revision> adds a column for it
	$(PY) -m bench.loopback $(if $(COMPARE),--compare $(COMPARE))

# One pytest summary per suite; the lab is torn down at the end, whatever happened. Each
# stage's time is printed at the end: CI's budget is the suite's largest risk.
# The suite is about the lab, whatever deployment this checkout names (wssfleet.toml).
test: tools ## everything: unit, lab, deploy, end to end (browser included), testinfra
	@status=0; times=""; \
	stage() { started=$$(date +%s); \
		$(MAKE) --no-print-directory $$1 INVENTORY=inventory/lab.py || status=1; \
		times="$$times$$(printf '  %-14s %5d s' $$1 $$(( $$(date +%s) - started )))\n"; }; \
	stage test-unit; \
	for next in test-lab deploy test-e2e verify test-debian12; do \
		if [ $$status = 0 ]; then stage $$next; fi; \
	done; \
	stage lab-down; \
	printf "==> stage times\n$$times"; \
	exit $$status

# The lab is rebuilt on Debian 12 with one master (its hosts only; each release's base is cached).
test-debian12: tools ## a Debian 12 lab: deploy, testinfra, and the TLS and WebSocket end-to-end tests
	@export LAB_SUITE=bookworm LAB_MASTERS=1; \
	$(WSSFLEET) deploy -i inventory/lab.py && $(WSSFLEET) verify -i inventory/lab.py \
		&& $(PYTEST) tests/e2e/test_tls.py tests/e2e/test_websocket.py -q

lab-up: tools ## start the local lab (hosts + Pebble); a no-op when it is up
	@$(WSSFLEET) lab up

lab-down: ## stop and remove the lab (PURGE=1 also drops the cached base filesystem)
	@if [ -x $(WSSFLEET) ]; then $(WSSFLEET) lab down $(if $(PURGE),--purge); else echo "lab: nothing to do (no virtualenv)"; fi
