"""Validate every influence estimator against actual counterfactual retraining.

    python validate_influence.py -o OUT -ds fashion_mnist --n-train 1000 --n-val 500 -e 3 --n-check 100

Writes OUT/validation/validation.csv, validation.json and scatter_<Method>.png; see README.md.
"""
import sys

from sgd_influence.environment import ensure_project_python

ensure_project_python()  # re-executes under <repo>/.venv when this Python lacks nnabla
from sgd_influence.validate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
