#!/usr/bin/env bash
# Rebuild both C extensions in place after editing cext/: the daemon's
# backend/pyvirtiofsd/_cext*.so and the test kit's backend/pyvirtiofsd/_testkit*.so (cext/build.py).
# Serialized with flock so that several shells (or agents) rebuilding at once do not collide.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# setuptools copies the new modules over the old files in place (truncating them), which
# would pull the pages from under a daemon or test still running with them: give each a
# fresh inode first, so running processes keep theirs.
for so in backend/pyvirtiofsd/_*.so; do
    [ -e "$so" ] && cp -p "$so" "$so.fresh" && mv -f "$so.fresh" "$so"
done
exec flock build.lock "$PY" setup.py -q build_ext --inplace "$@"
