# The two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint types unit demo bench bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint types unit

# A worker on the embedded SQLite broker, the example tasks sent to it, a warm shutdown.
demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/messaging.py
	$(BIN)/python benchmarks/tasks.py

# The peers that benchmarks/tasks.py runs beside celeriac (Celery on SQLAlchemy/SQLite,
# Redis and RabbitMQ; Dramatiq on Redis and RabbitMQ;
# Huey). Benchmark-only: not dev dependencies, never installed by CI.
bench-deps: $(STAMP)
	$(BIN)/python -m pip install -q 'celery[sqlalchemy,redis]>=5.3' 'huey>=2.5' \
		'dramatiq[rabbitmq,redis]>=1.17'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
