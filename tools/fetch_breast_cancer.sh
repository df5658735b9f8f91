#!/usr/bin/env bash
# Provide a real tabular dataset offline: <data>/breast_cancer/{train,val,test}.csv, Neural Network
# Console tabular dataset CSVs (x__0..x__29, #source_row, y) of Wisconsin breast cancer, made from
# sklearn/datasets/data/breast_cancer.csv of the scikit-learn 1.5.2 wheel (569 rows, 30 features;
# sha256 pinned in datasets/breast_cancer.py, which also does the split and the standardisation).
# Used by `make demo-tabular` and `make lds-tabular`.
#
# <data> is $1 if given, else $SGD_INFLUENCE_DATA, else <repo>/data. If the folder is complete
# (the source with the pinned checksum and the three CSVs), nothing is done. Otherwise the wheel
# is downloaded with `pip download --no-deps` (the repo's .venv pip) into a temporary folder, and
# `python -m datasets.breast_cancer` extracts that one member (Python's zipfile), checks its
# sha256 and writes the CSVs, each under a temporary name then renamed (atomic). scikit-learn is
# never installed or imported. Where the package index cannot be reached: one line on stderr,
# exit 1. Progress goes to stderr, only the folder's path to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:-${SGD_INFLUENCE_DATA:-$ROOT/data}}"
DEST="$DATA/breast_cancer"
WHEEL_VERSION=1.5.2  # = datasets/breast_cancer.py WHEEL_VERSION

log() { echo "fetch_breast_cancer: $*" >&2; }
die() { echo "fetch_breast_cancer: error: $1" >&2; exit "${2:-2}"; }

PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || die "no $PY; run 'make venv' first"
cd "$ROOT"  # python -m datasets.breast_cancer

if "$PY" -m datasets.breast_cancer --check "$DEST"; then echo "$DEST"; exit 0; fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip to download scikit-learn==$WHEEL_VERSION; run 'make venv' first"

mkdir -p "$DEST"
tmp="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if ! "$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --timeout 20 --retries 1 \
    -d "$tmp/wheel" "scikit-learn==$WHEEL_VERSION" >"$tmp/pip.log" 2>&1; then
  log "skipped: pip could not download scikit-learn==$WHEEL_VERSION (package index unreachable?), so no breast cancer data for make demo-tabular"
  exit 1
fi
"$PY" -m datasets.breast_cancer "$tmp"/wheel/scikit_learn-*.whl "$DEST" >/dev/null || exit $?
log "extracted breast_cancer.csv of the scikit-learn $WHEEL_VERSION wheel (not installed) and wrote train/val/test.csv into $DEST"
echo "$DEST"
