# Staybook: `make demo` runs a node and the demo; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RABBIT := /usr/lib/rabbitmq/bin/rabbitmq-server

.PHONY: demo serve cluster broker-cluster test unit lint bench bench-nodes drill drill-cluster drill-broker drill-store rabbitmq postgresql nodejs clean

$(BIN)/staybook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/staybook
	$(BIN)/staybook demo

serve: $(BIN)/staybook
	$(BIN)/staybook serve

# Three nodes on one local RabbitMQ and one store; Ctrl-C stops them all.
cluster: $(BIN)/staybook
	$(BIN)/staybook cluster --nodes 3

# A 3-node RabbitMQ cluster on ports 5701-5703 (stop: staybook broker cluster stop).
broker-cluster: $(BIN)/staybook rabbitmq
	$(BIN)/staybook broker cluster start

# Debian's rabbitmq-server: the tests start private nodes with its binaries.
rabbitmq:
	@test -x $(RABBIT) || { \
	  echo "installing rabbitmq-server from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; }

# Debian's postgresql: the store's tests start private servers with its pg_ctl
# (as the postgres user when run as root: console/pg_ctl_as_postgres).
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing postgresql from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# Debian's nodejs and npm: the contract tests run @asyncapi/parser and the Node.js
# producer in examples/node-producer (its packages: npm ci, done by the tests).
nodejs:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

# CI runs this (.ci/run): the lint first, then every test.
test: $(BIN)/staybook rabbitmq postgresql nodejs lint
	$(BIN)/pytest

unit: $(BIN)/staybook postgresql
	$(BIN)/pytest tests/unit tests/actors

# ruff, mypy --strict, the import contracts (docs/architecture.md), and
# tests/lint_tests.py: no test that cannot fail.
lint: $(BIN)/staybook
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	$(BIN)/python -m tests.lint_tests

bench: $(BIN)/staybook rabbitmq
	$(BIN)/python -m bench.throughput

# Scale-out: 1, 2 and 3 nodes on a private PostgreSQL; commands/s and CPU per command.
bench-nodes: $(BIN)/staybook rabbitmq postgresql
	$(BIN)/python -m bench.throughput --nodes 3

# The long fault drill (DRILL_SECONDS, default 600): prints lost / duplicated / ... counts.
DRILL_SECONDS ?= 600
drill: $(BIN)/staybook rabbitmq
	$(BIN)/python -m tests.faults.drill --seconds $(DRILL_SECONDS) --broker-kill

# The long cluster drill (CLUSTER_DRILL_SECONDS, default 600): three nodes on PostgreSQL,
# SIGKILLed and restarted in rotation, one added and one removed; failover times.
CLUSTER_DRILL_SECONDS ?= 600
drill-cluster: $(BIN)/staybook rabbitmq postgresql
	$(BIN)/python -m tests.faults.cluster_drill --seconds $(CLUSTER_DRILL_SECONDS)

# The store drill: two nodes on a private PostgreSQL restarted, killed (outages of 1, 5
# and 30 s) and cut off under traffic; per fault the outage and the time without service.
drill-store: $(BIN)/staybook rabbitmq postgresql
	$(BIN)/python -m tests.faults.store_drill

# Two nodes on PostgreSQL and a 3-node RabbitMQ cluster: the broker's leader node
# killed, a rolling restart, a broker node and a Staybook node down at once.
drill-broker: $(BIN)/staybook rabbitmq postgresql
	$(BIN)/python -m tests.faults.broker_drill

clean:
	rm -rf $(VENV) .staybook *.egg-info
