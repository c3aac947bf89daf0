# `make demo` and `make test` each set up .venv on first use (Python ≥ 3.10), with the
# setuptools pyproject.toml builds with (the wheel test builds without isolation).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= tensorflow-cpu,jax,cli,test,docs
OUT ?= runs/demo
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile -q

.PHONY: demo test lint docs test-tf test-jax test-torch test-jax-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The torch half's extras, apart so that `make demo` does not pull torch: the `torch`
# extra (torch 2.13.0 as pinned; from the package index a CUDA build of several GB where
# no CPU wheel is at hand) and torchattacks, the reference the torch tests compare
# against, without its declared dependencies (torchvision, an old requests: it imports
# neither).
TORCH_STAMP := $(VENV)/.installed-torch
$(TORCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[torch]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps torchattacks
	touch $(TORCH_STAMP)

demo: $(STAMP)
	$(BIN)/keras-lowrank demo --output $(OUT) --overwrite

# Lint, the docs (warnings are errors), then the whole suite on TensorFlow and again
# on JAX (tf_only tests skipped there), then the torch half (tests marked `torch`).
test: lint docs test-tf test-jax test-torch

lint: $(STAMP)
	$(BIN)/ruff check keras_lowrank keras_lowrank_experiments tests benchmarks examples

# The site (guides, methods, API reference from the docstrings) in runs/site.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST)

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PYTEST)

# Every public entry point on Keras' torch backend (tests marked `torch`: the robustness
# tests, AutoAttack against torchattacks on the same weights, and the files of the layers,
# DLRT, compression and analysis; docs/development.md lists them).
test-torch: $(TORCH_STAMP)
	KERAS_BACKEND=torch $(PYTEST) -m torch

# The larger end-to-end scripts (the demos, the transformer, CIFAR and keras-hub examples)
# on JAX too (~30 min here: XLA compile time); the digits examples run in test-jax.
test-jax-slow: $(STAMP)
	KERAS_BACKEND=jax KERAS_LOWRANK_SLOW_JAX=1 $(PYTEST) -m slow_on_jax

bench: $(STAMP)
	$(BIN)/python benchmarks/lr_layer_overhead.py
	$(BIN)/python benchmarks/pgd_vs_cleverhans.py
	$(BIN)/python benchmarks/cka_map_vs_numpy.py
	$(BIN)/python benchmarks/dlrt_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
