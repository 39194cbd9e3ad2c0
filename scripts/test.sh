#!/usr/bin/env bash
# The README's test command: set everything up (apt packages, venv, C extension, guest
# kernels, the Debian sid tree with QEMU 11.1) and run the whole suite, end-to-end guests
# included -- twice: with the C hot path on (the default) and off (PYVIRTIOFSD_HOTPATH=0,
# every request served by Python, the reference implementation), so the two cannot drift
# apart.  Extra arguments go to pytest, and then it runs once, with the environment as is.
set -euo pipefail
cd "$(dirname "$0")/.."
# The guest runner's cache: the repository's .cache (scripts/setup.sh fills it).
export PYVIRTIOFSD_CACHE=${PYVIRTIOFSD_CACHE:-$PWD/.cache}
./scripts/setup.sh --flavor all
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
echo "== the whole suite, C hot path on"
.venv/bin/python -m pytest
echo "== again with the C hot path off (PYVIRTIOFSD_HOTPATH=0)"
PYVIRTIOFSD_HOTPATH=0 exec .venv/bin/python -m pytest
