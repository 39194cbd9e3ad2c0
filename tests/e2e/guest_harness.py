"""What the scripts that run inside a test guest share, and how the host reads what they print.

Standard library only: the guest runs the host's python3 over 9p, and a script imports this
module from its own directory.  A script reports on the serial console in lines
``MARKER {json}``; :func:`parse_lines` reads them back on the host.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback


class Failed(Exception):
    """A check's expectation did not hold."""


def expect(cond, what):
    if not cond:
        raise Failed(what)


def emit(marker, obj):
    """One ``MARKER {json}`` line, in one write (it stays whole on the serial console)."""
    sys.stdout.write(f"{marker} {json.dumps(obj, sort_keys=True)}\n")
    sys.stdout.flush()


def as_user(fn, uid, gid=None):
    """``fn()`` in a forked child running as uid/gid (gid: uid), its JSON-able result; an
    OSError in the child is raised here with the same errno, so callers can expect errnos."""
    gid = uid if gid is None else gid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            msg = {"value": fn()}
        except OSError as e:
            msg = {"errno": e.errno, "text": str(e)}
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            msg = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(msg).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    msg = json.loads(b"".join(chunks) or b'{"error": "child died"}')
    if "errno" in msg:
        raise OSError(msg["errno"], msg["text"])
    if "error" in msg:
        raise Failed(f"as uid {uid}: {msg['error']}")
    return msg["value"]


class Checks(list):
    """A script's checks, in order: ``check = CHECKS.add`` decorates each."""

    def add(self, fn):
        self.append(fn)
        return fn

    def run(self, marker, *args):
        """Call every check with ``args``; one ``MARKER {name, ok, detail, info, seconds}``
        line each, then ``MARKER-DONE <passed> <total>``.  A check returns a detail string,
        an info dict, ``(detail, info)`` or nothing, and fails by raising.  The exit status."""
        passed = 0
        for fn in self:
            t0 = time.monotonic()
            try:
                out = fn(*args)
                detail, info = (out if isinstance(out, tuple) else
                                ("", out) if isinstance(out, dict) else (out or "", {}))
                ok = True
            except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
                detail, info, ok = f"{type(e).__name__}: {e}", {"trace": traceback.format_exc()}, False
            passed += ok
            emit(marker, {"name": fn.__name__, "ok": ok, "detail": detail, "info": info,
                          "seconds": round(time.monotonic() - t0, 2)})
        print(f"{marker}-DONE {passed} {len(self)}", flush=True)
        return 0 if passed == len(self) else 1


def parse_lines(console: str) -> dict[str, list[dict]]:
    """Marker -> the JSON objects of the console lines ``MARKER {...}``, in console order."""
    out: dict[str, list[dict]] = {}
    for marker, payload in re.findall(r"(PVFS-[A-Z]+) (\{.*\})\s*$", console, re.M):
        try:
            out.setdefault(marker, []).append(json.loads(payload))
        except json.JSONDecodeError:  # a line garbled by interleaved kernel output: missing
            pass
    return out
