# faml_jax developer commands. `make install` creates .venv with the package and its pinned
# dependencies (constraints.txt); `make demo` needs nothing more. `make test` adds the test and
# torch extras and runs the lint and the test suite; `make predict-demo` adds the demo extra.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo
TORCH_STAMP := $(VENV)/.installed-torch

.PHONY: install test lint format test-torch demo evolve-demo ensemble-demo predict-demo bench bench-ensemble bench-data bench-predict wheelhouse gpu-install gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(TEST_STAMP)

# Faces in photos (dlib and its landmark model) and scikit-image's sample photographs.
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

# The torch extra (torch 2.14.1 + torchvision 0.29.1, about 5.5 GB, from this machine's disk) is
# installed for the conversion tests, which must run, not skip, here (FAML_JAX_REQUIRE_TORCH).
$(TORCH_STAMP): $(TEST_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,torch]'
	touch $(TORCH_STAMP)

# One pytest worker per core (at most TEST_WORKERS): the suite is mostly XLA compiling small
# programs, one core each.
TEST_WORKERS ?= 4

test: lint $(TORCH_STAMP)
	FAML_JAX_REQUIRE_TORCH=1 $(PY) -m pytest -q -n auto --maxprocesses $(TEST_WORKERS) --dist loadfile

# ruff's lint rules and format check (configured in pyproject.toml); `make format` applies both.
lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(TEST_STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Only the PyTorch-interop tests: ResNet18 conversion (tests/test_pretrained.py).
test-torch: $(TORCH_STAMP)
	FAML_JAX_REQUIRE_TORCH=1 $(PY) -m pytest -q tests/test_pretrained.py

# Train R18+FAML on the embedded synthetic set (CPU-sized preset) and print its test accuracy.
demo: $(STAMP)
	$(PY) -m experiments.train --workdir runs/demo --overwrite

# One FGA generation with a population of 4 on the synthetic set (7 networks; 23 min on our 2-core CPU).
evolve-demo: $(STAMP)
	$(PY) -m experiments.evolve --workdir runs/evolve-demo --overwrite

# T1V / NOI / T2V report of evolve-demo's final population (runs/evolve-demo/ensemble; under a minute).
ensemble-demo: $(STAMP)
	$(PY) -m experiments.ensemble --population runs/evolve-demo --overwrite

# The demo model (runs/demo; trained by `make demo` first if missing) on a real photograph that
# ships with scikit-image: the face found, its expression, the annotated photo and its attention
# map in runs/predict-demo (a model trained on synthetic faces says little about a real face), and
# the README's picture docs/images/predict-demo.png made from them (tools/readme_picture.py).
predict-demo: $(DEMO_STAMP) runs/demo/summary.json
	$(PY) -c "from PIL import Image; from skimage import data; Image.fromarray(data.astronaut()).save('runs/astronaut.png')"
	$(PY) -m experiments.predict --run runs/demo runs/astronaut.png --out runs/predict-demo --explain --overwrite
	$(PY) -m tools.readme_picture runs/predict-demo docs/images/predict-demo.png

runs/demo/summary.json:
	$(MAKE) demo

# Train step vs PyTorch (eager, torch.compile), ensemble evaluation, input pipeline; appends the
# tables to BENCHMARKS.md (tools/bench.py; about 13 min on our 2-core CPU).
bench: $(TORCH_STAMP)
	$(PY) -m tools.bench

# A 6-member ensemble evaluated by a loop of jitted calls, lax.map and vmap (tools/bench_ensemble.py).
bench-ensemble: $(TEST_STAMP)
	$(PY) -m tools.bench_ensemble

# Data loading into the train step: 100 px and 400 px JPEG folders, direct and prepared (tools/bench_data.py).
bench-data: $(TEST_STAMP)
	$(PY) -m tools.bench_data

# Predictions per second: one network and a 6-network ensemble at 224 px, crops and photos (tools/bench_predict.py).
bench-predict: $(TEST_STAMP)
	$(PY) -m tools.bench_predict

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# ---- The offline GPU kit (docs/gpu.md) ---------------------------------------------------
# Here, with internet: the Python 3.12 manylinux wheels a GPU image with jax, flax, optax, orbax,
# chex, torch preinstalled lacks (grain, tensorflow-datasets, array_record, tensorboardX and
# their dependencies; about 10 MiB) into wheelhouse/.
wheelhouse: $(STAMP)
	$(PY) -m tools.wheelhouse --out wheelhouse

# There, offline: install the kit into $(GPU_SITE) (site-packages may be read-only), then run
# every GPU check in one go (at most about 8 minutes on one GPU): $(OUT)/gpu_check.{json,md}.
GPU_PYTHON ?= python3
GPU_SITE ?= .gpu-site
OUT ?= gpu-check
GPU_CHECK_FLAGS ?=
gpu-install:
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) wheelhouse/*.whl

gpu-check:
	PYTHONPATH=$(CURDIR)/$(GPU_SITE):$(CURDIR) FAML_JAX_TEST_FAST_COMPILE=0 $(GPU_PYTHON) -m tools.gpu_check --out $(OUT) $(GPU_CHECK_FLAGS)
