#!/usr/bin/env bash
# Create (idempotently) the project virtualenv at <repo>/.venv.
#
# nnabla==1.39.0 only ships wheels for CPython 3.8-3.10, so we look for such
# an interpreter, in order:
#   $PYTHON (must be 3.8-3.10, else error); python3.10/3.9/3.8 on PATH that
#   really run (pyenv shims may not); pyenv's versions/3.{10,9,8}*;
#   /usr/bin/python3.{10,9,8}; as a last resort Debian bullseye's python3.9,
#   installed with apt (needs root; adds a low-priority bullseye apt source).
# Environment:
#   PYTHON=/path/to/python3.X   use this interpreter
#   SETUP_ENV_FORCE_DEBIAN=1    skip the search and provision bullseye python3.9
#                               (keeps the fallback path testable)
# A stamp .venv/.requirements.sha256 (written last) makes reruns a fast no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -d' ' -f1)"

# Runs, and is CPython 3.8..3.10?
ok_py() { "$1" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 10))' >/dev/null 2>&1; }

# a. fast path
if [[ -x "$VENV/bin/python" && "$(cat "$STAMP" 2>/dev/null)" == "$want" ]] && ok_py "$VENV/bin/python"; then
  exit 0
fi

log() { echo "setup_env: $*" >&2; }
die() { echo "setup_env: error: $*" >&2; exit 2; }
start=$(date +%s)

# b. find an interpreter
find_python() {
  local p m
  for m in 10 9 8; do
    p="$(command -v "python3.$m" || true)"
    [[ -n "$p" ]] && ok_py "$p" && { echo "$p"; return 0; }
  done
  for m in 10 9 8; do
    for p in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$m"*/bin/python3."$m" 2>/dev/null | sort -rV); do
      ok_py "$p" && { echo "$p"; return 0; }
    done
  done
  for p in /usr/local/bin/python3.{10,9,8} /usr/bin/python3.{10,9,8}; do
    ok_py "$p" && { echo "$p"; return 0; }
  done
  return 1
}

# Debian bullseye's python3.9 (+ its python3-distutils files, whose package
# conflicts with bookworm's, so they are copied in rather than installed).
provision_debian() {
  [[ "$(id -u)" == 0 ]] || die "no Python 3.8-3.10 found and not root to apt-get one; set PYTHON=/path/to/python3.X"
  command -v apt-get >/dev/null || die "no Python 3.8-3.10 found and no apt-get; set PYTHON=/path/to/python3.X"
  local mirror
  mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  log "no Python 3.8-3.10 found; installing Debian bullseye python3.9 from $mirror"
  printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >/etc/apt/sources.list.d/bullseye-python39.sources
  # Never pick bullseye packages unless nothing else provides them.
  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' >/etc/apt/preferences.d/bullseye-python39
  log "apt-get update + install python3.9 (bullseye)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.9 >/dev/null
  local tmp
  tmp="$(mktemp -d)"
  log "adding distutils from bullseye python3-distutils to /usr/lib/python3.9"
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root python3-distutils/bullseye)
  dpkg -x "$tmp"/python3-distutils_*.deb "$tmp/x"
  cp -r "$tmp"/x/usr/lib/python3.9/* /usr/lib/python3.9/
  rm -rf "$tmp"
  ok_py /usr/bin/python3.9 || die "bullseye python3.9 was installed but does not run"
}

if [[ -n "${PYTHON:-}" ]]; then
  ok_py "$PYTHON" || die "PYTHON=$PYTHON is not a working CPython 3.8-3.10 (nnabla 1.39.0 needs one)"
  py="$PYTHON"
elif [[ "${SETUP_ENV_FORCE_DEBIAN:-0}" != 1 ]] && py="$(find_python)"; then
  :
else
  provision_debian
  py=/usr/bin/python3.9
fi

# c. create the venv
if [[ -d "$VENV" ]] && { [[ ! -f "$STAMP" ]] || ! ok_py "$VENV/bin/python"; }; then
  log "removing incomplete $VENV"
  rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  if "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    "$py" -m venv "$VENV"
  else
    # No ensurepip (Debian's python3.9 without python3.9-venv): use virtualenv,
    # run by whichever Python 3 already has it, else installed into a temp dir.
    vtmp="$(mktemp -d)"
    trap 'rm -rf "$vtmp"' EXIT
    for host in python3 /usr/bin/python3; do
      if "$host" -m virtualenv --version >/dev/null 2>&1; then break; fi
      if "$host" -m pip install -q --disable-pip-version-check --target "$vtmp" virtualenv >/dev/null 2>&1; then
        export PYTHONPATH="$vtmp"; break
      fi
    done
    "$host" -m virtualenv -q -p "$py" "$VENV" || die "could not create $VENV with virtualenv"
    unset PYTHONPATH
  fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-test.txt"
echo "$want" >"$STAMP"
echo "setup_env: .venv ready with $py ($("$py" -V 2>&1)) in $(($(date +%s) - start))s"
