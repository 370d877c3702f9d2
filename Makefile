# Two entry points, both from nothing: `make pipeline` (the main job) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup setup-dev site pipeline check-retrain seeds depth3 shuffled routing paper-format tune-full lms-both llm-full ontology hopping hopping-both hopping-full metrics status mlflow-ui test benchmark-training benchmark-patching benchmark-real-lm mlproject
.DELETE_ON_ERROR:

setup: $(VENV)/.installed $(VENV)/.web-assets data/logic_benchmark.parquet
setup-dev: setup $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $@

# Bootstrap, jQuery, Font Awesome, Vega, ... for the HTML pages (Data Docs, plots), so that they render
# offline: npm packages pinned with their sha512 in modules/core/web_assets.json, into the venv.
$(VENV)/.web-assets: modules/core/web_assets.json modules/core/web_assets.py | $(VENV)/.installed
	$(PY) -m modules.core.web_assets fetch
	touch $@

# The tests' and benchmarks' extras (pytest, TransformerLens, nnsight), which the main job does without,
# and Debian's Chromium for the offline-pages test (tests/offline_browser.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt -c requirements.lock
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	touch $@

# The frozen benchmark comes from the DVC remote; on a machine that cannot reach the team's
# remote it is rebuilt from its seed and must match data.dvc's hash byte for byte.
data/logic_benchmark.parquet: data.dvc | $(VENV)/.installed
	dvc pull -q data.dvc 2>/dev/null || { python -m pipelines.logic.freeze_benchmark >/dev/null && \
	  python -m pipelines.ontology.freeze_vocabulary >/dev/null && \
	  python -m pipelines.hopping.freeze_world >/dev/null && \
	  dvc commit -q -f data.dvc && git diff --quiet -- data.dvc || { git checkout -- data.dvc; \
	  echo "error: data/ rebuilt from its seed does not match data.dvc (generator drift)" >&2; exit 1; }; }
	touch $@

# Outputs a teammate already pushed to the DVC remote are pulled first, so that `dvc repro` runs only
# what changed (training is reproducible bit for bit only on the same CPU and thread count: README).
pipeline: setup
	@dvc pull -q --allow-missing dvc.yaml data.dvc 2>/dev/null \
	  || echo "note: could not pull from the DVC remote ($$(dvc remote default)); every changed stage runs here"
	dvc repro
	@$(PY) -m pipelines.site --reports reports
	@echo
	@$(PY) -m modules.core.metrics_summary artifacts/logic/ artifacts/logic_llm/ artifacts/ontology/validation.json \
	  artifacts/hopping/validation.json
	@echo
	@echo "Results: artifacts/logic/ (data, models, metrics, plots); every report, Data Docs and plot: reports/index.html"
	@echo "Real LMs: artifacts/models/ (imported), artifacts/logic_llm/ (behaviour, fine-tuned model, studies), reports/logic_lms/README.md"
	@echo "Open the MLflow UI:  make mlflow-ui   (http://127.0.0.1:5000)"

# The default recipe (params.yaml; docs/logic/notebook.md) writes each chain's rules in proof
# order, ends prompts at the query variable, puts every training problem beside its query twin in
# the same batch (the same rules and facts, the other chain's query: a model that ignores the query
# cannot fit both), trains a head after layer 2 to name each rule conclusion's source, and runs a
# 6,000-step schedule whose learning rate peaks at step 1,201 to its end. `make seeds SEEDS=[0,1,2]`
# runs it for more seeds as one DVC experiment and reports them side by side in reports/logic_depth3.
# Experiments are named by their seeds (depth3-s0-1-2 for [0,1,2]), so a later run with more seeds
# is a new experiment; the seeds already trained in the workspace stay cached (logic.seeds).
SEEDS ?= [0,1,2]
comma := ,
SEED_NAME = s$(subst $(comma),-,$(subst ],,$(subst [,,$(subst $() ,,$(SEEDS)))))
SEEDS_PARAMS := -S logic.report.dir=reports/logic_depth3
seeds: setup
	dvc exp run -n depth3-$(SEED_NAME) $(SEEDS_PARAMS) -S 'logic.seeds=$(SEEDS)'
	@$(PY) -m modules.core.metrics_summary artifacts/logic/
depth3: seeds   # the target's name while this recipe was not yet the default

# The earlier data and training, as the paper writes the task: all rules in one random order, no
# twins, no source head, prompts ending `query W answer`, 4,000 steps stopping at the first perfect
# validation. The model ignores the query (docs/logic/notebook.md); `make shuffled SEEDS=[0]`.
BASELINE_PARAMS := -S logic.data.rule_order=shuffled -S 'logic.data.query_twins=[]' -S logic.data.sizes.train=100000 \
  -S logic.pairs.rule_order=shuffled -S logic.train.source_aux=0.0 -S logic.train.warmup_frac=0.1 \
  -S logic.train.stop_on_perfect=true
