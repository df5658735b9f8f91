"""Validate every influence estimator against actual counterfactual retraining.

    python validate_influence.py -o OUT -ds fashion_mnist --n-train 1000 --n-val 500 -e 3 --n-check 100

Writes OUT/validation/validation.csv, validation.json and scatter_<Method>.png; see README.md.
"""
import sys

from sgd_influence.base.environment import ensure_project_python

ensure_project_python()  # re-executes under <repo>/.venv when this Python lacks nnabla
from sgd_influence.checks import hara71, validate  # noqa: E402  (after the re-execution above)


def protocol(argv):
    """The value of --protocol in argv ('' when it lacks one), None when absent."""
    for k, a in enumerate(argv):
        if a == "--protocol":
            return argv[k + 1] if k + 1 < len(argv) else ""
        if a.startswith("--protocol="):
            return a.split("=", 1)[1]
    return None


# --protocol hara71: Hara et al. Sec. 7.1 (sgd_influence/checks/hara71.py), OUT/validation/hara71.json.
if __name__ == "__main__":
    argv, name = sys.argv[1:], protocol(sys.argv[1:])
    if name not in (None, "hara71"):
        print(f"error: --protocol takes hara71 (Hara et al. Sec. 7.1), got {name!r}; "
              f"omit it for the default validation", file=sys.stderr)
        sys.exit(2)
    sys.exit((hara71 if name == "hara71" else validate).main(argv))
