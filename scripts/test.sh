#!/usr/bin/env bash
# The README's test command: set everything up (apt packages, venv, C extension, guest
# kernels, the Debian sid tree with QEMU 11.1) and run the whole suite, end-to-end guests
# included.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The guest runner's cache: the repository's .cache (scripts/setup.sh fills it).
export PYVIRTIOFSD_CACHE=${PYVIRTIOFSD_CACHE:-$PWD/.cache}
./scripts/setup.sh --flavor all
exec .venv/bin/python -m pytest "$@"
