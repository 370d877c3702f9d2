# Two entry points, both from nothing: `make pipeline` (the main job) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup pipeline routing depth3 test benchmark-training benchmark-patching
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

# The depth-2 routing recipe (README, "The routing recipe") as a DVC experiment of the same
# pipeline: prompts that stop at the query variable, depth-5 trace sequences beside the task's
# training rows, 12,000 steps. About an hour per seed on 2 CPU cores; `make routing SEEDS=[1,3,4]`.
SEEDS ?= [1]
ROUTING_PARAMS := -S logic.data.depth=2 -S logic.data.prompt_end=query -S logic.data.traces.size=100000 \
  -S logic.data.traces.depth=5 -S logic.pairs.depth=2 -S logic.pairs.prompt_end=query \
  -S 'logic.activations.positions=[-2,-1]' -S logic.train.first_token_weight=1.0 \
  -S logic.train.max_steps=12000 -S logic.train.val_every=1000 -S logic.report.dir=reports/logic_routing
# Experiments are named by their seeds (routing-depth2-s1-3 for [1,3]), so a later run with more
# seeds is a new experiment; the seeds already trained in the workspace stay cached (logic.seeds).
comma := ,
SEED_NAME := s$(subst $(comma),-,$(subst ],,$(subst [,,$(subst $() ,,$(SEEDS)))))
routing: setup
	dvc exp run -n routing-depth2-$(SEED_NAME) $(ROUTING_PARAMS) -S 'logic.seeds=$(SEEDS)'
	@dvc metrics show

# The depth-3 recipe (README, "The depth-3 recipe"): each chain's rules in proof order, prompts that
# stop at the query variable, every training problem beside its query twin in the same batch (the
# same rules and facts, the other chain's query: a model that ignores the query cannot fit both), a
# head after layer 2 trained to name each rule conclusion's source, the first proof token's loss
# weighted 4 (params.yaml's default), and a 3,000-step schedule whose learning rate peaks at step
# 1,200 (warmup_frac 0.4), as the earlier 4,000- and 12,000-step ones did, then anneals to zero; the
# whole schedule runs (stopping at perfect scores on the 2,000 validation problems left seeds short
# of 100% on the test split; README); `make depth3 SEEDS=[0,1,2]`.
DEPTH3_PARAMS := -S logic.data.rule_order=chain -S logic.data.prompt_end=query -S logic.data.sizes.train=200000 \
  -S 'logic.data.query_twins=[train]' \
  -S logic.pairs.rule_order=chain -S logic.pairs.prompt_end=query -S 'logic.activations.positions=[-2,-1]' \
  -S logic.train.source_aux=1.0 -S logic.train.max_steps=3000 -S logic.train.warmup_frac=0.4 -S logic.train.stop_on_perfect=false \
  -S logic.train.val_every=250 -S logic.report.dir=reports/logic_depth3
depth3: setup
	dvc exp run -n depth3-$(SEED_NAME) $(DEPTH3_PARAMS) -S 'logic.seeds=$(SEEDS)'
	@dvc metrics show

test: setup
	$(PY) -m pytest -q tests

benchmark-training: setup
	$(PY) -m benchmarks.bench_training

benchmark-patching: setup
	$(PY) -m benchmarks.bench_patching --threads 1
