# cardioseg developer commands. Everything runs in a local virtualenv (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only by default: this exact pin takes the CPU wheel where one is provided locally.
# Elsewhere use TORCH_INDEX=https://download.pytorch.org/whl/cpu (CPU) or .../cu128 (GPU).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_DIR ?= demo

.PHONY: install demo lint test bench bench-acdc clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m cardioseg.demo --out $(DEMO_DIR)

lint: install
	$(VENV)/bin/ruff check cardioseg tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

# speed/memory/precision table of this machine -> benchmarks/results/bench.json and benchmarks/README.md
# (BENCH_ARGS="--device cuda" or "--threads 2" or "--quick"; run it on a quiet machine)
BENCH_ARGS ?=
bench: install
	$(PY) benchmarks/bench.py --out benchmarks/results/bench.json --write-readme $(BENCH_ARGS)

bench-acdc: install
	$(PY) benchmarks/acdc_validation.py --out runs/acdc_validation

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
