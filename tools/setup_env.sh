#!/usr/bin/env bash
# Create (idempotently) the project virtualenv at <repo>/.venv.
#
# nnabla==1.39.0 only ships wheels for CPython 3.8-3.10, so we look for such
# an interpreter, in order:
#   $PYTHON (must be 3.8-3.10, else error); python3.10/3.9/3.8 on PATH that
#   really run (pyenv shims may not); pyenv's versions/3.{10,9,8}*;
#   /usr/local/bin and /usr/bin python3.{10,9,8}; then, as root with apt only:
#   python3.10/3.9/3.8 from the system's own apt sources (e.g. Ubuntu 22.04
#   without python3), and on Debian as a last resort bullseye's python3.9 (adds
#   a low-priority bullseye apt source on the mirror /etc/apt already uses).
# The venv is made with, in order: `python -m venv` (needs ensurepip);
#   virtualenv if that interpreter has it; as root, the distribution's
#   python3.X-venv package; `venv --without-pip` plus the distribution's pip
#   wheel (python3-pip-whl, fetched with `apt-get download`); virtualenv
#   installed by another python3 that has pip.
# Environment:
#   PYTHON=/path/to/python3.X   use this interpreter
#   SETUP_ENV_FORCE_DEBIAN=1    skip the search and provision bullseye python3.9
#                               (keeps the fallback path testable)
# A stamp .venv/.requirements.sha256 (written last) makes reruns a fast no-op.
# Every failure prints one line "setup_env: error: <what is missing>; <what to do>".
# `source tools/setup_env.sh` defines the functions without running anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"

log() { echo "setup_env: $*" >&2; }
die() { echo "setup_env: error: $*" >&2; exit 2; }

# Runs, and is CPython 3.8..3.10?
ok_py() { "$1" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 10))' >/dev/null 2>&1; }

