#!/usr/bin/env bash
# Installs openapi-spec-validator (PyPI) for the OpenAPI test (admin::the_openapi_document_*)
# into target/tools/openapi-spec-validator, with a launcher at bin/openapi-spec-validator.
# Idempotent: does nothing when that version is already there. Needs python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.9.0
DIR=target/tools/openapi-spec-validator
BIN="$DIR/bin/openapi-spec-validator"
if [ -x "$BIN" ] && [ "$(cat "$DIR/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
rm -rf "$DIR"
mkdir -p "$DIR/bin"
# --target keeps it out of the system's Python (and works where pip refuses system installs).
python3 -m pip install --quiet --disable-pip-version-check --no-input --no-warn-conflicts \
  --root-user-action=ignore \
  --target "$DIR/lib" "openapi-spec-validator==$VERSION"
cat > "$BIN" <<'LAUNCHER'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$here/lib${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m openapi_spec_validator "$@"
LAUNCHER
chmod +x "$BIN"
echo "$VERSION" > "$DIR/VERSION"
"$BIN" --help > /dev/null
echo "openapi-spec-validator $VERSION installed in $DIR"
