#!/usr/bin/env bash
# Makes `target/tools/bin/kustomize build DIR` work, idempotently, for the deploy tests: it is
# kustomize where installed, else kubectl's built-in kustomize (`kubectl kustomize DIR`, which
# this project's machine image ships). Neither comes from a package registry this project's
# machines reach (Debian has no kustomize package), so this script finds, it does not download.
#
#   scripts/tools/kustomize.sh          # prints the path of the wrapper
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="$PWD/target/tools/bin/kustomize"
mkdir -p "$(dirname "$bin")"

if command -v kustomize >/dev/null; then
  real="$(command -v kustomize)"
  printf '#!/bin/sh\nexec %q "$@"\n' "$real" > "$bin"
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  real="$(command -v kubectl)"
  # `kustomize build DIR` → `kubectl kustomize DIR`
  printf '#!/bin/sh\n[ "$1" = build ] && shift\nexec %q kustomize "$@"\n' "$real" > "$bin"
else
  echo "kustomize.sh: neither kustomize nor kubectl (which has kustomize built in) is installed. Install kubectl (https://kubernetes.io/docs/tasks/tools/) or kustomize, then run scripts/tools/kustomize.sh again." >&2
  exit 1
fi
chmod 0755 "$bin"
"$bin" build --help >/dev/null 2>&1 || { echo "kustomize.sh: $bin does not run" >&2; exit 1; }
echo "$bin"
