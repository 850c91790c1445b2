#!/usr/bin/env bash
# Python's jsonschema, the validator publishers (and issue 16) check events with, with
# rfc3339-validator, without which it skips the date-time format check. tests/it/contract.rs
# compares its verdicts with the decoder's on thousands of generated events.
#
# Installs into a virtualenv under target/tools/python-jsonschema, once: running it again does
# nothing while the pinned versions are there. Needs python3 with venv (CPython 3.11 is on the
# project's machines; elsewhere: apt-get install python3-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=target/tools/python-jsonschema
packages=(jsonschema==4.26.0 rfc3339-validator==0.1.4)
check='import importlib.metadata as m, sys
want = {"jsonschema": "4.26.0", "rfc3339-validator": "0.1.4"}
sys.exit(0 if all(m.version(p) == v for p, v in want.items()) else 1)'

if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" 2>/dev/null; then
    exit 0
fi
if ! command -v python3 >/dev/null; then
    echo "python-jsonschema: python3 is not installed (apt-get install python3 python3-venv)" >&2
    exit 1
fi
rm -rf "$dir"
python3 -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
"$dir/bin/python" -c "$check"
echo "python-jsonschema: installed ${packages[*]} into $dir"
