#!/usr/bin/env bash
# README's test command: starts RabbitMQ and Redis if they are not running, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools/openapi-spec-validator.sh   # the OpenAPI test validates with it
exec cargo test --locked "$@"
