"""The LDS against the removed fraction, from one or more lds.json files (docs/accuracy.md, "Against the
removal's size").

`validate_influence.py --lds` draws OUT/validation/lds_fractions.png itself from the fractions of its run.
This redraws it from lds.json alone, and can join the fractions of several LDS folders of one setting (e.g.
the 1%, 2% and 5% of `make lds-small` with the 50% of an earlier `make lds`): each fraction comes from the
first file that has it, and every fraction is recomputed over the same trainings (`--trainings`; default
the first file's trainings without the twin) from the per-training blocks. It prints, per fraction, each
method's mean LDS over the trainings with its 95% t-interval, the noise ceiling, the paired differences,
and every method's mean LDS as a share of the mean ceiling and of the mean bound of a perfect estimator
(sqrt(2c / (1 + c)) per training: the LDS is against the mean of two replays, which such an estimator
tracks better than one replay tracks the other).

    .venv/bin/python tools/plot_lds_fractions.py OUT/validation/lds.json [docs/lds/over_trainings/lds.json] \\
        -o fractions.png [--trainings seed_0 seed_1 seed_2]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sgd_influence.base import layout  # noqa: E402
from sgd_influence.base.errors import UserError, run_command  # noqa: E402
from sgd_influence.checks import lds  # noqa: E402
from sgd_influence.config.settings import PREDATING_VALUES, differences  # noqa: E402
from sgd_influence.checks.validate import LDS_SETTINGS, fmt_interval, print_lds  # noqa: E402

# What must agree between the files joined (the trainings' settings and the scores'); seed names the first
# training only, the trainings are matched by name.
SAME = tuple(k for k in LDS_SETTINGS if k != "seed") + ("retrace", "bn_coupling")


def load_summaries(paths):
    """(path, summary) of each lds.json; files whose settings differ from the first's are a UserError (a
    setting one file predates, e.g. the recipe of an lds.json from before --momentum, counts at its value then)."""
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"no file {path}; give the lds.json of an LDS folder (OUT/validation/lds.json)")
        summary = layout.read_json(path)
        if not isinstance(summary, dict) or "trainings" not in summary or "settings" not in summary:
            raise UserError(f"{path} is not an lds.json of validate_influence.py --lds")
        out.append((path, summary))
    first = {**PREDATING_VALUES, **out[0][1]["settings"]}  # options a run predates: at their values then
    for path, summary in out[1:]:
        diff = differences({**PREDATING_VALUES, **summary["settings"]}, first, SAME, sep="vs")
        if diff:
            raise UserError(f"{path} is of another setting than {out[0][0]} ({'; '.join(diff)}); "
                            f"join LDS folders of one setting only")
    return out


def print_rows(rows) -> None:
    """print_lds's across-trainings lines, then each method's share of the ceiling and of the bound."""
    print_lds({"trainings": [], "across_trainings": rows, "twin": None})
    for key, what in (("noise_ceiling", "noise ceiling"), ("max_lds_all_replays", "bound of a perfect estimator")):
        if not all(key in row for row in rows):
            continue
        print(f"mean LDS / mean {what}:")
        for row in rows:
            c = row[key]["mean"]
            shares = "  ".join(f"{m} {st['mean'] / c:.2f}" for m, st in row["methods"].items() if st and c > 0)
            print(f"  {row['fraction']:g} ({row['subset_size']} instances, {what} {fmt_interval(row[key])},"
                  f" from {row['source']}): {shares}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", metavar="LDS_JSON", help="lds.json files; a fraction comes from the first that has it")
    p.add_argument("-o", "--output", required=True, help="the figure to write (.png)")
    p.add_argument("--trainings", nargs="+", default=None, metavar="NAME",
                   help="the trainings every fraction is taken over (e.g. seed_0 seed_1 seed_2; "
                        "default: the first file's, without the twin)")
    args = p.parse_args(argv)

    def body() -> None:
        rows = lds.merge_fractions(load_summaries(args.summaries), args.trainings)
        print_rows(rows)
        lds.plot_fractions(args.output, rows, f"{len(rows[0]['trainings'])} training(s): "
                                              f"{', '.join(rows[0]['trainings'])}")
        print(f"wrote {args.output}")
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
