#!/usr/bin/env bash
# Build the C extensions (the daemon's _cext and the test kit's _testkit, cext/build.py) with
# AddressSanitizer + UndefinedBehaviorSanitizer into their own directory, never over the
# in-place backend/pyvirtiofsd/_cext*.so and _testkit*.so that everyone else uses.
#
#   scripts/asan-build.sh [DIR]          (default /tmp/pyvirtiofsd-asan)
#
# DIR/pyvirtiofsd/ then holds the ASan _cext and _testkit and an __init__.py whose __path__
# continues into backend/pyvirtiofsd, so every Python module comes from the work tree and only
# the extensions from DIR.  Run Python against it with:
#
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
#       PYTHONPATH=DIR .venv/bin/python ...
#
# (detect_leaks=0: CPython keeps objects alive until exit by design.)  UBSan is built with
# -fno-sanitize-recover, so undefined behaviour aborts the process like an ASan report does.
# tests/fuzz/test_asan_fuzz.py runs the fuzz suite this way; `env` prints the variables.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${1:-/tmp/pyvirtiofsd-asan}
PY=${PYTHON:-.venv/bin/python}

mkdir -p "$out/pyvirtiofsd" "$out/build-temp"
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
# The lock build-ext.sh takes: build_ext --inplace and this build share setup.py's temp files
# only through the lock, and cffi regenerates _cext.c in the build-temp directory we name.
PYVIRTIOFSD_CFLAGS="$san -O1" PYVIRTIOFSD_LDFLAGS="-fsanitize=address,undefined" \
    flock build.lock "$PY" setup.py -q build_ext --force \
    --build-lib "$out" --build-temp "$out/build-temp" >"$out/build.log" 2>&1 \
    || { cat "$out/build.log" >&2; exit 1; }

cat >"$out/pyvirtiofsd/__init__.py" <<EOF
"""pyvirtiofsd with AddressSanitizer builds of _cext and _testkit (scripts/asan-build.sh).

Only the extensions come from this directory; every other module from the work tree."""
__path__.append("$repo/backend/pyvirtiofsd")
exec(compile(open("$repo/backend/pyvirtiofsd/__init__.py").read(),
             "$repo/backend/pyvirtiofsd/__init__.py", "exec"))
EOF
ls "$out"/pyvirtiofsd/_cext*.so "$out"/pyvirtiofsd/_testkit*.so >/dev/null
echo "LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=$out"
