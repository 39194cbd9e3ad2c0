#!/usr/bin/env bash
# Rebuild both C extensions in place after editing cext/: the daemon's
# backend/pyvirtiofsd/_cext*.so and the test kit's backend/pyvirtiofsd/_testkit*.so (cext/build.py).
# Serialized with flock so that several shells (or agents) rebuilding at once do not collide.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec flock build.lock "$PY" setup.py -q build_ext --inplace "$@"
