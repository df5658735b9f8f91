"""Data cleansing by SGD-influence: Hara (per-step parameters), Ours (final
parameters only) and Random, trained, scored and evaluated end to end.

    python eval_sgd_influence.py -o OUT -ds fashion_mnist -nt 1

See README.md for the options, the output layout and the method.
"""
import sys

from sgd_influence.base.environment import ensure_project_python

ensure_project_python()  # re-executes under <repo>/.venv when this Python lacks nnabla
from sgd_influence.pipeline.experiment import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], __doc__.split("\n\n")[0], "output_sgd_influence", ("Hara", "Ours", "Random")))
