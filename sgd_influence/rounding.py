"""Command: `python -m sgd_influence.rounding OUT` (the code: checks/rounding.py)."""
import sys

from sgd_influence.checks.rounding import main

if __name__ == "__main__":
    sys.exit(main())