# Print the first Debian archive URI (".../debian") of the apt configuration in
# directory $1 (default /etc/apt): deb822 sources.list.d/*.sources first, then
# the classic one-line sources.list and sources.list.d/*.list. Status 1 if none.
debian_mirror() {
  local dir="${1:-/etc/apt}" f line key rest uri type enabled
  local -a uris words
  is_debian_uri() { [[ "$1" =~ ^(https?|ftp)://[^[:space:]]+/debian/?$ ]]; }
  for f in "$dir"/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    # One stanza at a time (blank line ends it); honour "Enabled: no" and deb-only Types.
    uris=() type="" enabled=yes
    while IFS= read -r line || [[ -n "$line" ]]; do
      if [[ -z "${line//[[:space:]]/}" ]]; then
        if [[ "$enabled" != no && " $type " == *" deb "* ]]; then
          for uri in "${uris[@]}"; do is_debian_uri "$uri" && { echo "${uri%/}"; return 0; }; done
        fi
        uris=() type="" enabled=yes
        continue
      fi
      [[ "$line" == \#* ]] && continue
      key="${line%%:*}" rest="${line#*:}"
      case "${key,,}" in
        uris) read -r -a uris <<<"$rest" ;;
        types) read -r -a words <<<"$rest"; type="${words[*]}" ;;
        enabled) read -r enabled <<<"$rest"; enabled="${enabled,,}" ;;
      esac
    done <"$f"
    if [[ "$enabled" != no && " $type " == *" deb "* ]]; then
      for uri in "${uris[@]}"; do is_debian_uri "$uri" && { echo "${uri%/}"; return 0; }; done
    fi
  done
  for f in "$dir/sources.list" "$dir"/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    while read -r type rest || [[ -n "$type" ]]; do
      [[ "$type" == deb ]] || continue
      [[ "$rest" == \[* ]] && rest="${rest#*]}"   # [ arch=... signed-by=... ]
      read -r uri _ <<<"$rest"
      is_debian_uri "$uri" && { echo "${uri%/}"; return 0; }
    done <"$f"
  done
  return 1
}

# b. find an interpreter that is already there
find_python() {
  local p m
  for m in 10 9 8; do
    p="$(command -v "python3.$m" || true)"
    [[ -n "$p" ]] && ok_py "$p" && { echo "$p"; return 0; }
  done
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  for m in 10 9 8; do
    while IFS= read -r p; do
      [[ -n "$p" ]] && ok_py "$p" && { echo "$p"; return 0; }
    done < <(compgen -G "$pyenv_root/versions/3.$m*/bin/python3.$m" | sort -rV)
  done
  for p in /usr/local/bin/python3.{10,9,8} /usr/bin/python3.{10,9,8}; do
    ok_py "$p" && { echo "$p"; return 0; }
  done
  return 1
}

# Candidate version of an apt package ("" if none).
apt_candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2; exit }'; }

APT_UPDATED=0
apt_update() {
  [[ "$APT_UPDATED" == 1 ]] && return 0
  log "apt-get update"
  apt-get update -qq || die "apt-get update failed (see above); fix the apt sources in /etc/apt or the network, then rerun"
  APT_UPDATED=1
}

apt_install() {
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed (see above); install it by hand or set PYTHON=/path/to/python3.X"
}

# c. no interpreter: get one from apt (root only); sets PY.
provision_python() {
  local how="set PYTHON=/path/to/python3.X (e.g. from pyenv or python.org)"
  [[ "$(id -u)" == 0 ]] || die "no Python 3.8-3.10 found and not root to install one with apt; $how, or rerun as root"
  command -v apt-get >/dev/null || die "no Python 3.8-3.10 found and no apt-get to install one; $how"
  apt_update
  local v
  if [[ "${SETUP_ENV_FORCE_DEBIAN:-0}" != 1 ]]; then
    for v in 3.10 3.9 3.8; do
      if [[ -n "$(apt_candidate "python$v")" ]] && ! grep -qs '^Suites: bullseye' /etc/apt/sources.list.d/bullseye-python39.sources; then
        log "no Python 3.8-3.10 found; installing python$v from the system's apt sources"
        apt_install "python$v"
        ok_py "/usr/bin/python$v" || die "python$v was installed but /usr/bin/python$v does not run; $how"
        PY="/usr/bin/python$v"; return 0
      fi
    done
  fi
  local id=""
  # shellcheck disable=SC1091
  [[ -r /etc/os-release ]] && id="$(. /etc/os-release && echo "${ID:-}")"
  [[ "$id" == debian ]] || die "no Python 3.8-3.10 found and the apt sources of this ${id:-unknown} system offer none; $how"
  provision_bullseye
  PY=/usr/bin/python3.9
}

# Debian bullseye's python3.9 (+ its python3-distutils files, whose package
# conflicts with bookworm's, so they are copied in rather than installed).
provision_bullseye() {
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror
  [[ -f "$keyring" ]] || die "no $keyring to trust Debian bullseye's packages; apt-get install debian-archive-keyring, then rerun"
  if ! mirror="$(debian_mirror /etc/apt)"; then
    mirror=http://deb.debian.org/debian
    log "no Debian mirror (.../debian) in /etc/apt/sources.list or sources.list.d; using $mirror"
  fi
  log "no Python 3.8-3.10 found; installing Debian bullseye python3.9 from $mirror"
  printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$keyring" >/etc/apt/sources.list.d/bullseye-python39.sources
  # Never pick bullseye packages unless nothing else provides them.
  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' >/etc/apt/preferences.d/bullseye-python39
  APT_UPDATED=0
  apt_update
  [[ -n "$(apt_candidate python3.9)" ]] || die "apt offers no python3.9 from bullseye on $mirror; check that mirror serves bullseye, or set PYTHON=/path/to/python3.X"
  apt_install python3.9
  local tmp
  tmp="$(mktemp -d)"
  log "adding distutils from bullseye python3-distutils to /usr/lib/python3.9"
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root python3-distutils/bullseye) \
    || die "apt-get download python3-distutils/bullseye failed (see above); check the bullseye source on $mirror"
  dpkg -x "$tmp"/python3-distutils_*.deb "$tmp/x" || die "could not unpack bullseye python3-distutils (dpkg -x, see above)"
  cp -r "$tmp"/x/usr/lib/python3.9/* /usr/lib/python3.9/
  rm -rf "$tmp"
  ok_py /usr/bin/python3.9 || die "bullseye python3.9 was installed but does not run; set PYTHON=/path/to/python3.X"
}

# d. create $VENV with interpreter $1 and a pip in it.
make_venv() {
  local py="$1" m host tmp whl pkg
  m="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  # 1. venv with ensurepip (pyenv, python.org builds, Debian/Ubuntu with python3.X-venv)
  if "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    "$py" -m venv "$VENV" || die "'$py -m venv $VENV' failed (see above); remove $VENV or set PYTHON=/path/to/python3.X"
    return 0
  fi
  # 2. virtualenv already importable by that interpreter
  if "$py" -m virtualenv --version >/dev/null 2>&1; then
    "$py" -m virtualenv -q "$VENV" || die "'$py -m virtualenv $VENV' failed (see above); set PYTHON=/path/to/python3.X"
    return 0
  fi
  # 3. as root: the distribution's python3.X-venv (gives ensurepip)
  if [[ "$(id -u)" == 0 && "$py" == /usr/bin/python3.* ]] && command -v apt-get >/dev/null; then
    apt_update
    if [[ -n "$(apt_candidate "python$m-venv")" ]] && apt-get install -s -qq "python$m-venv" >/dev/null 2>&1; then
      log "$py has no ensurepip; installing the distribution's python$m-venv"
      apt_install "python$m-venv"
      if "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        "$py" -m venv "$VENV" || die "'$py -m venv $VENV' failed (see above); remove $VENV or set PYTHON=/path/to/python3.X"
        return 0
      fi
      log "python$m-venv installed but $py still has no ensurepip; trying the next way"
    fi
  fi
  # 4. venv without pip + the distribution's pip wheel (python3-pip-whl / python-pip-whl)
  if command -v apt-get >/dev/null && "$py" -c 'import venv' >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    whl=""
    for pkg in python3-pip-whl python-pip-whl; do
      [[ -n "$(apt_candidate "$pkg")" ]] || continue
      if (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1) \
         && dpkg -x "$tmp/${pkg}"_*.deb "$tmp/x" >/dev/null 2>&1; then
        whl="$(compgen -G "$tmp/x/usr/share/python-wheels/pip-*.whl" | sort -V | tail -n1 || true)"
        [[ -n "$whl" ]] && break
      fi
    done
    if [[ -n "$whl" ]]; then
      log "$py has no ensurepip; making $VENV without pip, then installing pip from the distribution's $(basename "$whl")"
      "$py" -m venv --without-pip "$VENV" || die "'$py -m venv --without-pip $VENV' failed (see above); set PYTHON=/path/to/python3.X"
      "$VENV/bin/python" "$whl/pip" install -q --no-index "$whl" \
        || die "installing pip into $VENV from $(basename "$whl") failed (see above); install python$m-venv (apt) or set PYTHON=/path/to/python3.X"
      rm -rf "$tmp"
      return 0
    fi
    rm -rf "$tmp"
  fi
  # 5. virtualenv run by another Python 3 that has it or has pip to fetch it into a temp dir
  local vtmp
  vtmp="$(mktemp -d)"
  for host in python3 /usr/bin/python3; do
    command -v "$host" >/dev/null || continue
    if "$host" -m virtualenv --version >/dev/null 2>&1; then
      "$host" -m virtualenv -q -p "$py" "$VENV" || die "'$host -m virtualenv -p $py $VENV' failed (see above); set PYTHON=/path/to/python3.X"
      rm -rf "$vtmp"; return 0
    fi
    if "$host" -m pip install -q --disable-pip-version-check --target "$vtmp" virtualenv >/dev/null 2>&1; then
      PYTHONPATH="$vtmp" "$host" -m virtualenv -q -p "$py" "$VENV" \
        || die "'$host -m virtualenv -p $py $VENV' failed (see above); set PYTHON=/path/to/python3.X"
      rm -rf "$vtmp"; return 0
    fi
  done
  rm -rf "$vtmp"
  if [[ "$(id -u)" == 0 ]]; then
    die "cannot make a venv for $py: no ensurepip, no virtualenv, no python$m-venv or pip wheel package in the apt sources, no python3 with pip; enable the sources that have python$m-venv (Ubuntu: universe) or set PYTHON=/path/to/python3.X"
  fi
  die "cannot make a venv for $py: no ensurepip, no virtualenv, no python3 with pip; as root run 'apt-get install python$m-venv' (or rerun this as root), or set PYTHON=/path/to/python3.X"
}

main() {
  local want start
  want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -d' ' -f1)"
  # a. fast path
  if [[ -x "$VENV/bin/python" && "$(cat "$STAMP" 2>/dev/null)" == "$want" ]] && ok_py "$VENV/bin/python"; then
    return 0
  fi
  # Safety net: an unexpected failure still says where (never a silent exit).
  set -E
  trap 'echo "setup_env: error: \"$BASH_COMMAND\" failed (line $LINENO); fix the cause above and rerun, or set PYTHON=/path/to/python3.X" >&2' ERR
  start=$(date +%s)

  if [[ -n "${PYTHON:-}" ]]; then
    ok_py "$PYTHON" || die "PYTHON=$PYTHON is not a working CPython 3.8-3.10 (nnabla 1.39.0 needs one); point PYTHON at one or unset it"
    PY="$PYTHON"
  elif [[ "${SETUP_ENV_FORCE_DEBIAN:-0}" != 1 ]] && PY="$(find_python)"; then
    :
  else
    provision_python
  fi
  log "using $PY ($("$PY" -V 2>&1))"

  if [[ -d "$VENV" || -L "$VENV" ]] && { [[ ! -f "$STAMP" ]] || ! ok_py "$VENV/bin/python"; }; then
    log "removing incomplete $VENV"
    rm -rf "$VENV"
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    make_venv "$PY"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-test.txt" \
    || die "pip could not install requirements-test.txt into $VENV (see above); check access to PyPI (pip config, proxy), then rerun"
  echo "$want" >"$STAMP"
  log ".venv ready with $PY ($("$PY" -V 2>&1)) in $(($(date +%s) - start))s"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
