"""Data cleansing by influence functions (Koh & Liang): Influence_functions and
Random, trained, scored and evaluated end to end with the same pipeline as
eval_sgd_influence.py.

    python eval_influence_functions.py -o OUT -ds fashion_mnist -nt 1

See README.md for the options, the output layout and the method.
"""
import argparse
import sys

from sgd_influence import io
from sgd_influence.experiment import data_for, main, positive_float, positive_int, random_unit

# Damping alpha of (H + alpha I)^-1: the published values (10 on CIFAR-10, 0.1 otherwise) are the
# defaults where the solve converges; see README "Influence functions" for the measurements.
DEFAULT_ALPHA = {"cifar10": 10.0}
FALLBACK_ALPHA = 0.1


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("influence functions: v = (H + alpha I)^-1 u by SGD with momentum")
    g.add_argument("--if-alpha", type=positive_float, default=None,
                   help=f"damping alpha (default: {DEFAULT_ALPHA} by dataset, else {FALLBACK_ALPHA})")
    g.add_argument("--if-lr", type=positive_float, default=0.005, help="solver learning rate")
    g.add_argument("--if-momentum", type=float, default=0.9, help="solver heavy-ball momentum")
    g.add_argument("--if-epochs", type=positive_int, default=2, help="solver epochs over the training set")


def alpha_of(args) -> float:
    return args.if_alpha if args.if_alpha is not None else DEFAULT_ALPHA.get(args.dataset, FALLBACK_ALPHA)


def influence_functions_unit(args, method: str, seed: int, progress: bool = True) -> None:
    from influence_functions.infl import influence_functions
    from influence_functions.report import write_solver_trace
    from sgd_influence.infl import load_final_model, val_gradient
    data = data_for(args, seed)
    load_final_model(data, io.train_dir(args.output_dir, seed), args.n_epochs, args.batch_size)
    influence, trace = influence_functions(
        data, val_gradient(data), alpha=alpha_of(args), lr=args.if_lr, momentum=args.if_momentum,
        epochs=args.if_epochs, batch_size=args.batch_size, seed=seed, progress=progress)
    write_solver_trace(args.output_dir, seed, trace)
    io.write_influence_csv(io.influence_path(args.output_dir, method, seed),  # last: marks the unit done
                           data.train.ids, data.train.y, influence)


INFLUENCE_UNITS = {"Influence_functions": influence_functions_unit, "Random": random_unit}
IF_SETTINGS = ("if_alpha", "if_lr", "if_momentum", "if_epochs")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], __doc__.split("\n\n")[0], "output_influence_functions", INFLUENCE_UNITS,
                  add_options, IF_SETTINGS))