SHUFFLED_PARAMS := $(BASELINE_PARAMS) -S logic.data.prompt_end=answer -S logic.pairs.prompt_end=answer \
  -S 'logic.activations.positions=[-3,-2,-1]' -S logic.train.first_token_weight=4.0 -S logic.train.max_steps=4000 \
  -S logic.report.dir=reports/logic_shuffled
shuffled: SEEDS = [0]
shuffled: setup
	dvc exp run -n shuffled-$(SEED_NAME) $(SHUFFLED_PARAMS) -S 'logic.seeds=$(SEEDS)'
	@$(PY) -m modules.core.metrics_summary artifacts/logic/

# The depth-2 routing recipe (docs/logic/notebook.md): shuffled rules, prompts that stop at the
# query variable, depth-5 trace sequences beside the task's training rows, 12,000 steps. About an
# hour per seed on 2 CPU cores; `make routing SEEDS=[1,3,4]`.
ROUTING_PARAMS := $(BASELINE_PARAMS) -S logic.data.depth=2 -S logic.data.traces.size=100000 \
  -S logic.data.traces.depth=5 -S logic.pairs.depth=2 -S logic.train.first_token_weight=1.0 \
  -S logic.train.max_steps=12000 -S logic.train.val_every=1000 -S logic.report.dir=reports/logic_routing
routing: SEEDS = [1]
routing: setup
	dvc exp run -n routing-depth2-$(SEED_NAME) $(ROUTING_PARAMS) -S 'logic.seeds=$(SEEDS)'
	@$(PY) -m modules.core.metrics_summary artifacts/logic/

# The default recipe with the paper's prompt ending, `... query W answer`: the first proof token is
# read at `answer`, one position after the query, and the source head also names the query
# variable's source after layer 2 (what the paper's probe reads there; docs/logic/notebook.md,
# "The paper's format"). PAPER_AUX=0.0 trains without the head; reports/logic_paper_format_aux<PAPER_AUX>.
PAPER_AUX ?= 1.0
# Probes on 5,000 test problems, as the paper's (about 1,000 linear queries for its linear-source probe).
PAPER_PARAMS := -S logic.data.prompt_end=answer -S logic.pairs.prompt_end=answer -S 'logic.activations.positions=[-3,-2,-1]' \
  -S logic.activations.n_examples=5000
paper-format: SEEDS = [0,1,2]
paper-format: setup
	dvc exp run -n paper-format-aux$(PAPER_AUX)-$(SEED_NAME) $(PAPER_PARAMS) -S logic.train.source_aux=$(PAPER_AUX) \
	  -S logic.train.source_aux_query=$(if $(filter 0 0.0,$(PAPER_AUX)),false,true) \
	  -S logic.report.dir=reports/logic_paper_format_aux$(PAPER_AUX) -S 'logic.seeds=$(SEEDS)'
	@$(PY) -m modules.core.metrics_summary artifacts/logic/

# The tuning study over the real schedule (the main job's tune_logic is a 3-trial smoke run): the
# steps to the first perfect validation, minimised, failures penalised; Hyperband over optimizer
# steps from 1,000 to 6,000; each trial a nested MLflow run; Optuna's sqlite storage resumes it, and
# several `make tune-full` processes on one RDB storage share the study (docs/logic/notebook.md).
TUNE_TRIALS ?= 24
tune-full: setup
	dvc exp run -n tune-steps-$(TUNE_TRIALS) -S logic.tune.objective=steps_to_perfect -S logic.tune.pruner=hyperband \
	  -S logic.tune.min_steps=1000 -S logic.tune.trial_max_steps=6000 -S logic.tune.n_trials=$(TUNE_TRIALS) tune_logic
	@cat artifacts/logic/tuning/best_params.yaml

# Study 1's LLM half at the main job's size on both packaged models: the DVC experiment lms-cpu-both,
# reported in reports/logic_lms_both (about 12 minutes on 2 CPU cores once SmolLM2's stages are cached).
lms-both: setup
	dvc exp run -n lms-cpu-both -S 'logic_llm.models=[smollm2-135m,gemma3-270m]' -S logic_llm.report_dir=reports/logic_lms_both
	@$(PY) -m modules.core.metrics_summary artifacts/logic_llm/

# Study 1's LLM half at full size (docs/logic/llm.md): 150 flip pairs (300 prompts) for accuracy and
# for every cell of the behaviour grid (0, 2, 4 and 6 shots; OR and AND); head-output, query, key and
# value patching on the first 25 pairs (50 prompts); fine-tuning as in params.yaml. One DVC experiment
# per model list, reported in reports/logic_lms_full; hours on 2 CPU cores.
LLM_MODELS ?= [smollm2-135m,gemma3-270m]
LLM_FULL_PARAMS := -S 'logic_llm.models=$(LLM_MODELS)' -S logic_llm.prompts.n_pairs=150 \
  -S 'logic_llm.fewshot.shots=[0,2,4,6]' -S logic_llm.fewshot.pairs=150 -S 'logic_llm.study.sites=[head_out,q,k,v]' \
  -S logic_llm.study.max_pairs=25 -S logic_llm.report_dir=reports/logic_lms_full
