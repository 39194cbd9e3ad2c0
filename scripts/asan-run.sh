#!/usr/bin/env bash
# Run Python with the AddressSanitizer build of the C extension (built first, into
# ${PYVIRTIOFSD_ASAN_DIR:-/tmp/pyvirtiofsd-asan}, see scripts/asan-build.sh):
#
#   scripts/asan-run.sh -m pytest tests/fuzz --ignore tests/fuzz/test_asan_fuzz.py
#
# Daemons the tests start (python -m pyvirtiofsd) inherit the environment, so they run the
# ASan build too.  An ASan or UBSan report aborts the process that hit it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${PYVIRTIOFSD_ASAN_DIR:-/tmp/pyvirtiofsd-asan}
scripts/asan-build.sh "$dir" >/dev/null
export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:print_summary=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONPATH=$dir${PYTHONPATH:+:$PYTHONPATH}
exec "${PYTHON:-.venv/bin/python}" "$@"
