"""Suite-wide rules.

On CI (``CI=true``) a skipped test is a failure: CI runs as root on a machine that
``scripts/setup.sh`` installed, so everything a test may skip for (root, file handles,
bash and tar, the guests) is there, and a skip there would hide that it is not.
"""
from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") == "true" and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped on CI, where nothing may be: {reason}"
