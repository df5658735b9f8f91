#!/usr/bin/env bash
# Check that `make test` works from nothing on fresh machines (issue 14): build
# each machine with debootstrap, `git clone` this repository's committed HEAD
# into it, and run `make venv` (the set-up), `make test` and `make data` inside
# with chroot. Slow (minutes per machine, needs network to the apt mirrors and
# PyPI), so not part of `make test`; run it with `make check-fresh` as root.
#
# usage: tools/check_fresh_machines.sh [--roots DIR] [--keep] [SCENARIO...]
# scenarios (default: all, one after another):
#   debian12-deb822   Debian 12 minbase + make git ca-certificates, no python3,
#                     deb822 /etc/apt/sources.list.d/debian.sources (like the
#                     debian:bookworm container image)
#   debian12-classic  Debian 12 minbase + make git ca-certificates python3 (no
#                     pip), classic one-line /etc/apt/sources.list (debootstrap)
#   ubuntu2204        Ubuntu 22.04 minbase + make git ca-certificates python3
#                     (python3.10, no venv/pip), sources like the ubuntu:22.04 image
#   ubuntu2204-nopython  the same without python3 (like the ubuntu:22.04 image)
#   pyenv             Debian 12 + python3 + this machine's pyenv with its newest
#                     3.10/3.9/3.8 (global "system", so the python3.X shims fail)
#   this-machine      a fresh clone on this machine itself, its own environment
# Machines are built in --roots (default $FRESH_ROOTS or /var/tmp/fresh-roots; .debs cached in
# DIR/cache) and removed afterwards unless --keep. This machine's network
# settings are copied in (resolv.conf, local CA certificates, apt Acquire::
# settings, pip's certificate), nothing else. Results: DIR/results.md (a table)
# and DIR/<scenario>.log. Exit status 0 if every scenario run passed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTS="${FRESH_ROOTS:-/var/tmp/fresh-roots}"
KEEP=0
ALL=(debian12-deb822 debian12-classic ubuntu2204 ubuntu2204-nopython pyenv this-machine)
UBUNTU_MIRROR="${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
UBUNTU_SECURITY="${UBUNTU_SECURITY:-http://security.ubuntu.com/ubuntu}"
# ubuntu-keyring from the Ubuntu archive itself, pinned by hash (Debian 12 does not package it).
UBUNTU_KEYRING_DEB=pool/main/u/ubuntu-keyring/ubuntu-keyring_2021.03.26_all.deb
UBUNTU_KEYRING_SHA256=0d0e7ed6b112f5d03eabf3c7eb01ebdacf9c57714b279e90495cfc58c8c4520f

# shellcheck source=tools/setup_env.sh disable=SC1091
source "$REPO/tools/setup_env.sh"   # debian_mirror (sourcing only defines functions)
say() { echo "check_fresh: $*" >&2; }
die() { echo "check_fresh: error: $*" >&2; exit 2; }

