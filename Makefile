PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 9090
# Optional index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu: the CPU-only build
# (as the Docker image uses) keeps ~400 MB less resident per process than PyPI's CUDA build.
TORCH_INDEX_URL ?=

.PHONY: venv test test-fast lint run worker bench bench-quality clean

venv: $(STAMP)

# Reinstall only when the requirements change; torch comes from the pinned local wheels.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX_URL),$(PY) -m pip install -q --index-url $(TORCH_INDEX_URL) \
		$$(grep -E '^(torch|torchvision)==' requirements.txt))
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs --durations=20

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e and not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

run: $(STAMP)
	$(PY) -m backend --port $(PORT)

worker: $(STAMP)
	$(PY) -m training.jobs.worker

bench: $(STAMP)
	$(PY) -m benchmarks

# Mask quality and clicks after 1-16 labeled images; QUALITY_ARGS e.g. "--quick" or "--data DIR --checkpoint FILE".
bench-quality: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m benchmarks quality $(QUALITY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
