"""The daemon's logging: key=value lines on stderr by default, JSON lines with
``--log-format json``.

Our own, small: ``get_logger(name).info("event", key=value)`` as structlog spells it, and the
lines structlog's ``ConsoleRenderer(colors=False)`` and ``JSONRenderer`` print (ISO time
stamp in UTC, level, event, keys).  structlog itself is not imported: it pulls in asyncio,
ssl (libssl and libcrypto) and inspect, about 8 MiB of resident memory and 40 ms of start-up
for every daemon, to print a line now and then.

:func:`capture` is for tests: it records events as dicts instead of printing them.
"""
from __future__ import annotations

import contextlib
import sys
import time

LEVELS = ("error", "warn", "info", "debug", "off")

_NUMERIC = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40,
            "critical": 50, "off": 50}
_METHODS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning",
            "error": "error", "exception": "error", "critical": "critical", "msg": "info"}


class _Config:
    threshold = 0                  # everything until configure() is called
    level = "debug"
    json = False
    stream = None                  # None: sys.stdout at the time of the call
    captured: list | None = None


_config = _Config()


def configure(level: str = "info", fmt: str = "console", stream=None) -> None:
    # What rendering may need, imported now: the sandbox seals the import system later.
    import traceback  # noqa: F401  (log.exception)
    if fmt == "json":
        import json  # noqa: F401

    _config.threshold = _NUMERIC[level] + (1 if level == "off" else 0)
    _config.level = level
    _config.json = fmt == "json"
    _config.stream = stream or sys.stderr


def settings() -> tuple[str, str]:
    """(level, format) as :func:`configure` was last given them: what the sandbox
    supervisor, a C program, logs with."""
    return _config.level, "json" if _config.json else "console"


@contextlib.contextmanager
def capture():
    """Record every event as a dict (its keys, ``event`` and ``log_level``) in the list
    this yields, instead of printing it -- as ``structlog.testing.capture_logs`` does."""
    saved, _config.captured = _config.captured, []
    try:
        yield _config.captured
    finally:
        _config.captured = saved


def _timestamp() -> str:
    now = time.time()
    micros = int(now * 1_000_000) % 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{micros:06d}Z"


_NEEDS_QUOTES = frozenset(" \t=\r\n\"'")


def _console_value(value) -> str:
    if isinstance(value, str):
        return repr(value) if _NEEDS_QUOTES.intersection(value) else value
    return repr(value)


def _render(level: str, event, kw: dict, exc: str | None) -> str:
    if _config.json:
        import json

        record = {**kw, "event": event, "level": level, "timestamp": _timestamp()}
        if exc:
            record["exception"] = exc
        return json.dumps(record, default=repr)
    line = f"{_timestamp()} [{level:<9s}] {event!s}"
    if kw:
        line = f"{line:<70s} " if len(str(event)) < 30 else line + " "
        line += " ".join(f"{k}={_console_value(kw[k])}" for k in sorted(kw))
    if exc:
        line += "\n" + exc
    return line


def _format_exception() -> str | None:
    if sys.exc_info()[0] is None:
        return None
    try:
        import traceback
    except ImportError:      # not configured, in a sealed sandbox: the exception alone
        return repr(sys.exc_info()[1])
    return "".join(traceback.format_exception(*sys.exc_info())).rstrip("\n")


class Logger:
    """What a module logs with: ``log.info("event", key=value)``."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None):
        self.name = name

    def _log(self, method: str, event, kw: dict) -> None:
        level = _METHODS[method]
        if _NUMERIC[level] < _config.threshold:
            return
        if _config.captured is not None:
            record = {**kw, "event": event, "log_level": level}
            if method == "exception":
                record["exc_info"] = True
            _config.captured.append(record)
            return
        exc = _format_exception() if method == "exception" or kw.pop("exc_info", False) else None
        stream = _config.stream or sys.stdout
        try:
            stream.write(_render(level, event, kw, exc) + "\n")
            stream.flush()
        except (OSError, ValueError):   # a closed or broken stream: the line is lost
            pass

    def debug(self, event=None, **kw) -> None:
        self._log("debug", event, kw)

    def info(self, event=None, **kw) -> None:
        self._log("info", event, kw)

    msg = info

    def warning(self, event=None, **kw) -> None:
        self._log("warning", event, kw)

    warn = warning

    def error(self, event=None, **kw) -> None:
        self._log("error", event, kw)

    def exception(self, event=None, **kw) -> None:
        self._log("exception", event, kw)

    def critical(self, event=None, **kw) -> None:
        self._log("critical", event, kw)


def get_logger(name: str | None = None) -> Logger:
    return Logger(name)
