# Quick start: `make demo` runs the main job, `make test` runs the tests. Each installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,robotics,report,ogbench,ray,minari,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/o2o demo

test: $(STAMP)
	$(BIN)/ruff check o2o tests benchmarks scripts
	$(BIN)/python -m pytest -n 2  # two workers: the CI machine has 2 cores

lint: $(STAMP)
	$(BIN)/ruff check o2o tests benchmarks scripts
	$(BIN)/ruff format --check o2o tests benchmarks scripts

# Peer library (d3rlpy + torch==2.13.0) in its own venv: d3rlpy pins an older gymnasium.
.venv-bench/.installed: benchmarks/requirements-d3rlpy.txt
	$(PY) -m venv .venv-bench
	.venv-bench/bin/pip install -q --upgrade pip
	.venv-bench/bin/pip install -q -r benchmarks/requirements-d3rlpy.txt
	touch .venv-bench/.installed

bench-venv: .venv-bench/.installed

bench: $(STAMP) bench-venv
	$(BIN)/python benchmarks/update_speed.py

clean:
	rm -rf $(VENV) .venv-bench
