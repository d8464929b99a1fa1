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

# `make help`: one row per command, grouped by what a learner is doing; printf aligns the columns
ROW := @printf "  %-35s  %s\n"
help:
	@echo "The course's commands. STAGE=N picks a stage; ARGS='...' passes options on."
	@echo ""
	@echo "learn"
	$(ROW) "make diff FROM=2 TO=3 [ARGS=--full]" "the lesson: the later docstring, then the diff of the code"
	$(ROW) "make exercise STAGE=N [FORCE=1]" "do it yourself: stage N with its lesson taken out, in work/"
	$(ROW) "make check STAGE=N" "check your work/ file against PyTorch and stage N-1"
	$(ROW) "make solution STAGE=N" "the diff from your work/ file to the stage"
	$(ROW) "make mistakes" "a gallery of classic mistakes and their symptoms"
	$(ROW) "make site" "the course as a web site: site/index.html"
	$(ROW) "make notebooks" "every stage as a Jupyter notebook in notebooks/"
	@echo ""
	@echo "run"
	$(ROW) "make run [STAGE=N] [ARGS='...']" "the course (or one stage), one epoch each, then what next"
	$(ROW) "make smoke" "every stage for 20 steps on synthetic data"
	$(ROW) "make ddp [NPROC=2] [ARGS='...']" "stage 11 in NPROC processes under torchrun"
	@echo ""
	@echo "check"
	$(ROW) "make test [ARGS='-m stage3']" "the whole test suite (or a part of it)"
	$(ROW) "make test-quick" "the equivalence, claim and layout tests, not the slow ones"
	$(ROW) "make gradcheck" "finite differences against stage 1's gradients, and a figure"
	$(ROW) "make compare" "every stage on the same batches against stage 1, and a figure"
	@echo ""
	@echo "tools"
	$(ROW) "make bench" "speed and memory of every stage, idle and busy"
	$(ROW) "make batch-experiment" "accuracy per epoch and per second, batch sizes 4 to 256"
	$(ROW) "make setup" "create $(VENV) and install the pinned packages"
	$(ROW) "make clean" "remove runs/, site/, notebooks/ and the caches (never work/)"

$(READY): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --editable .
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
