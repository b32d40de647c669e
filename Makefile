# pulse-fm developer commands. Everything runs inside ./.venv, created on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= stores/syn400
EVAL   ?= stores/syneval400
REPO   ?= model_repository
SELECT ?= stores/synsel300
TEST   ?= stores/syntest1000
STEPS  ?= 2000
# PPG drops the recipe's Gaussian-noise augmentation (README "Results": chosen on the seed-2
# selection cohort); ECG keeps the recipe's
PPG_AUGMENT ?= ppg-no-noise
ECG_AUGMENT ?= ecg
PPG_RUN := runs/$(PPG_AUGMENT)-$(STEPS)
ECG_RUN := runs/$(ECG_AUGMENT)-$(STEPS)

.PHONY: install run constraints pretrain model evaluate evaluate-real evaluate-select evaluate-test ablate bench bench-serving bench-litserve test test-fast test-slow lint format type-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

## pin every dependency at what a fresh install resolves today (review the diff, then commit)
constraints: install
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' > constraints.txt.new
	mv constraints.txt.new constraints.txt

install: $(STAMP)

## the main job on the embedded default: the gateway on the shipped model, onnxruntime in-process
## (no Triton, no Redis); http://127.0.0.1:8080/docs
run: install
	$(BIN)/pulse-fm serve

## pretraining demo: a SYNTHETIC cohort -> segment store -> tiny pretraining (~9 min on 2 cores)
pretrain: install
	$(BIN)/pulse-fm prepare --synthetic 200 --out stores/syn200
	$(BIN)/pulse-fm train --preset tiny --store stores/syn200 --out runs/tiny

## the shipped model's SYNTHETIC cohorts, with real NSTDB noise: 400 participants to pretrain on,
## 400 others (a different seed) to probe on
$(STORE)/store.json: | install
	$(BIN)/pulse-fm prepare --synthetic 400 --seed 0 --recordings-per-participant 3 --noise-bank nstdb --out $(STORE)
$(EVAL)/store.json: | install
	$(BIN)/pulse-fm prepare --synthetic 400 --seed 1 --recordings-per-participant 2 --noise-bank nstdb --out $(EVAL)
## two more SYNTHETIC cohorts: one to choose between variants on (seed 2), and a larger one to
## test the chosen models on (seed 3; 300 test participants instead of 120)
$(SELECT)/store.json: | install
	$(BIN)/pulse-fm prepare --synthetic 300 --seed 2 --recordings-per-participant 2 --noise-bank nstdb --out $(SELECT)
$(TEST)/store.json: | install
	$(BIN)/pulse-fm prepare --synthetic 1000 --seed 3 --recordings-per-participant 2 --noise-bank nstdb --out $(TEST)
$(PPG_RUN)/encoder.pt: $(STORE)/store.json
	$(BIN)/pulse-fm train --preset tiny --store $(STORE) --out $(PPG_RUN) --steps $(STEPS) \
	    --set lr_step_intervals=10 --set augment=$(PPG_AUGMENT)
$(ECG_RUN)/encoder.pt: $(STORE)/store.json
	$(BIN)/pulse-fm train --preset tiny --modality ecg --store $(STORE) --out $(ECG_RUN) --steps $(STEPS) \
	    --set lr_step_intervals=10 --set augment=$(ECG_AUGMENT)
runs/ablate/ablations.json: $(STORE)/store.json $(EVAL)/store.json
	$(BIN)/pulse-fm ablate --store $(STORE) --eval-store $(EVAL) --out runs/ablate --steps 300

## ablations: positives, KoLeo, momentum (reduced budget; SYNTHETIC)
ablate: runs/ablate/ablations.json

## the evaluation report (probes, baselines, real-recording checks, ablations) -> reports/default
evaluate: $(PPG_RUN)/encoder.pt $(ECG_RUN)/encoder.pt $(EVAL)/store.json runs/ablate/ablations.json
	$(BIN)/pulse-fm evaluate --encoder $(PPG_RUN)/encoder.pt --encoder $(ECG_RUN)/encoder.pt \
	    --store $(EVAL) --ablations runs/ablate/ablations.json --out reports/default

## the real-recording benchmark of the latest published models (a few minutes; no store needed)
evaluate-real: install
	$(BIN)/pulse-fm evaluate --real-only --encoder $(call latest,ppg) --encoder $(call latest,ecg) --out reports/real

## compare variants on the selection cohort: make evaluate-select PPG_AUGMENT=ppg STEPS=2000
evaluate-select: $(PPG_RUN)/encoder.pt $(ECG_RUN)/encoder.pt $(SELECT)/store.json
	$(BIN)/pulse-fm evaluate --encoder $(PPG_RUN)/encoder.pt --encoder $(ECG_RUN)/encoder.pt \
	    --store $(SELECT) --no-real --out reports/select-$(PPG_AUGMENT)-$(ECG_AUGMENT)-$(STEPS)

## the latest published models (no training needed) on the larger test cohort
latest = $$(ls -d $(REPO)/$(1)_encoder/[0-9]*/ | sort -V | tail -n 1)model.onnx
evaluate-test: $(TEST)/store.json
	$(BIN)/pulse-fm evaluate --encoder $(call latest,ppg) --encoder $(call latest,ecg) \
	    --store $(TEST) --no-real --out reports/test1000

## the shipped default model, from scratch (~1.5 h on 2 cores): make model REPO=/tmp/repo to compare
model: evaluate
	$(BIN)/pulse-fm publish --encoder $(PPG_RUN)/encoder.pt --probes reports/default/probes_ppg.json --repo $(REPO)
	$(BIN)/pulse-fm publish --encoder $(ECG_RUN)/encoder.pt --probes reports/default/probes_ecg.json --repo $(REPO)

## every benchmark, one after the other (~30 min): results/*.json and RESULTS.md, all from this run
bench: install .venv-litserve/bin/python
	$(BIN)/python -m benchmarks.gateway
	$(BIN)/python -m benchmarks.overload
	$(BIN)/python -m benchmarks.overload --connection-per-request
	$(BIN)/python -m benchmarks.overload --connection-per-request --env PULSEFM_EVENT_LOOP=uvloop --out benchmarks/results/overload_uvloop_new_connections.json
	$(BIN)/python -m benchmarks.overload --env PULSEFM_WORKERS=2 --out benchmarks/results/overload_workers2.json
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.serving_profile
	$(BIN)/python -m benchmarks.serving --litserve .venv-litserve/bin/python
	$(BIN)/python -m benchmarks.train_throughput --preset tiny --batch-size 64 --steps 20 --repeats 3

## the gateway against LitServe 0.2.19 (its own environment: it pins its own FastAPI), ~3 min
.venv-litserve/bin/python:
	$(PYTHON) -m venv .venv-litserve
	.venv-litserve/bin/python -m pip install -q litserve==0.2.19 onnxruntime numpy scipy
bench-litserve: install .venv-litserve/bin/python
	$(BIN)/python -m benchmarks.serving --litserve .venv-litserve/bin/python

## the serving benchmark alone (wrk; installs it with apt-get when run as root): ~10 min, then
## where the gateway's time goes (py-spy under wrk): ~1 min
bench-serving: install
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.serving_profile

## what CI runs: lint, type-check, then the fast test suite
test: install lint type-check
	$(BIN)/python -m pytest -m "not slow" -q --durations=15

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not real_data" -q -x

test-slow: install
	$(BIN)/python -m pytest -m slow -q --durations=5

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type-check: install
	$(BIN)/mypy pulsefm training service tests benchmarks scripts

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
