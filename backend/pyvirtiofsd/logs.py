"""structlog set-up: key=value lines on stderr by default, JSON lines with
``--log-format json``."""
from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("error", "warn", "info", "debug", "off")


def configure(level: str = "info", fmt: str = "console", stream=None) -> None:
    stream = stream or sys.stderr
    numeric = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
               "info": logging.INFO, "debug": logging.DEBUG, "off": logging.CRITICAL}[level]
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # "off": structlog only filters its own levels (up to CRITICAL); drop the rest here.
        logger_factory=(structlog.ReturnLoggerFactory() if level == "off"
                        else structlog.PrintLoggerFactory(stream)),
        cache_logger_on_first_use=False,
    )
