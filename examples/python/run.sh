#!/usr/bin/env bash
# Sets up a virtualenv, generates the stubs from proto/, and runs the client:
#   ./run.sh --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${VENV:-$here/.venv}"
if ! "$venv/bin/python" -c 'import grpc_tools, grpc_status' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
mkdir -p "$here/generated"
"$venv/bin/python" -m grpc_tools.protoc -I "$here/../../proto" \
  --python_out="$here/generated" --grpc_python_out="$here/generated" \
  cognito/idp/v1/identity_provider.proto
exec "$venv/bin/python" "$here/client.py" "$@"
