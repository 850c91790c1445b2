#!/usr/bin/env bash
# Installs, idempotently, a schema checker for the Kubernetes manifests the deploy tests render:
# target/tools/bin/validate-k8s FILE...  checks every document of each file
#   - core kinds (Deployment, Service, ConfigMap, PodDisruptionBudget, …): kubernetes-validate
#     --strict (PyPI; Kubernetes' own OpenAPI schemas, unknown fields refused);
#   - KEDA's ScaledObject/TriggerAuthentication and the Prometheus Operator's ServiceMonitor:
#     the models generated from those projects' CRDs (PyPI: cloudcoil-models-keda,
#     cloudcoil-models-prometheus-operator), and a field the model does not know is refused;
#   - any other kind fails: nothing passes unchecked.
# Everything goes into a virtual environment in target/tools/venv (python3 -m venv; pip).
#
#   scripts/tools/kubernetes-validate.sh      # prints the path of validate-k8s
set -euo pipefail
cd "$(dirname "$0")/../.."
tools="$PWD/target/tools"
venv="$tools/venv"
bin="$tools/bin/validate-k8s"
# Pinned: a new schema release should be a reviewed change, not a surprise in CI.
packages=(kubernetes-validate==1.37.0 cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0)
stamp="$venv/.outlook-sync-packages"

if ! command -v python3 >/dev/null; then
  echo "kubernetes-validate.sh: python3 is not installed (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    echo "kubernetes-validate.sh: python3 cannot make a virtual environment; install python3-venv (apt-get install python3-venv) and run scripts/tools/kubernetes-validate.sh again" >&2
    exit 1
  fi
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
  echo "${packages[*]}" > "$stamp"
fi

mkdir -p "$tools/bin"
cat > "$bin" <<PY
#!$venv/bin/python
"""validate-k8s FILE...: every Kubernetes document against its kind's schema (written by
scripts/tools/kubernetes-validate.sh)."""
import sys

import yaml
import kubernetes_validate
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
}


def unknown_fields(given, kept, path=""):
    """The fields of \`given\` that the model dropped (it ignores what it does not know)."""
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept)):
            yield from unknown_fields(a, b, f"{path}[{i}]")


def check(doc):
    api, kind = doc.get("apiVersion"), doc.get("kind")
    model = CUSTOM.get((api, kind))
    if model is not None:
        obj = model.model_validate(doc)
        extra = list(unknown_fields(doc, obj.model_dump(by_alias=True, exclude_unset=True, mode="json")))
        if extra:
            raise ValueError(f"fields the {kind} schema does not have: {', '.join(extra)}")
        return f"{kind} (its CRD's schema)"
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise ValueError(f"no schema known for {api} {kind}: this checker cannot vouch for it")
    return f"{kind} (Kubernetes {kubernetes_validate.latest_version()}, strict)"


failed = 0
for name in sys.argv[1:]:
    with open(name) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        what = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            print(f"valid    {what}: {check(doc)}")
        except Exception as e:  # a schema's own error says what is wrong
            failed += 1
            print(f"INVALID  {what}: {e}")
sys.exit(1 if failed else 0)
PY
chmod 0755 "$bin"
echo "$bin"
