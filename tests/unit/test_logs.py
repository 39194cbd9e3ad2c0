"""pyvirtiofsd.logs: the daemon's lines (key=value console, JSON) and capture()."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from pyvirtiofsd import logs

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


@pytest.fixture(autouse=True)
def restore_configuration():
    """configure() is process-wide: leave it as the other tests found it."""
    saved = dict(vars(logs._config))
    yield
    for name in ("threshold", "level", "json", "stream", "captured"):
        if name in saved:
            setattr(logs._config, name, saved[name])
        elif name in vars(logs._config):
            delattr(logs._config, name)


def _render(fmt: str, level: str = "debug") -> list[str]:
    out = io.StringIO()
    logs.configure(level, fmt, stream=out)
    log = logs.get_logger("t")
    log.info("hello world", b="x y", a=1, c=None, e="")
    log.warning("w")
    log.debug("dbg", z=3)
    log.error("event-name-that-is-longer-than-thirty-chars", k=1.5)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("boom", q=1)
    return out.getvalue().splitlines()


def test_console_lines():
    lines = _render("console")
    assert re.fullmatch(STAMP + r" \[info     \] hello world {20}a=1 b='x y' c=None e=", lines[0])
    assert re.fullmatch(STAMP + r" \[warning  \] w", lines[1])
    assert re.fullmatch(STAMP + r" \[debug    \] dbg {28}z=3", lines[2])
    assert lines[3].endswith("[error    ] event-name-that-is-longer-than-thirty-chars k=1.5")
    assert lines[4].endswith("[error    ] boom                           q=1")
    assert lines[5] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"


def test_json_lines_and_levels():
    lines = _render("json", level="info")
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["hello world", "w",
                                             "event-name-that-is-longer-than-thirty-chars", "boom"]
    assert list(records[0]) == ["b", "a", "c", "e", "event", "level", "timestamp"]
    assert records[0]["c"] is None and records[1]["level"] == "warning"
    assert re.fullmatch(STAMP, records[0]["timestamp"])
    assert records[3]["level"] == "error"
    assert records[3]["exception"].endswith("ZeroDivisionError: division by zero")


def test_off_logs_nothing_and_capture_records():
    out = io.StringIO()
    logs.configure("off", "console", stream=out)
    logs.get_logger().error("x")
    assert out.getvalue() == ""
    logs.configure("warn", "console", stream=out)
    with logs.capture() as captured:
        logs.get_logger().info("filtered")
        logs.get_logger().warning("kept", n=2)
    assert captured == [{"n": 2, "event": "kept", "log_level": "warning"}]
    assert out.getvalue() == ""


def test_configure_loads_what_rendering_needs_before_the_sandbox_seals_imports():
    """After configure() the import system may be sealed (the namespace sandbox): an
    exception or a JSON line must not need a module that is not loaded yet."""
    program = ("import sys\nfrom pyvirtiofsd import logs\nlogs.configure('info', 'json')\n"
               "print('traceback' in sys.modules, 'json' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "True"]
