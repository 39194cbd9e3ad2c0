#!/usr/bin/env bash
# Rebuild the C extension in place (backend/pyvirtiofsd/_cext*.so) after editing cext/.
# Serialized with flock so that several shells (or agents) rebuilding at once do not collide.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec flock build.lock "$PY" setup.py -q build_ext --inplace "$@"
