# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# The quick start on built-in synthetic data (no download): a tiny VQGAN, then its reconstructions.
demo: $(BIN)/.installed
	$(BIN)/vqt train-stage1 recipes/quickstart.toml --force
	$(BIN)/vqt eval synthetic --model runs/quickstart/last.safetensors --n 64 --force

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/sampling.py

clean:
	rm -rf runs .pytest_cache
