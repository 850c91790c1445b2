#!/usr/bin/env bash
# README's test command: brings up RabbitMQ, Redis and PostgreSQL (installing and starting what
# is missing), installs the tools the deploy tests use, then runs every test. A tool that cannot
# be installed is reported here; the tests that need it then fail, naming its script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools/promtool.sh >/dev/null || echo "test.sh: promtool is missing: deploy::the_alert_rules_pass_promtool… will fail (see scripts/tools/promtool.sh)" >&2
bash scripts/tools/kustomize.sh >/dev/null || echo "test.sh: kustomize is missing: the deploy tests that render deploy/k8s will fail (see scripts/tools/kustomize.sh)" >&2
bash scripts/tools/kubernetes-validate.sh >/dev/null || echo "test.sh: validate-k8s is missing: deploy::the_rendered_manifests_pass… will fail (see scripts/tools/kubernetes-validate.sh)" >&2
bash scripts/tools/python-jsonschema.sh   # the contract test compares the schema with Python's jsonschema
bash scripts/tools/openapi-spec-validator.sh   # the OpenAPI test validates with it
exec cargo test --workspace --locked "$@"
