#!/usr/bin/env bash
# Installs promtool (Prometheus' rule checker and rule unit-test runner) into target/tools/bin,
# idempotently. It comes from Debian's `prometheus` package, unpacked rather than installed, so
# no Prometheus server is installed or started and no root is needed once the package lists are
# there. The tests (deploy::*) look for target/tools/bin/promtool, then promtool on PATH.
#
#   scripts/tools/promtool.sh          # prints the path of the promtool it installed or found
set -euo pipefail
cd "$(dirname "$0")/../.."
tools="$PWD/target/tools"
bin="$tools/bin/promtool"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "promtool.sh: promtool is not installed and this machine has no apt-get; install Prometheus' promtool (it ships with every Prometheus release) and put it on PATH, or at $bin" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
download() { (cd "$work" && apt-get download prometheus >"$work/apt.log" 2>&1); }
if ! download; then
  # The package lists may be missing or stale (a fresh machine): refresh them when allowed.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
  elif sudo -n true 2>/dev/null; then
    sudo apt-get update -qq >/dev/null
  fi
  if ! download; then
    cat "$work/apt.log" >&2
    echo "promtool.sh: could not download Debian's prometheus package (above: apt's words). Run 'sudo apt-get update' and try again." >&2
    exit 1
  fi
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$tools/bin"
install -m 0755 "$work/root/usr/bin/promtool" "$bin"
"$bin" --version >/dev/null
echo "$bin"
