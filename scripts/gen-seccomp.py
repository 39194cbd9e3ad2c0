#!/usr/bin/env python3
"""Derive the daemon's seccomp allow-list from what real daemons do.

    scripts/gen-seccomp.py [--fresh] [--e2e] [--keep-traces DIR] [-- PYTEST-ARGS...]

Runs the integration tests (and with ``--e2e`` the real-guest tests) with every daemon
(``python -m pyvirtiofsd``) under ``strace -f``, each daemon's filter switched from
kill/trap to log so that nothing dies while the list is incomplete.  From each trace it
keeps the system calls made *after* the filter was loaded -- start-up calls (unshare,
mount, pivot_root, capset...) never need allowing -- by the daemon, not by the sandbox
supervisor (see :class:`TraceFilter`).  The union is written to
backend/pyvirtiofsd/seccomp_syscalls.py, merged with the list already there unless
``--fresh``; what changed is printed.

How a daemon gets traced: a ``sitecustomize`` module on PYTHONPATH, active only when
PVFS_SECCOMP_TRACE_DIR is set, attaches ``strace -p`` to any ``-m pyvirtiofsd`` process as
it starts (before the daemon's own code runs) and wraps ``pyvirtiofsd.seccomp.install``.
strace writes into this script run as a filter (``--filter-trace``), which keeps only the
names: a daemon that polls makes gigabytes of trace in a long test.  Nothing in the daemon
knows about any of it.  ``--keep-traces DIR`` leaves each daemon's list in DIR/calls.PID.

The test outcome does not matter here (a daemon under strace is slow); the traces do.
Run the normal suite afterwards: it runs every daemon with ``--seccomp kill``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "backend" / "pyvirtiofsd" / "seccomp_syscalls.py"
PYTHON = ROOT / ".venv" / "bin" / "python"

SITECUSTOMIZE = r'''
"""Installed by scripts/gen-seccomp.py for one run: trace pyvirtiofsd daemons."""
import os


def _trace_pyvirtiofsd():
    trace_dir = os.environ.get("PVFS_SECCOMP_TRACE_DIR")
    if not trace_dir:
        return
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return
    if argv[1:3] != [b"-m", b"pyvirtiofsd"] or b"--print-capabilities" in argv:
        return
    import subprocess
    import time

    pid = os.getpid()
    out = os.path.join(trace_dir, f"calls.{pid}")
    sink = f"|{os.environ['PVFS_SECCOMP_FILTER']} --filter-trace {out}"
    subprocess.Popen(["strace", "-f", "-qq", "-ttt", "-s", "0", "-o", sink, "-p", str(pid)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # start only once every call is seen
        with open("/proc/self/status") as f:
            if any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f):
                break
        time.sleep(0.005)
    import pyvirtiofsd.seccomp as seccomp

    real_install = seccomp.install

    def install(mode, allowed=seccomp.ALLOWED):
        # Log instead of kill/trap: an incomplete list must not end the run.
        return real_install("none" if mode == "none" else "log", allowed)

    seccomp.install = install


_trace_pyvirtiofsd()
'''

LINE = re.compile(r"^(\d+)\s+[\d.]+\s+(.*)$")
CALL = re.compile(r"^(\w+)\(")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")
RESULT = re.compile(r"=\s+(-?\d+)(?:\s|$)")
MARKER = "seccomp(SECCOMP_SET_MODE_FILTER"


class TraceFilter:
    """Reads one ``strace -f -ttt -p ROOT`` output line by line and keeps the names of the
    system calls entered after the filter went on, by every process except a supervisor.

    Everything strace follows descends from ROOT, the process started as the daemon: with a
    sandbox, ROOT is the supervisor (one thread, never filtered) and every other process or
    thread is the daemon or was created by it; without one, ROOT is the daemon itself.
    (clone() results cannot tell threads apart: inside the daemon's pid namespace they are
    namespace-local numbers, while strace prints host ones.)  Streaming, because a daemon
    that polls makes gigabytes of trace in a long test."""

    def __init__(self) -> None:
        self.root: int | None = None
        self.filtered = False
        self.supervisor: int | None = None
        self.pending: dict[int, str] = {}
        self.seen: set[str] = set()

    def feed(self, raw: str) -> str | None:
        """One line; returns a system call name seen for the first time, if any."""
        m = LINE.match(raw)
        if not m:
            return None
        pid, rest = int(m.group(1)), m.group(2)
        if self.root is None:
            self.root = pid
        if rest.startswith(("---", "+++")):
            return None
        resumed = RESUMED.match(rest)
        if resumed:
            self._check_marker(pid, self.pending.pop(pid, resumed.group(1) + "(")
                               + rest[resumed.end():])
            return None
        call = CALL.match(rest)
        if not call:
            return None
        name = call.group(1)
        new = self.filtered and pid != self.supervisor and name not in self.seen
        if new:
            self.seen.add(name)
        if rest.endswith("<unfinished ...>"):
            self.pending[pid] = rest[: -len("<unfinished ...>")]
        else:
            self._check_marker(pid, rest)
        return name if new else None

    def _check_marker(self, pid: int, full: str) -> None:
        if self.filtered or not full.startswith(MARKER):
            return
        result = RESULT.search(full.rsplit(")", 1)[-1])
        if result is not None and result.group(1) == "0":
            self.filtered = True
            self.supervisor = self.root if pid != self.root else None


def parse_trace(text: str) -> set[str]:
    """The system calls made under the filter in a whole trace (see :class:`TraceFilter`)."""
    f = TraceFilter()
    for line in text.splitlines():
        f.feed(line)
    return f.seen


def filter_trace(out_path: str) -> int:
    """``--filter-trace OUT``: strace's output on stdin; each new name is appended to OUT
    at once (the daemon may be killed at any point)."""
    f = TraceFilter()
    with open(out_path, "a") as out:
        for line in sys.stdin:
            name = f.feed(line)
            if name is not None:
                out.write(name + "\n")
                out.flush()
    return 0


def current_list() -> set[str]:
    namespace: dict = {}
    exec(OUTPUT.read_text(), namespace)
    return set(namespace["TRACED"])


def write_list(names: set[str], runs: list[str]) -> None:
    body = "\n".join(f"    {n!r}," for n in sorted(names))
    run_lines = "\n".join(f"    {r!r}," for r in runs)
    OUTPUT.write_text(f'''"""Generated by scripts/gen-seccomp.py -- do not edit by hand: re-run the script.

