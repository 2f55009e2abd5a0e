# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench gpu-check clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# The quick start on built-in synthetic scenes (no download), about 14 minutes on 2 CPU cores:
# a tiny VQGAN, a depth VQGAN, an unconditional transformer and a depth-conditioned one (both with
# local attention), trained on crops of 1024x576 scenes at the scale they are sampled at; the depth
# model samples the scene of `vqt scene` at 1024x576 with its rolling cache, and `vqt eval` scores
# it against the unconditional one. Outputs: runs/ (models, metrics, curves, grids) and demo/.
# The unconditional model trains on the image codes of the depth task's shards (the same crops).
demo: $(BIN)/.installed
	$(BIN)/vqt train-stage1 recipes/quickstart.toml --force
	$(BIN)/vqt train-stage1 recipes/quickstart-depth-stage.toml --force
	$(BIN)/vqt tokenize recipes/quickstart-depth-local.toml --out runs/quickstart-depth-tokens --force
	$(BIN)/vqt train-stage2 recipes/quickstart-stage2-local.toml --set data.tokens=runs/quickstart-depth-tokens --force
	$(BIN)/vqt train-stage2 recipes/quickstart-depth-local.toml --force
	$(BIN)/vqt scene --size 1024x576 --seed 7 --world graded -o demo/scene --force
	$(BIN)/vqt sample --model runs/quickstart-depth-local/last.safetensors --cond demo/scene/depth.png --size 1024x576 --top-k 8 --cfg-scale 2 -o demo/depth --force
	$(BIN)/vqt sample --model runs/quickstart-stage2-local/last.safetensors --size 512x288 --top-k 8 -o demo/unconditional.png --force
	$(BIN)/vqt eval recipes/quickstart-depth-local.toml --model runs/quickstart-depth-local/last.safetensors \
		--baseline runs/quickstart-stage2-local/last.safetensors --n 256 --grid demo/depth-eval.png --force

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/stage1.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/tokenize_speed.py

# When a GPU is at hand (under 8 minutes on one): bf16 against fp32 stage-1 training, stage 2 under
# torch.compile, NCCL DDP on every GPU, and sampling speed at the paper's size. Prints JSON and writes
# it to runs/gpu-check.json; the figures go in benchmarks/README.md with the date.
gpu-check: $(BIN)/.installed
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu-check.json --force

clean:
	rm -rf runs demo .pytest_cache
