#!/usr/bin/env bash
# Print the directory holding the four Fashion-MNIST IDX files
#   train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
#   t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz
# Looks in: $1 (if given); /usr/share/datasets/fashion-mnist (Debian package
# dataset-fashion-mnist, which ships exactly these gzipped names);
# <repo>/data/fashion-mnist; else downloads that Debian package with
# `apt-get download` (no system install) and unpacks the files into
# <repo>/data/fashion-mnist. Progress goes to stderr, only the path to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/fashion-mnist"
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

log() { echo "fetch_fashion_mnist: $*" >&2; }
die() { echo "fetch_fashion_mnist: error: $*" >&2; exit 2; }
has_all() { local f; for f in "${FILES[@]}"; do [[ -s "$1/$f" ]] || return 1; done; }

if [[ $# -ge 1 ]]; then
  has_all "$1" || die "$1 does not hold ${FILES[*]}"
  (cd "$1" && pwd); exit 0
fi
for d in /usr/share/datasets/fashion-mnist "$DEST"; do
  if has_all "$d"; then echo "$d"; exit 0; fi
done

command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "no apt-get/dpkg to fetch package dataset-fashion-mnist; pass the data directory as \$1"
mkdir -p "$ROOT/data"
tmp="$(mktemp -d "$ROOT/data/.fashion-mnist.XXXXXX")"   # same filesystem as DEST: rename is atomic
trap 'rm -rf "$tmp"' EXIT
download() { (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root dataset-fashion-mnist) >&2; }
log "downloading Debian package dataset-fashion-mnist (~30 MB)"
if ! download; then
  [[ "$(id -u)" == 0 ]] || die "apt-get download dataset-fashion-mnist failed (try 'apt-get update' as root, or pass the data directory as \$1)"
  log "apt-get update, then retry"
  apt-get update -qq >&2 && download || die "apt-get download dataset-fashion-mnist failed; pass the data directory as \$1"
fi
dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
mv "$tmp/x/usr/share/datasets/fashion-mnist" "$tmp/fashion-mnist"
has_all "$tmp/fashion-mnist" || die "package dataset-fashion-mnist lacks the expected files"
rm -rf "$DEST"   # only an incomplete copy can be here (has_all failed above)
mv -T "$tmp/fashion-mnist" "$DEST"
log "unpacked into $DEST"
echo "$DEST"
