# Staybook: `make demo` runs a node and the demo; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RABBIT := /usr/lib/rabbitmq/bin/rabbitmq-server

.PHONY: demo serve test unit lint bench drill rabbitmq clean

$(BIN)/staybook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/staybook
	$(BIN)/staybook demo

serve: $(BIN)/staybook
	$(BIN)/staybook serve

# Debian's rabbitmq-server: the tests start private nodes with its binaries.
rabbitmq:
	@test -x $(RABBIT) || { \
	  echo "installing rabbitmq-server from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; }

test: $(BIN)/staybook rabbitmq
	$(BIN)/pytest

unit: $(BIN)/staybook
	$(BIN)/pytest tests/unit tests/actors

lint: $(BIN)/staybook
	$(BIN)/ruff check .
	$(BIN)/mypy .

bench: $(BIN)/staybook rabbitmq
	$(BIN)/python -m bench.throughput

# The long fault drill (DRILL_SECONDS, default 600): prints lost / duplicated / ... counts.
DRILL_SECONDS ?= 600
drill: $(BIN)/staybook rabbitmq
	$(BIN)/python -m tests.faults.drill --seconds $(DRILL_SECONDS) --broker-kill

clean:
	rm -rf $(VENV) .staybook *.egg-info
