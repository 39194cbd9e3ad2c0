"""Fuzzing with hypothesis: every case is hostile input for one layer (the vhost-user codec,
the back-end state machine, descriptor chains in a ring, FUSE request bodies).

How many cases each test runs comes from the environment, so the same suite serves three
purposes:

* the plain test run (``pytest tests``): a few dozen cases per test, a smoke check;
* the AddressSanitizer run in CI (tests/fuzz/test_asan_fuzz.py): the suite again in a
  subprocess with the ASan build of the C extension and more cases, bounded in time;
* a long run by hand (SECURITY.md gives the command and its figures)::

    PYVIRTIOFSD_FUZZ_EXAMPLES=20000 PYVIRTIOFSD_FUZZ_REPORT=/tmp/fuzz.json \\
        scripts/asan-run.sh -m pytest tests/fuzz -p no:cacheprovider

``PYVIRTIOFSD_FUZZ_REPORT``: write {test: cases run} as JSON there at the end (the figures).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, settings

from fuzzstats import CASES

EXAMPLES = int(os.environ.get("PYVIRTIOFSD_FUZZ_EXAMPLES", "40"))

settings.register_profile(
    "pyvirtiofsd-fuzz", max_examples=EXAMPLES, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
    database=None, report_multiple_bugs=False)
settings.load_profile("pyvirtiofsd-fuzz")

def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("PYVIRTIOFSD_FUZZ_REPORT")
    if path and CASES:
        with open(path, "w") as f:
            json.dump({"cases": dict(CASES), "total": sum(CASES.values()),
                       "exitstatus": int(exitstatus)}, f, indent=1, sort_keys=True)


def pytest_terminal_summary(terminalreporter):
    if CASES:
        terminalreporter.write_line(
            f"fuzz cases run: {sum(CASES.values())} "
            + " ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


@pytest.fixture(scope="session")
def small_fs(tmp_path_factory):
    """A 32 MiB tmpfs for fuzzed file-system operations: a FALLOCATE or WRITE with a huge
    length then fails with ENOSPC instead of filling the machine's disk.  Falls back to a
    plain directory where tmpfs cannot be mounted (not root)."""
    d = tmp_path_factory.mktemp("fuzzfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0777", "tmpfs", str(d)],
                             capture_output=True).returncode == 0
    yield d
    if mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def fresh_dir(small_fs):
    """A new directory on the fuzz tmpfs, with a sibling canary that must stay untouched."""
    d = tempfile.mkdtemp(dir=small_fs)
    return d
