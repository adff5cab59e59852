#!/usr/bin/env sh
# (Re)generates gen/ (Python code of proto/proto/forwarding/v1/*.proto) with
# grpcio-tools. server.py does the same on startup when gen/ is missing or
# stale, so running this is optional.
set -eu
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" server.py --gen-only