The system calls daemons made after loading their seccomp filter, over the runs named
below (see pyvirtiofsd.seccomp for how the list is used).  Architecture: {os.uname().machine}.
"""

RUNS = (
{run_lines}
)

TRACED = frozenset({{
{body}
}})
''')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", action="store_true", help="do not merge with the current list")
    ap.add_argument("--e2e", action="store_true", help="also boot real guests (tests/e2e)")
    ap.add_argument("--keep-traces", metavar="DIR",
                    help="leave each daemon's list (calls.PID) in DIR")
    ap.add_argument("--filter-trace", metavar="OUT", help=argparse.SUPPRESS)  # strace's sink
    ap.add_argument("pytest_args", nargs="*", help="instead of the default test selection")
    opts = ap.parse_args()
    if opts.filter_trace:
        return filter_trace(opts.filter_trace)
    if shutil.which("strace") is None:
        print("gen-seccomp: strace is not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    tests = opts.pytest_args or ["tests/integration"] + (["tests/e2e"] if opts.e2e else [])
    with tempfile.TemporaryDirectory(prefix="gen-seccomp-") as tmp:
        hook_dir = Path(tmp) / "hook"
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        trace_dir = Path(opts.keep_traces or Path(tmp) / "traces")
        trace_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PVFS_SECCOMP_TRACE_DIR=str(trace_dir),
                   PVFS_SECCOMP_FILTER=f"{sys.executable} {Path(__file__).resolve()}",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(hook_dir),
                                                            os.environ.get("PYTHONPATH")])))
        cmd = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        print("gen-seccomp: running", " ".join(cmd[1:]), flush=True)
        status = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        print(f"gen-seccomp: pytest exited {status} (failures are expected under strace; "
              "only the traces count)")
        traced: set[str] = set()
        files = sorted(trace_dir.glob("calls.*"))
        used = 0
        for path in files:
            found = set(path.read_text().split())
            used += bool(found)
            traced |= found
    if not traced:
        print("gen-seccomp: no daemon loaded a filter; nothing written", file=sys.stderr)
        return 1
    previous = current_list() if OUTPUT.exists() else set()
    old = set() if opts.fresh else previous
    new = traced | old
    runs = [f"{' '.join(tests)}: {used} of {len(files)} daemons filtered"]
    if not opts.fresh and OUTPUT.exists():
        namespace: dict = {}
        exec(OUTPUT.read_text(), namespace)
        runs = list(namespace.get("RUNS", ())) + runs
    write_list(new, runs)
    print(f"gen-seccomp: {len(new)} system calls ({len(traced)} seen in this run) -> "
          f"{OUTPUT.relative_to(ROOT)}")
    if new - previous:
        print("  added:", " ".join(sorted(new - previous)))
    if previous - new:
        print("  gone:", " ".join(sorted(previous - new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