scenarios=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --roots) [[ $# -ge 2 ]] || die "--roots needs a directory"; ROOTS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) [[ " ${ALL[*]} " == *" $1 "* ]] || die "unknown scenario '$1'; choose from: ${ALL[*]}"
       scenarios+=("$1"); shift ;;
  esac
done
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=("${ALL[@]}")

if [[ "$(id -u)" != 0 ]]; then
  say "skipped: building machines with debootstrap and chroot needs root; rerun as root (sudo make check-fresh)"
  exit 0
fi
command -v debootstrap >/dev/null || { say "skipped: no debootstrap; apt-get install debootstrap, then rerun"; exit 0; }
command -v wget >/dev/null || die "no wget (debootstrap needs it); apt-get install wget"

if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
  say "note: uncommitted changes in $REPO are NOT checked (the machines get a clone of HEAD)"
fi
COMMIT="$(git -C "$REPO" rev-parse HEAD)"
DEBIAN_MIRROR="$(debian_mirror /etc/apt || echo http://deb.debian.org/debian)"
mkdir -p "$ROOTS/cache"
RESULTS="$ROOTS/results.md"
failed=0

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

MOUNTED=()
umount_all() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount "${MOUNTED[i]}" || umount -l "${MOUNTED[i]}" || true; done
  MOUNTED=()
}
trap umount_all EXIT
mount_root() {
  local r="$1"
  mount -t proc proc "$r/proc" || die "cannot mount proc on $r/proc"; MOUNTED+=("$r/proc")
  mount -t sysfs sysfs "$r/sys" || die "cannot mount sysfs on $r/sys"; MOUNTED+=("$r/sys")
  mount --bind /dev "$r/dev" || die "cannot bind-mount /dev on $r/dev"; MOUNTED+=("$r/dev")
  # private: the mounts below must not propagate to this machine's /dev
  mount --make-private "$r/dev" || die "cannot make $r/dev a private mount"
  mount --bind /dev/pts "$r/dev/pts" || die "cannot bind-mount /dev/pts on $r/dev/pts"
  MOUNTED+=("$r/dev/pts")
  mkdir -p "$r/dev/shm"
  mount -t tmpfs shm "$r/dev/shm" || die "cannot mount tmpfs on $r/dev/shm"; MOUNTED+=("$r/dev/shm")   # multiprocessing needs it
}
remove_root() {
  local r="$1"
  [[ -e "$r" ]] || return 0
  if grep -q " $r/" /proc/mounts; then die "$r still has mounts; not removing it (umount them, then rm -rf $r)"; fi
  rm -rf "$r"
}

# This machine's network settings, so the root reaches the same mirrors and PyPI.
copy_network() {
  local r="$1" f n=0
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  for f in /etc/apt/apt.conf.d/*; do
    [[ -f "$f" ]] && grep -q '^[[:space:]]*Acquire::' "$f" && cp "$f" "$r/etc/apt/apt.conf.d/"
  done
  for f in /usr/local/share/ca-certificates/*.crt; do
    [[ -f "$f" ]] || continue
    mkdir -p "$r/usr/local/share/ca-certificates"; cp "$f" "$r/usr/local/share/ca-certificates/"; n=$((n + 1))
  done
  if [[ $n -gt 0 ]]; then
    chroot "$r" update-ca-certificates >"$r/tmp/update-ca-certificates.log" 2>&1 \
      || die "update-ca-certificates failed in $r; see $r/tmp/update-ca-certificates.log"
    PIP_CERT_IN=/etc/ssl/certs/ca-certificates.crt   # pip trusts its own bundle unless told
  else
    PIP_CERT_IN=""
  fi
}

build_root() {   # scenario root -> debootstrap + sources + network; SKIPPED=1 if impossible here
  local s="$1" r="$2" inc=make,git,ca-certificates suite mirror keyring=()
  case "$s" in
    debian12-deb822) suite=bookworm; mirror="$DEBIAN_MIRROR" ;;
    debian12-classic) suite=bookworm; mirror="$DEBIAN_MIRROR"; inc+=,python3 ;;
    pyenv) suite=bookworm; mirror="$DEBIAN_MIRROR"
           inc+=,python3,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libreadline8,libncursesw6,libexpat1,libtirpc3,libgdbm6,libuuid1 ;;
    ubuntu2204*) suite=jammy; mirror="$UBUNTU_MIRROR"; [[ "$s" == ubuntu2204 ]] && inc+=,python3
      local kr=/usr/share/keyrings/ubuntu-archive-keyring.gpg
      if [[ ! -f "$kr" ]]; then
        kr="$ROOTS/cache/ubuntu-keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg"
        if [[ ! -f "$kr" ]]; then
          local deb
          deb="$ROOTS/cache/$(basename "$UBUNTU_KEYRING_DEB")"
          wget -q -O "$deb" "$UBUNTU_MIRROR/$UBUNTU_KEYRING_DEB" \
            || { say "skipped $s: the Ubuntu archive $UBUNTU_MIRROR is not reachable from here"; SKIPPED=1; return 0; }
          echo "$UBUNTU_KEYRING_SHA256  $deb" | sha256sum -c --quiet - || die "$deb does not have the pinned sha256"
          dpkg -x "$deb" "$ROOTS/cache/ubuntu-keyring"
        fi
      fi
      keyring=(--keyring="$kr") ;;
  esac
  say "$s: debootstrap $suite from $mirror (+ $inc)"
  debootstrap --variant=minbase --cache-dir="$ROOTS/cache" "${keyring[@]}" --include="$inc" \
    "$suite" "$r" "$mirror" >"$ROOTS/$s.debootstrap.log" 2>&1 \
    || die "debootstrap of $s failed; see $ROOTS/$s.debootstrap.log"
  case "$s" in
    debian12-deb822)
      rm -f "$r/etc/apt/sources.list"
      printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: %s-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" >"$r/etc/apt/sources.list.d/debian.sources"
      rm -rf "$r"/var/lib/apt/lists/*   # a container image ships no package lists
      ;;
    ubuntu2204*)
      printf 'deb %s jammy main restricted universe multiverse\ndeb %s jammy-updates main restricted universe multiverse\ndeb %s jammy-security main restricted universe multiverse\n' \
        "$UBUNTU_MIRROR" "$UBUNTU_MIRROR" "$UBUNTU_SECURITY" >"$r/etc/apt/sources.list"
      rm -rf "$r"/var/lib/apt/lists/*
      ;;
    pyenv)
      local pr="${PYENV_ROOT:-$HOME/.pyenv}" v="" m d
      for m in 10 9 8; do
        v="$(compgen -G "$pr/versions/3.$m*/bin/python3.$m" | sort -rV | head -n1 || true)"
        [[ -n "$v" ]] && break
      done
      v="${v%/bin/*}"
      mkdir -p "$r/root/.pyenv/versions"
      for d in bin libexec shims completions pyenv.d; do
        [[ -e "$pr/$d" ]] && cp -a "$pr/$d" "$r/root/.pyenv/"
      done
      cp -a "$v" "$r/root/.pyenv/versions/"
      echo system >"$r/root/.pyenv/version"
      say "$s: copied pyenv and its $(basename "$v") from $pr (global version: system)"
      ;;
  esac
  copy_network "$r"
}

# shellcheck disable=SC2317  # called through "${pre[@]}"
run_in() {   # root VAR=value... command...: run in the chroot with a clean environment
  local r="$1"; shift
  chroot "$r" env -i HOME=/root LANG=C.UTF-8 TERM=dumb ${PIP_CERT_IN:+PIP_CERT=$PIP_CERT_IN} "$@"
}

record() {   # scenario setup-result setup-s test-result test-s counts data-result
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$@" >>"$RESULTS"
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$@" >&2
}

check() {
  local s="$1"
  local r="$ROOTS/$s" log="$ROOTS/$s.log" t0 t1 t2 rc_v rc_t rc_d counts path cd_repo
  local -a pre
  path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  remove_root "$r"
  if [[ "$s" == this-machine ]]; then
    mkdir -p "$r"
    git clone -q "$REPO" "$r/repo" && git -C "$r/repo" checkout -q "$COMMIT"
    pre=(env -u PYTHON -u VIRTUAL_ENV bash -c)
    cd_repo="cd $r/repo"
  else
    if [[ "$s" == pyenv ]] && ! compgen -G "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.[89]*" >/dev/null \
       && ! compgen -G "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.10*" >/dev/null; then
      say "skipped $s: this machine has no pyenv with a 3.8-3.10 (${PYENV_ROOT:-$HOME/.pyenv}/versions)"
      record "$s" skipped - - - - -; return 0
    fi
    SKIPPED=0
    build_root "$s" "$r"
    if [[ $SKIPPED == 1 ]]; then record "$s" "skipped (unreachable)" - - - - -; return 0; fi
    git clone -q "$REPO" "$r/root/repo" && git -C "$r/root/repo" checkout -q "$COMMIT"
    mount_root "$r"
    if [[ "$s" == pyenv ]]; then
      pre=(run_in "$r" PATH="/root/.pyenv/shims:/root/.pyenv/bin:$path" PYENV_ROOT=/root/.pyenv bash -c)
    else
      pre=(run_in "$r" PATH="$path" bash -c)
    fi
    cd_repo="cd /root/repo"
  fi
  say "$s: make venv (set-up), make test, make data; log in $log"
  : >"$log"
  t0=$(now); rc_v=0; "${pre[@]}" "$cd_repo && make venv" >>"$log" 2>&1 || rc_v=$?
  t1=$(now); rc_t=0; "${pre[@]}" "$cd_repo && make test" >>"$log" 2>&1 || rc_t=$?
  t2=$(now); rc_d=0; "${pre[@]}" "$cd_repo && make data" >>"$log" 2>&1 || rc_d=$?
  counts="$(grep -Eo '[0-9]+ (passed|failed|skipped|errors?)(, [0-9]+ (passed|failed|skipped|errors?|deselected|warnings?))*' "$log" | tail -n1 || true)"
  umount_all
  record "$s" "$([[ $rc_v == 0 ]] && echo pass || echo "FAIL ($rc_v)")" "$(secs "$t0" "$t1")" \
    "$([[ $rc_t == 0 ]] && echo pass || echo "FAIL ($rc_t)")" "$(secs "$t1" "$t2")" "${counts:--}" \
    "$([[ $rc_d == 0 ]] && echo pass || echo "FAIL ($rc_d)")"
  [[ $rc_v == 0 && $rc_t == 0 && $rc_d == 0 ]] || failed=1
  if [[ "$KEEP" == 0 ]]; then remove_root "$r"; fi
}

{
  echo "Fresh-machine check of commit ${COMMIT:0:12} on $(date -u +%Y-%m-%d) ($(nproc) CPU cores)"
  echo
  echo "| machine | set-up (make venv) | set-up s | make test | make test s | tests | make data |"
  echo "|---|---|---|---|---|---|---|"
} >"$RESULTS"
for s in "${scenarios[@]}"; do check "$s"; done
say "results in $RESULTS"
cat "$RESULTS"
exit "$failed"
