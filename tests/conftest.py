"""Suite-wide rules.

On CI (``CI=true``) a skipped test is a failure: CI runs as root on a machine that
``scripts/setup.sh`` installed, so everything a test may skip for (root, file handles,
bash and tar, the guests) is there, and a skip there would hide that it is not.

No test may hang the run: after ``PYVIRTIOFSD_TEST_LIMIT`` seconds (900 by default) a test
that has not ended dumps every thread's traceback and ends the run with a failure, so CI
turns red with the place it hung instead of running out its time in silence.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading

import pytest

TEST_LIMIT = float(os.environ.get("PYVIRTIOFSD_TEST_LIMIT", "900"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") == "true" and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped on CI, where nothing may be: {reason}"


def _hung(config, nodeid: str) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:                 # write past pytest's capture, to the real stderr
        capture.suspend_global_capture(in_=True)
    print(f"\n[limit] {nodeid} still running after {TEST_LIMIT:.0f} s; its threads:",
          file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(3)


@pytest.fixture(autouse=True)
def _no_test_hangs(request):
    """A Python timer names the test and ends the run; faulthandler's own watchdog, a minute
    later, does it should the timer never get the interpreter (a call stuck holding it)."""
    timer = threading.Timer(TEST_LIMIT, _hung, args=(request.config, request.node.nodeid))
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(TEST_LIMIT + 60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    timer.cancel()
