# The course's commands. `make run` and `make test` set everything up on first use.
# Learner text (ARGS, STAGE, FROM, TO, NPROC) never reaches a shell: make hands the variables of
# its command line to each recipe's environment, and every recipe below is a fixed command that
# reads them from there (common/tools/make.py).
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
READY  := $(VENV)/.installed
MAKE_PY := $(PYTHON) -m common.tools.make

.PHONY: help setup run smoke test test-quick diff ddp gradcheck bench compare site batch-experiment \
        exercise check solution mistakes notebooks clean

help:
	@echo "make run [STAGE=N] [ARGS='...']  run the course (or one stage), one epoch each on the default data"
	@echo "make test [ARGS='-m stage3']     the whole test suite (or a part of it)"
	@echo "make test-quick                 the equivalence and unit tests, without the slow and fuzz tests"
	@echo "make smoke                      every stage for 20 steps on synthetic data"
	@echo "make diff FROM=2 TO=3           the lesson between two stages, as a unified diff"
	@echo "make ddp [NPROC=2] [ARGS='...']  stage 11 in NPROC processes under torchrun"
	@echo "make gradcheck                  finite differences against the analytic gradients, and a figure"
	@echo "make bench                      speed and memory of every stage, side by side, idle and busy"
	@echo "make compare                    every stage on the same batches: differences from stage 1, figure"
	@echo "make site                       the course as a static web page: site/index.html"
	@echo "make batch-experiment           accuracy per epoch and per second for batch sizes 4..256"
	@echo "make exercise STAGE=N [FORCE=1] stage N with its lesson taken out: work/stageNN_<name>.py"
	@echo "make check STAGE=N              check your work/ file against PyTorch and stage N-1"
	@echo "make solution STAGE=N           the diff from your work/ file to the stage"
	@echo "make mistakes                   classic mistakes run beside the correct run, symptoms measured: runs/mistakes/"
	@echo "make notebooks                  every stage as a Jupyter notebook in notebooks/"
	@echo "make setup                      create $(VENV) and install the pinned packages"

$(READY): requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(READY)

run: $(READY)
	@$(MAKE_PY) run

smoke: $(READY)
	@$(MAKE_PY) smoke

test: $(READY)
	@$(MAKE_PY) test

test-quick: $(READY)
	@$(MAKE_PY) test-quick

diff: $(READY)
	@$(MAKE_PY) diff

ddp: $(READY)
	@$(MAKE_PY) ddp

gradcheck: $(READY)
	@$(MAKE_PY) gradcheck

bench: $(READY)
	@$(MAKE_PY) bench

compare: $(READY)
	@$(MAKE_PY) compare

site: $(READY)
	@$(MAKE_PY) site

batch-experiment: $(READY)
	@$(MAKE_PY) batch-experiment

exercise: $(READY)
	@$(MAKE_PY) exercise

check: $(READY)
	@$(MAKE_PY) check

solution: $(READY)
	@$(MAKE_PY) solution

mistakes: $(READY)
	@$(MAKE_PY) mistakes

notebooks: $(READY)
	@$(MAKE_PY) notebooks

clean:  # never work/: it holds the learner's exercises
	rm -rf runs site notebooks .pytest_cache .hypothesis
