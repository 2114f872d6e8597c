# rmseg_ros developer entry points. Two commands set up a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BOOT_PY ?= python3
STAMP := $(VENV)/.setup-stamp

# Everything that starts ROS nodes stays on loopback; tests pick their own ROS_DOMAIN_ID.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA
export HOME ?= $(CURDIR)
# ament_index_python finds the package in the colcon install prefix and the venv.
export AMENT_PREFIX_PATH := $(CURDIR)/install/rmseg_ros:$(abspath $(VENV))
export PYTHONPATH := $(CURDIR)
COLCON := $(VENV)/bin/colcon --log-base log
COLCON_COMMON := --paths . --build-base build --install-base install

.PHONY: help setup build test test-slow lint bench demo data data-extra demo-bag weights results teacher-half teacher-long robult-results robotseg-results robotseg-long rss-results clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: $(STAMP)  ## create .venv from the pinned requirements, the package editable in it (idempotent)

# Editable: `python bench/x.py`, `python -m training.cli` and the console scripts (rmseg-train,
# rmseg-bringup, ...) of $(VENV)/bin import this checkout from any directory.
$(STAMP): requirements.txt requirements-dev.txt setup.py
	@test -x $(PY) || $(BOOT_PY) -m venv $(VENV)
	@echo "installing pinned requirements into $(VENV) ..."
	@$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(VENV)/COLCON_IGNORE $@

build: setup  ## colcon build into install/
	@mkdir -p build install log && touch build/COLCON_IGNORE install/COLCON_IGNORE log/COLCON_IGNORE
	$(COLCON) build $(COLCON_COMMON) --event-handlers console_cohesion-

