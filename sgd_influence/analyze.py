"""Command: `python -m sgd_influence.analyze OUT [OUT2 ...]` (the code: analysis/analyze.py)."""
import sys

from sgd_influence.analysis.analyze import main

if __name__ == "__main__":
    sys.exit(main())