llm-full: setup
	dvc exp run --temp -n llm-full-$(subst $(comma),-,$(subst ],,$(subst [,,$(LLM_MODELS)))) $(LLM_FULL_PARAMS) report_logic_llm
	@$(PY) -m modules.core.metrics_summary artifacts/logic_llm/

# Study 2 (Dutta et al. 2024; docs/ontology/study.md) on params.yaml ontology.models at the CPU size:
# behaviour on 100 items, head analyses per subtask, reports/ontology. Runs the main pipeline's
# data, checks and model import first when they are not current.
ontology: setup
	dvc repro pipelines/ontology/dvc.yaml
	@$(PY) -m pipelines.site --reports reports
	@$(PY) -m modules.core.metrics_summary artifacts/ontology/

# Study 3 (Biran et al. 2024; docs/hopping/study.md) at the CPU size: the from-scratch Llama tuned, trained
# and analysed on the fictional knowledge graph, and params.yaml hopping.models on the curated real-world
# set (E0, back-patching with its controls, E1-E4), reports/hopping. Runs the main pipeline's data,
# checks and model import first when they are not current.
hopping: setup
	dvc repro pipelines/hopping/dvc.yaml
	@$(PY) -m pipelines.site --reports reports
	@$(PY) -m modules.core.metrics_summary artifacts/hopping/

# Study 3 at the CPU size on both packaged models (the DVC experiment hopping-cpu-both, reported in
# reports/hopping_both; a model is imported by the main pipeline's import_lm when it is in logic_llm.models).
HOPPING_MODELS ?= [smollm2-135m,gemma3-270m]
hopping-both: setup
	dvc exp run -n hopping-cpu-both -S 'logic_llm.models=$(HOPPING_MODELS)' -S 'hopping.models=$(HOPPING_MODELS)' \
	  -S hopping.report_dir=reports/hopping_both pipelines/hopping/dvc.yaml
	@$(PY) -m modules.core.metrics_summary artifacts/hopping/

# Study 3 at full size (docs/hopping/study.md): every query of each model's target set and 100 it gets
# right for back-patching, every target layer of the Patchscope grid sampled with the paper's three
# seeds, 100 queries a subset for E1-E4; a day on 2 CPU cores, an hour or two on a GPU.
HOPPING_FULL_PARAMS := -S 'logic_llm.models=$(HOPPING_MODELS)' -S 'hopping.models=$(HOPPING_MODELS)' \
  -S hopping.backpatch.incorrect_items=100000 -S hopping.backpatch.correct_items=100 -S hopping.layers.items=100 \
  -S hopping.layers.target_stride=1 -S 'hopping.layers.samples=[0,1,2]' -S hopping.graph_layers.items=100 \
  -S hopping.report_dir=reports/hopping_full
hopping-full: setup
	dvc exp run --temp -n hopping-full-$(subst $(comma),-,$(subst ],,$(subst [,,$(HOPPING_MODELS)))) $(HOPPING_FULL_PARAMS) \
	  pipelines/hopping/dvc.yaml:report_hopping
	@$(PY) -m modules.core.metrics_summary artifacts/hopping/

test: setup-dev
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

benchmark-training: setup
	$(PY) -m benchmarks.bench_training

benchmark-patching: setup-dev
	$(PY) -m benchmarks.bench_patching --threads 1

# The same sweeps on the real SmolLM2-135M weights (imported by the main job's import_lm stage).
benchmark-real-lm: setup-dev
	dvc repro import_lm@smollm2-135m
	$(PY) -m benchmarks.bench_real_lm --threads 1

# Every pipeline's metrics, one line each (`dvc metrics show` prints one row a file, too wide to read);
# `make metrics PREFIXES=artifacts/hopping/` for one study.
PREFIXES ?=
# Retrain seed 0 on this machine and check it against the committed run: its test exact match must
# lie inside the committed 95% CI (weights are identical only on the same CPU and thread count).
check-retrain: setup
	dvc pull -q --allow-missing dvc.yaml 2>/dev/null || true
	$(PY) -m pipelines.logic.check_retrain --seed 0 --data artifacts/logic/data \
	  --benchmark data/logic_benchmark.parquet --committed artifacts/logic

metrics: setup
	@$(PY) -m modules.core.metrics_summary $(PREFIXES)

# One line a pipeline: up to date, or its stale and never-run stages (bare `dvc status` also lists the
# GPU-only 7B pipeline, never run on a laptop).
status: setup
	@PATH=$(VENV)/bin:$$PATH $(PY) -m modules.core.pipeline_status

# The workspace's store, its artifact paths first pointed at this clone's mlartifacts/ (after a move).
mlflow-ui: setup
	@$(PY) -c "from modules.core.tracking import relocate_artifacts as r, tracking_uri as u; r(u())"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# reports/index.html: every report rendered to HTML, the Data Docs, the DVC plots page; all offline.
site: setup
	$(PY) -m pipelines.site --reports reports

# MLproject is generated from the DVC pipelines (tests/core/test_mlproject.py checks it is current).
mlproject: setup
	$(PY) -m modules.core.mlproject
