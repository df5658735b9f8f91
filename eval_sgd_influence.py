"""Data cleansing by SGD-influence: Hara (per-step parameters), Ours (final
parameters only) and Random, trained, scored and evaluated end to end.

    python eval_sgd_influence.py -o OUT -ds fashion_mnist -nt 1

See README.md for the options, the output layout and the method.
"""
import sys

from sgd_influence.experiment import main, random_unit, retrace_unit

INFLUENCE_UNITS = {"Hara": retrace_unit, "Ours": retrace_unit, "Random": random_unit}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], __doc__.split("\n\n")[0], "output_sgd_influence", INFLUENCE_UNITS))
