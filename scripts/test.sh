#!/usr/bin/env bash
# README's test command: starts RabbitMQ and Redis if they are not running, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools/python-jsonschema.sh   # the contract test compares the schema with Python's jsonschema
exec cargo test --workspace --locked "$@"