test: build  ## colcon test (pytest, excluding slow tests) + ruff + mypy (rmseg_ros/, setup.cfg)
	$(COLCON) test $(COLCON_COMMON) --event-handlers console_direct+ --return-code-on-test-failure \
	  || { $(COLCON) test-result --test-result-base build --verbose; exit 1; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-slow: build  ## only the tests marked slow
	$(COLCON) test $(COLCON_COMMON) --event-handlers console_direct+ --return-code-on-test-failure \
	  --pytest-args -m slow

lint: setup  ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# RECORD=1: each script through bench/record.py, which keeps its figures in docs/results.{json,md}
BENCH_SCRIPTS = $(filter-out bench/record.py bench/timing.py,$(wildcard bench/*.py))
bench: setup  ## every benchmark script, one figure per line (RECORD=1: also into docs/results); on a quiet machine
	@for b in $(BENCH_SCRIPTS); do echo "# $$b"; TQDM_DISABLE=1 $(PY) $(if $(RECORD),bench/record.py) $$b; done

# The default data set (deterministic from the seeds; regenerated, never committed).
DATA ?= data
DATA_SCENES ?= 360
DATA_FRAMES ?= 10
TRAIN := $(PY) -m training.cli

# Rendered as two halves of the seed range side by side (A: seeds 0.., B: the rest).
HALF_SCENES = $(shell echo $$(( $(DATA_SCENES) / 2 )))
data: setup  ## render the default sim data set and cache its shards (data/)
	$(TRAIN) sim --out $(DATA)/sim/A --scenes $(HALF_SCENES) --frames $(DATA_FRAMES) --seed 0 \
	  --no-progress & \
	$(TRAIN) sim --out $(DATA)/sim/B --scenes $$(( $(DATA_SCENES) - $(HALF_SCENES) )) \
	  --frames $(DATA_FRAMES) --seed $(HALF_SCENES) --no-progress & wait
	for split in train val test; do \
	  $(TRAIN) dataset --bags $(DATA)/sim/A/$$split $(DATA)/sim/B/$$split \
	    --out $(DATA)/cache/$$split; done
	$(MAKE) data-extra

# More training scenes for the RMMSS models only (train split of seeds from 10000 and 20000, as
# two halves side by side; val and test stay the splits above, Robult and RSS keep cache/train):
# the students fitted the objects of the training scenes and confused unseen ones (docs/results.md,
# "Small objects: the data").
EXTRA_TRAIN_SCENES ?= 280
HALF_EXTRA = $(shell echo $$(( $(EXTRA_TRAIN_SCENES) / 2 )))
data-extra: setup  ## render and cache the extra RMMSS training scenes (data/cache/train_extra)
	$(TRAIN) sim --out $(DATA)/sim/C --scenes $(HALF_EXTRA) --frames $(DATA_FRAMES) --seed 10000 \
	  --split train --no-progress & \
	$(TRAIN) sim --out $(DATA)/sim/D --scenes $$(( $(EXTRA_TRAIN_SCENES) - $(HALF_EXTRA) )) \
	  --frames $(DATA_FRAMES) --seed 20000 --split train --no-progress & wait
	$(TRAIN) dataset --bags $(DATA)/sim/C/train $(DATA)/sim/D/train --out $(DATA)/cache/train_extra

# RMMSS on the default data (DESIGN.md section 5; budgets in the config). The teacher is shared;
# every seed of SEEDS trains its own robust (HPDM) model, compute-matched dropout-only baseline
# (robust + FSM steps) and FSM student; the first seed's student is shipped. Each run resumes
# and a finished one is skipped. On 2 cores: `make -j2 weights` (each training times its steps
# at one thread and at all cores and keeps the faster, so two jobs side by side settle on one
# thread each; TRAIN_THREADS=N fixes the count, for bit-reproducible reruns).
RMMSS ?= training/configs/rmmss.yaml
RUNS ?= runs/rmmss
SEEDS ?= 0 1 2
TRAIN_THREADS ?= 0
TRAIN_OPTS = --set run.threads=$(TRAIN_THREADS) $(if $(filter-out 0,$(TRAIN_THREADS)),--set run.num_workers=0)
steps = $(if $(1),--steps $(1))
SHIP_SEED = $(firstword $(SEEDS))
MODELS_OF = $(RUNS)/seed$(1)/robust/model.safetensors $(RUNS)/seed$(1)/dropout/model.safetensors \
  $(RUNS)/seed$(1)/fsm/model.safetensors

$(RUNS)/teacher/model.safetensors:
	$(TRAIN) teacher --config $(RMMSS) --out $(RUNS)/teacher $(TRAIN_OPTS) $(call steps,$(TEACHER_STEPS))
$(RUNS)/seed%/robust/model.safetensors: $(RUNS)/teacher/model.safetensors
	$(TRAIN) robust --config $(RMMSS) --out $(@D) --seed $* --teacher $< $(TRAIN_OPTS)
$(RUNS)/seed%/dropout/model.safetensors: $(RUNS)/teacher/model.safetensors
	$(TRAIN) robust --config $(RMMSS) --out $(@D) --seed $* --teacher $< --no-distill --matched \
	  --set run.keep_checkpoints=1000 $(TRAIN_OPTS)
$(RUNS)/seed%/fsm/model.safetensors: $(RUNS)/teacher/model.safetensors $(RUNS)/seed%/robust/model.safetensors
	$(TRAIN) fsm --config $(RMMSS) --out $(@D) --seed $* --teacher $< \
	  --robust $(RUNS)/seed$*/robust/model.safetensors $(TRAIN_OPTS)

weights: setup $(foreach s,$(SEEDS),$(call MODELS_OF,$(s)))  ## RMMSS: teacher -> per seed: robust (HPDM), compute-matched dropout-only baseline, FSM student -> weights/
	$(TRAIN) export --config $(RMMSS) --checkpoint $(RUNS)/seed$(SHIP_SEED)/fsm \
	  --out weights/rmmss_student.safetensors

# Test samples per evaluation (0: all; N: N evenly spaced). Every model: all modalities + the 15
# subsets; with EVAL_CASES=all the shipped seed's models and the teacher also get zero-filled
# modalities, RMM, NM and the sensor failures (~45 min more on 2 cores). One torch thread per
# evaluation (EVAL_THREADS): `make -j2 results` runs two side by side.
EVAL_SAMPLES ?= 0
EVAL_THREADS ?= 1
EVAL = OMP_NUM_THREADS=$(EVAL_THREADS) $(TRAIN) evaluate --config $(RMMSS) --shards '$(DATA)/cache/test/*' --max-samples $(EVAL_SAMPLES)
EVAL_CASES ?= subsets
FAST_CASES = --cases full,subsets --missing remove
ship_cases = $(if $(and $(filter all,$(EVAL_CASES)),$(filter $(1),$(SHIP_SEED))),,$(FAST_CASES))
$(RUNS)/eval_teacher/eval.json: $(RUNS)/teacher/model.safetensors
	$(EVAL) --checkpoint $< --out $(@D) $(if $(filter all,$(EVAL_CASES)),,$(FAST_CASES))
$(RUNS)/seed%/eval_robust/eval.json: $(RUNS)/seed%/robust/model.safetensors
	$(EVAL) --checkpoint $< --out $(@D) $(call ship_cases,$*)
$(RUNS)/seed%/eval_dropout/eval.json: $(RUNS)/seed%/dropout/model.safetensors
	$(EVAL) --checkpoint $< --out $(@D) $(call ship_cases,$*)
$(RUNS)/seed%/eval_fsm/eval.json: $(RUNS)/seed%/fsm/model.safetensors
	$(EVAL) --checkpoint $< --out $(@D) $(call ship_cases,$*)

# The dropout-only baseline at the HPDM robust model's step count (ROBUST_STEPS, the robust stage's
# run.steps; a multiple of run.ckpt_every): what distillation adds at equal steps, apart from
# the extra steps the compute-matched baseline gets for the FSM's.
ROBUST_STEPS ?= 1500
$(RUNS)/seed%/eval_dropout_at_robust/eval.json: $(RUNS)/seed%/dropout/model.safetensors
	$(EVAL) --checkpoint $(RUNS)/seed$*/dropout/checkpoints/step_$(shell printf %08d $(ROBUST_STEPS)).safetensors \
	  --out $(@D) $(FAST_CASES)

# The shipped student on TRAIN_EVAL_SAMPLES evenly spaced training frames (all modalities): its
# gap to the test split is what it fitted of the training scenes' objects.
TRAIN_EVAL_SAMPLES ?= 330
$(RUNS)/eval_fsm_train/eval.json: $(RUNS)/seed$(SHIP_SEED)/fsm/model.safetensors
	OMP_NUM_THREADS=$(EVAL_THREADS) $(TRAIN) evaluate --config $(RMMSS) \
	  --shards '$(DATA)/cache/train/*' '$(DATA)/cache/train_extra/*' \
	  --max-samples $(TRAIN_EVAL_SAMPLES) --checkpoint $< --out $(@D) --cases full

# HELDOUT=DIR: also evaluate the shipped student on cached shards outside the default splits
HELDOUT ?=
$(RUNS)/eval_heldout/eval.json: $(RUNS)/seed$(SHIP_SEED)/fsm/model.safetensors
	$(TRAIN) evaluate --config $(RMMSS) --shards '$(HELDOUT)/*' --checkpoint $< --out $(@D) \
	  --cases full,subsets --missing remove

# The FSM runs too few steps for a validation curve: its middle and last checkpoints are scored on
# the validation samples instead (FSM_HALF = its middle step, a multiple of run.ckpt_every).
FSM_HALF ?= 250
VAL_EVAL = OMP_NUM_THREADS=$(EVAL_THREADS) $(TRAIN) evaluate --config $(RMMSS) --shards '$(DATA)/cache/val/*' --max-samples 120 --cases full,subsets --missing remove
$(RUNS)/seed%/eval_fsm_half_val/eval.json: $(RUNS)/seed%/fsm/model.safetensors
	$(VAL_EVAL) --checkpoint $(RUNS)/seed$*/fsm/checkpoints/step_$(shell printf %08d $(FSM_HALF)).safetensors --out $(@D)
$(RUNS)/seed%/eval_fsm_end_val/eval.json: $(RUNS)/seed%/fsm/model.safetensors
	$(VAL_EVAL) --checkpoint $< --out $(@D)

results: setup $(if $(HELDOUT),$(RUNS)/eval_heldout/eval.json) $(RUNS)/eval_fsm_train/eval.json $(RUNS)/eval_teacher/eval.json $(foreach s,$(SEEDS),$(RUNS)/seed$(s)/eval_robust/eval.json $(RUNS)/seed$(s)/eval_dropout/eval.json $(RUNS)/seed$(s)/eval_fsm/eval.json $(RUNS)/seed$(s)/eval_dropout_at_robust/eval.json) $(foreach s,$(SEEDS),$(RUNS)/seed$(s)/eval_fsm_half_val/eval.json $(RUNS)/seed$(s)/eval_fsm_end_val/eval.json)  ## evaluate the RMMSS models on the test split -> docs/results (per-class tables, seeds' mean and s.e.)
	$(PY) -m training.rmmss.report --runs $(RUNS) --seeds $(SEEDS) --docs docs

# Convergence checks of the teacher: the same run (seed, data, schedule shape) with half and with
# twice its steps (the config's stages.teacher run.steps), scored on the test split; not distilled
# from. `make results` reports each one that exists.
TEACHER_HALF_STEPS ?= 4000
TEACHER_LONG_STEPS ?= 16000
$(RUNS)/teacher_half/model.safetensors:
	$(TRAIN) teacher --config $(RMMSS) --out $(RUNS)/teacher_half $(TRAIN_OPTS) --steps $(TEACHER_HALF_STEPS)
$(RUNS)/teacher_long/model.safetensors:
	$(TRAIN) teacher --config $(RMMSS) --out $(RUNS)/teacher_long $(TRAIN_OPTS) --steps $(TEACHER_LONG_STEPS)
$(RUNS)/eval_teacher_%/eval.json: $(RUNS)/teacher_%/model.safetensors
	$(EVAL) --checkpoint $< --out $(@D) $(FAST_CASES)
teacher-half: setup $(RUNS)/eval_teacher_half/eval.json  ## the teacher at half its steps (convergence check) -> `make results` reports it
teacher-long: setup $(RUNS)/eval_teacher_long/eval.json  ## the teacher at twice its steps (convergence check) -> `make results` reports it

ROBULT ?= training/configs/robult.yaml
robult-results: setup  ## Robult vs supervised-only at 10/5% of the recordings labelled, 3 seeds (resumes) -> docs/results
	OMP_NUM_THREADS=1 $(PY) -m training.robult.experiment --config $(ROBULT)

robotseg-results: setup  ## RobotSeg: sim sets + kinematic masks, 5 variants, flow and kinematic baselines, J&F per set (resumes) -> docs/results, weights/
	OMP_NUM_THREADS=1 $(PY) -m training.robotseg.experiment --jobs 2
	cp runs/robotseg/kinematic/model.safetensors weights/robotseg.safetensors
robotseg-long: setup  ## RobotSeg convergence check: the true-mask and kinematic variants at 16000 steps (~1 h each on a core) -> docs/results
	OMP_NUM_THREADS=1 $(PY) -m training.robotseg.experiment --variants robotseg_long kinematic_long --jobs 2 --no-data --no-report
	$(PY) -m training.robotseg.report --docs docs

rss-results: setup  ## RSS ablation (Tables 1-4, headline rows 3 seeds, 2 rows at once, resumes) -> docs/results
	OMP_NUM_THREADS=1 $(PY) -m training.rss.ablation --budget training/configs/rss_ablation.yaml --jobs 2

# The demo scene: the first test-split seed from 1000 whose table holds a box, a mug and a duck
# (chosen by its content, before any model saw it; test/test_sim.py checks it still does).
DEMO_SEED ?= 1039
demo-bag: setup  ## the demo recording: one scene with a LiDAR dropout and an under-exposed stretch
	$(TRAIN) sim --config training/configs/demo_sim.yaml --out $(DATA)/demo --scenes 1 \
	  --frames 80 --seed $(DEMO_SEED) --compression zstd \
	  --failures under_exposure:fraction=0.25 drop:modalities=lidar,gaps=1,gap_s=2.0

DEMO_RATE ?= 0.5
demo: setup  ## replay the demo bag through perception (rmseg-bringup); writes demo_output/
	@test -f $(DATA)/demo/manifest.json || $(MAKE) demo-bag
	$(PY) -m rmseg_ros.demo --bag $(DATA)/demo --out demo_output --rate $(DEMO_RATE)

clean:  ## remove build products (keeps .venv)
	rm -rf build install log .pytest_cache
