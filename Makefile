# Two commands to try Brainy: `make demo` and `make test`. Each sets itself up.
# `make bench` runs every benchmark in bench/ (figures: bench/results/<name>.json).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint format clean

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
# bench/results/<name>.json; BENCH_ARGS are passed to every one.
bench: $(STAMP)
	@set -e; for f in bench/*.py; do \
		name=$$(basename $$f .py); \
		case $$name in __init__) continue;; esac; \
		echo "== bench/$$name"; \
		$(BIN)/python -m bench.$$name $(BENCH_ARGS); \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .brainy .pytest_cache .ruff_cache
