"""Command: `python -m sgd_influence.cluster SYSTEM|scheduler|worker ...` (the code: pipeline/cluster.py)."""
import sys

from sgd_influence.pipeline.cluster import jobs_main

if __name__ == "__main__":
    sys.exit(jobs_main(sys.argv[1:]))
