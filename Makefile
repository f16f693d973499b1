# Two commands to try Brainy: `make demo` and `make test`. Each sets itself up.
# `make bench` runs every benchmark in bench/ (figures: bench/results/<name>.json).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint format clean package

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/brainy demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/pytest -q -ra -m "not slow"

# Each bench/<name>.py runs as `python -m bench.<name>` and writes its own
# bench/results/<name>.json. `make bench BENCH=firehose BENCH_ARGS="--commits 5000"`
# runs one benchmark with its own arguments.
BENCH ?= $(filter-out __init__,$(basename $(notdir $(wildcard bench/*.py))))
bench: $(STAMP)
	@set -e; for name in $(BENCH); do \
		echo "== bench/$$name"; \
		$(BIN)/python -m bench.$$name $(BENCH_ARGS); \
	done

# The Lambda deployment package (infra/aws): build/brainy-lambda.zip, byte-identical
# from one build to the next.
package: $(STAMP)
	$(BIN)/python infra/aws/package.py build/brainy-lambda.zip

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .brainy .pytest_cache .ruff_cache
