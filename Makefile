# Two entry points, both from nothing: `make pipeline` (the main job) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup pipeline test benchmark-training benchmark-patching
.DELETE_ON_ERROR:

setup: $(VENV)/.installed data/logic_benchmark.parquet

$(VENV)/.installed: requirements.txt requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $@

# The frozen benchmark comes from the DVC remote; on a machine that cannot reach the team's
# remote it is rebuilt from its seed and must match data.dvc's hash byte for byte.
data/logic_benchmark.parquet: data.dvc | $(VENV)/.installed
	dvc pull -q data.dvc 2>/dev/null || { python -m pipelines.freeze_benchmark >/dev/null && \
	  dvc commit -q -f data.dvc && git diff --quiet -- data.dvc || { git checkout -- data.dvc; \
	  echo "error: data/ rebuilt from its seed does not match data.dvc (generator drift)" >&2; exit 1; }; }
	touch $@

pipeline: setup
	dvc repro
	@echo
	@dvc metrics show 2>/dev/null  # quiet about the GPU pipeline's metrics, absent until it runs
	@echo
	@echo "Results: artifacts/logic/ (data, models, metrics, plots), reports/data_docs/logic/index.html"
	@echo "Open the MLflow UI:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000"

test: setup
	$(PY) -m pytest -q tests

benchmark-training: setup
	$(PY) -m benchmarks.bench_training

benchmark-patching: setup
	$(PY) -m benchmarks.bench_patching --threads 1
