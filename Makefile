# Two set-up-free entry points: `make demo` and `make test`.
# Both create .venv (a Python 3.8-3.10 interpreter with nnabla 1.39.0) on first use.
PY := .venv/bin/python
DEMO_OUT ?= output_demo
WORKERS ?= 2

# The demo preset: Fashion-MNIST subset sized to finish in under 20 minutes on 2 CPU cores.
DEMO_ARGS := -o $(DEMO_OUT) -ds fashion_mnist --n-train 2000 --n-val 1000 --n-test 2000 \
	-e 10 -bs 16 --lr 0.02 --no-augment -nt 1 -r 0 10 30 100 300 --workers $(WORKERS)

# The paper's full protocol (GPU-scale: about 10 days for MNIST on this 2-core CPU, README
# "Regenerating the paper"): 10 trials, batch 32, 20 epochs, the published defaults otherwise
# (lr 0.05, augmentation, removal sizes 0..30000), both drivers, then one merged analysis in
# $(PAPER_OUT)/summary and $(PAPER_OUT)/fig. Interrupted? Run it again: finished units are kept.
DATASET ?= mnist
PAPER_OUT ?= output_paper_$(DATASET)
PAPER_ARGS = -ds $(DATASET) -nt 10 -e 20 --workers $(WORKERS)
PAPER_BATCH_SIZES ?= 64 128 256
PAPER_FOLDERS = $(PAPER_OUT)/sgd_influence $(PAPER_OUT)/influence_functions

.PHONY: venv data demo test test-all check-fresh clean-demo paper paper-batch-size check-paper-dataset

venv:
	@bash tools/setup_env.sh

data:
	@bash tools/fetch_fashion_mnist.sh >/dev/null

demo: venv data
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q tests

# Slow, root only: `make test` from nothing on freshly debootstrapped Debian 12 / Ubuntu 22.04
# machines, a pyenv machine and this one (README "Two commands"). FRESH=... picks scenarios.
FRESH ?=
check-fresh:
	bash tools/check_fresh_machines.sh $(FRESH)

clean-demo:
	rm -rf $(DEMO_OUT)

check-paper-dataset:
	@case "$(DATASET)" in mnist|cifar10) ;; *) echo "error: make paper needs DATASET=mnist or DATASET=cifar10, got '$(DATASET)'" >&2; exit 2;; esac

# Random comes from the SGD driver's folder (same seeds and data), so the influence-functions
# driver runs Influence_functions only.
paper: venv check-paper-dataset
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py -o $(PAPER_OUT)/sgd_influence $(PAPER_ARGS) -bs 32
	PYTHONUNBUFFERED=1 $(PY) eval_influence_functions.py -o $(PAPER_OUT)/influence_functions $(PAPER_ARGS) -bs 32 \
		--methods Influence_functions
	$(PY) -m sgd_influence.analyze $(PAPER_FOLDERS) --out $(PAPER_OUT)

# Fig. 5: the SGD driver again at other batch sizes, analysed together with `make paper`'s folders.
paper-batch-size: paper
	for b in $(PAPER_BATCH_SIZES); do \
		PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py -o $(PAPER_OUT)/sgd_influence_bs$$b $(PAPER_ARGS) -bs $$b || exit $$?; \
	done
	$(PY) -m sgd_influence.analyze $(PAPER_FOLDERS) $(foreach b,$(PAPER_BATCH_SIZES),$(PAPER_OUT)/sgd_influence_bs$(b)) \
		--out $(PAPER_OUT)
