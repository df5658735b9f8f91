# Two set-up-free entry points: `make demo` and `make test`.
# Both create .venv (a Python 3.8-3.10 interpreter with nnabla 1.39.0) on first use.
PY := .venv/bin/python
DEMO_OUT ?= output_demo
WORKERS ?= 2

# The demo preset: Fashion-MNIST subset sized to finish in under 20 minutes on 2 CPU cores.
DEMO_ARGS := -o $(DEMO_OUT) -ds fashion_mnist --n-train 2000 --n-val 1000 --n-test 2000 \
	-e 10 -bs 16 --lr 0.02 --no-augment -nt 1 -r 0 10 30 100 300 --workers $(WORKERS)

.PHONY: venv data demo test test-all clean-demo

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

clean-demo:
	rm -rf $(DEMO_OUT)
