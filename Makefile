# The course's commands. `make run` and `make test` set everything up on first use.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
READY  := $(VENV)/.installed
ARGS   ?=

# stage file by number: $(call stage_file,3) -> stages/stage03_autograd.py
stage_file = $(wildcard stages/stage$(shell printf '%02d' $(1) 2>/dev/null)_*.py)

.PHONY: help setup run smoke test diff gradcheck bench compare site batch-experiment clean exercise check solution notebooks

help:
	@echo "make run [STAGE=N] [ARGS='...']  run the course (or one stage), one epoch each on the default data"
	@echo "make test                       run the test suite"
	@echo "make smoke                      every stage for 20 steps on synthetic data"
	@echo "make diff FROM=2 TO=3           the lesson between two stages, as a unified diff"
	@echo "make gradcheck                  finite differences against the analytic gradients"
	@echo "make bench                      speed and memory of every stage, side by side"
	@echo "make compare                    every stage on the same batches: differences from stage 1, figure"
	@echo "make site                       the course as a static web page: site/index.html"
	@echo "make batch-experiment           accuracy per epoch and per second for batch sizes 4..256"
	@echo "make setup                      create $(VENV) and install the pinned packages"
	@echo "make exercise STAGE=N [FORCE=1] work/stageNN_<name>.py: stage N with its lesson's functions to write"
	@echo "make check STAGE=N              check your work/ file against PyTorch and stage N-1, function by function"
	@echo "make solution STAGE=N           the diff from your work/ file to the course's stage N"
	@echo "make notebooks                  every stage as a Jupyter notebook in notebooks/"

$(READY): requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(READY)

run: $(READY)
	$(PYTHON) -m common.course $(if $(STAGE),--stages $(STAGE)) --epochs 1 $(ARGS)

smoke: $(READY)
	$(PYTHON) -m common.course --epochs 1 --max-steps 20 --data synthetic $(ARGS)

test: $(READY)
	$(PYTHON) -m pytest $(ARGS)

diff:
	@test -n "$(call stage_file,$(FROM))" || { echo "make diff: no stage FROM=$(FROM) (try FROM=2 TO=3)"; exit 2; }
	@test -n "$(call stage_file,$(TO))" || { echo "make diff: no stage TO=$(TO) (try FROM=2 TO=3)"; exit 2; }
	@git --no-pager diff --no-index $(call stage_file,$(FROM)) $(call stage_file,$(TO)); test $$? -le 1

gradcheck: $(READY)
	$(PYTHON) -m common.gradcheck $(ARGS)

bench: $(READY)
	$(PYTHON) -m benchmarks.bench $(ARGS)

compare: $(READY)
	$(PYTHON) -m common.compare $(ARGS)

site: $(READY)
	$(PYTHON) -m common.site $(ARGS)

batch-experiment: $(READY)
	$(PYTHON) -m common.batch_experiment $(ARGS)

clean:
	rm -rf runs site .pytest_cache

# STAGE and FORCE reach common/exercises.py through the environment (make exports the variables
# of its command line), never through the shell.
exercise: $(READY)
	@$(PYTHON) -m common.exercises exercise

check: $(READY)
	@$(PYTHON) -m common.exercises check

solution: $(READY)
	@$(PYTHON) -m common.exercises solution

notebooks: $(READY)
	$(PYTHON) -m common.notebooks
