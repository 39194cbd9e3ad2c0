#!/usr/bin/env python3
"""Derive the seccomp allow-lists of the daemon and of its sandbox supervisor from what
real daemons do.

    scripts/gen-seccomp.py [--fresh] [--e2e] [--workload] [--keep-traces DIR] [-- PYTEST-ARGS...]

Runs the integration tests (and with ``--e2e`` the real-guest tests) with every daemon
(``python -m pyvirtiofsd``) under ``strace -f``, each filter switched from kill/trap to log
so that nothing dies while a list is incomplete.  From each trace it keeps the system calls
made *after* a filter was loaded -- start-up calls (unshare, mount, pivot_root, capset...)
never need allowing -- separately for the daemon and for the sandbox supervisor, which
loads a filter of its own right after it forks the daemon (see :class:`TraceFilter`).  The
unions are written to backend/pyvirtiofsd/seccomp_syscalls.py (TRACED and
SUPERVISOR_TRACED), merged with the lists already there unless ``--fresh``; what changed is
printed.  The supervisor's paths are in tests/integration/test_sandbox.py and
test_seccomp.py (signals forwarded, front-end gone, the daemon killed and mirrored).

``--workload`` adds what the test suite cannot promise to reach: real guests running a
broad file-system workload with real tools (tests/e2e/seccomp_workload.py: coreutils,
``tar x`` of a 3,120-file tree, find, dd with O_DIRECT, mknod/mkfifo, flock and fcntl locks,
fallocate, cp --reflink=auto, SEEK_DATA/SEEK_HOLE, setfattr/getfattr, setfacl/getfacl,
mmap, fsync/fdatasync/syncfs, statfs, RENAME_EXCHANGE, O_TMPFILE, large and 5 GiB-offset
I/O), once per daemon configuration of tests/e2e/test_seccomp_workload.py (QEMU 11.1 with
sid's 7.x guest and QEMU 7.2 with Debian 12's 6.1; POSIX ACLs, writeback, direct I/O,
killpriv v2, cache always/never, mmap with cache never, file handles, no thread pool, an
xattr map, chroot and namespace sandboxes).  Debian packages no conformance suite
(pjdfstest, xfstests) to run instead.  ``--workload`` alone runs it after the integration
tests; ``--workload -- tests/e2e/test_seccomp_workload.py`` runs only the workload.

How a daemon gets traced: a ``sitecustomize`` module on PYTHONPATH, active only when
PVFS_SECCOMP_TRACE_DIR is set, attaches ``strace -p`` to any ``-m pyvirtiofsd`` process as
it starts (before the daemon's own code runs) and wraps ``pyvirtiofsd.seccomp.install``
(which both filters go through).  strace writes into this script run as a filter
(``--filter-trace``), which keeps only the names: a daemon that polls makes gigabytes of
trace in a long test.  Nothing in the daemon knows about any of it.  ``--keep-traces DIR``
leaves each run's lists in DIR/calls.PID (lines ``daemon NAME`` / ``supervisor NAME``).

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
WORKLOAD_TEST = ROOT / "tests" / "e2e" / "test_seccomp_workload.py"
WORKLOAD_ENV = {"PYVIRTIOFSD_WORKLOAD_CONFIGS": "all",   # every daemon configuration
                "PYVIRTIOFSD_WORKLOAD_DIRS": "60"}      # a 3,120-file tree to untar

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
    # setsid -f: strace must not be our child -- a supervisor's child is taken for the
    # daemon (by the tests, which signal it), and reaping it is no part of a daemon's run.
    subprocess.run(["setsid", "-f", "strace", "-f", "-qq", "-ttt", "-s", "0", "-o", sink,
                    "-p", str(pid)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # start only once every call is seen
        with open("/proc/self/status") as f:
            if any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f):
                break
        time.sleep(0.005)
    import pyvirtiofsd.seccomp as seccomp

    real_install = seccomp.install

    def install(mode, *args, **kwargs):
        # Log instead of kill/trap: an incomplete list must not end the run.
        return real_install("none" if mode == "none" else "log", *args, **kwargs)

    seccomp.install = install
    import pyvirtiofsd.sandbox as sandbox

    real_supervise = sandbox.supervise

    def supervise(pid, seccomp_mode="kill", *args, **kwargs):
        # The same for the supervisor program's filter (it loads it itself).
        return real_supervise(pid, "none" if seccomp_mode == "none" else "log", *args, **kwargs)

    sandbox.supervise = supervise


_trace_pyvirtiofsd()
'''

LINE = re.compile(r"^(\d+)\s+[\d.]+\s+(.*)$")
CALL = re.compile(r"^(\w+)\(")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")
RESULT = re.compile(r"=\s+(-?\d+)(?:\s|$)")
FORK = re.compile(r"^(?:clone|clone3|fork|vfork)\(")
MARKER = "seccomp(SECCOMP_SET_MODE_FILTER"
DAEMON, SUPERVISOR = "daemon", "supervisor"


def _result(full: str) -> int | None:
    m = RESULT.search(full.rsplit(")", 1)[-1])
    return None if m is None else int(m.group(1))


class TraceFilter:
    """Reads one ``strace -f -ttt -p ROOT`` output line by line and keeps, separately for
    the daemon and for a sandbox supervisor, the names of the system calls each entered
    after its own filter went on.

    Everything strace follows descends from ROOT, the process started as the daemon.  With a
    sandbox, ROOT forks the daemon (a clone without CLONE_THREAD) and stays as the
    supervisor: ROOT is then the supervisor, with a filter of its own, and every other
    process or thread is the daemon or was created by it.  Without one, ROOT is the daemon
    itself and never forks; its threads are the daemon too.  (The daemon's own clone()
    results cannot tell threads apart: inside its pid namespace they are namespace-local
    numbers, while strace prints host ones; so only ROOT's clones are looked at.)  Each
    side's successful ``seccomp(SECCOMP_SET_MODE_FILTER, ...)`` starts its recording: the
    daemon's covers all its threads (TSYNC).  Streaming, because a daemon that polls makes
    gigabytes of trace in a long test."""

    def __init__(self) -> None:
        self.root: int | None = None
        self.root_forked = False
        self.filtered = {DAEMON: False, SUPERVISOR: False}
        self.pending: dict[int, str] = {}
        self.seen: dict[str, set[str]] = {DAEMON: set(), SUPERVISOR: set()}

    def who(self, pid: int) -> str:
        return SUPERVISOR if pid == self.root and self.root_forked else DAEMON

    def feed(self, raw: str) -> tuple[str, str] | None:
        """One line; returns (who, name) for a system call ``who`` is seen making for the
        first time under its filter, if any."""
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
            self._completed(pid, self.pending.pop(pid, resumed.group(1) + "(")
                            + rest[resumed.end():])
            return None
        call = CALL.match(rest)
        if not call:
            return None
        name, who = call.group(1), self.who(pid)
        new = self.filtered[who] and name not in self.seen[who]
        if new:
            self.seen[who].add(name)
        if rest.endswith("<unfinished ...>"):
            self.pending[pid] = rest[: -len("<unfinished ...>")]
        else:
            self._completed(pid, rest)
        return (who, name) if new else None

    def _completed(self, pid: int, full: str) -> None:
        """A call whose result is known: ROOT forking, or a filter going on."""
        if (pid == self.root and not self.root_forked and FORK.match(full)
                and "CLONE_THREAD" not in full and (_result(full) or 0) > 0):
            self.root_forked = True
        elif full.startswith(MARKER) and _result(full) == 0:
            self.filtered[self.who(pid)] = True


def parse_trace(text: str, who: str = DAEMON) -> set[str]:
    """The system calls ``who`` made under its filter in a whole trace (see
    :class:`TraceFilter`)."""
    f = TraceFilter()
    for line in text.splitlines():
        f.feed(line)
    return f.seen[who]


def filter_trace(out_path: str) -> int:
    """``--filter-trace OUT``: strace's output on stdin; each new name is appended to OUT
    at once as ``daemon NAME`` or ``supervisor NAME`` (either may be killed at any point)."""
    f = TraceFilter()
    with open(out_path, "a") as out:
        for line in sys.stdin:
            new = f.feed(line)
            if new is not None:
                out.write(" ".join(new) + "\n")
                out.flush()
    return 0


def read_calls(path: Path) -> dict[str, set[str]]:
    """One --filter-trace output file: who -> names."""
    found: dict[str, set[str]] = {DAEMON: set(), SUPERVISOR: set()}
    for line in path.read_text().splitlines():
        who, _, name = line.partition(" ")
        if who in found and name:
            found[who].add(name)
    return found


def current_lists() -> tuple[dict[str, set[str]], list[str]]:
    """The lists in OUTPUT now (who -> names) and its RUNS."""
    namespace: dict = {}
    if OUTPUT.exists():
        exec(OUTPUT.read_text(), namespace)
    return ({DAEMON: set(namespace.get("TRACED", ())),
             SUPERVISOR: set(namespace.get("SUPERVISOR_TRACED", ()))},
            list(namespace.get("RUNS", ())))


def _frozenset(names: set[str]) -> str:
    return "frozenset({\n" + "".join(f"    {n!r},\n" for n in sorted(names)) + "})"


def write_lists(lists: dict[str, set[str]], runs: list[str]) -> None:
    run_lines = "".join(f"    {r!r},\n" for r in runs)
    OUTPUT.write_text(f'''"""Generated by scripts/gen-seccomp.py -- do not edit by hand: re-run the script.

The system calls daemons made after loading their seccomp filter (TRACED), and the ones
their sandbox supervisors made after loading theirs (SUPERVISOR_TRACED), over the runs
named below (see pyvirtiofsd.seccomp for how the lists are used).  Architecture: {os.uname().machine}.
"""

RUNS = (
{run_lines})

TRACED = {_frozenset(lists[DAEMON])}

SUPERVISOR_TRACED = {_frozenset(lists[SUPERVISOR])}
''')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", action="store_true", help="do not merge with the current lists")
    ap.add_argument("--e2e", action="store_true", help="also boot real guests (tests/e2e)")
    ap.add_argument("--workload", action="store_true",
                    help=f"also run the broad guest workload ({WORKLOAD_TEST.relative_to(ROOT)}) "
                         "in every configuration")
    ap.add_argument("--keep-traces", metavar="DIR",
                    help="leave each daemon's lists (calls.PID) in DIR")
    ap.add_argument("--filter-trace", metavar="OUT", help=argparse.SUPPRESS)  # strace's sink
    ap.add_argument("pytest_args", nargs="*", help="instead of the default test selection")
    opts = ap.parse_args()
    if opts.filter_trace:
        return filter_trace(opts.filter_trace)
    if shutil.which("strace") is None:
        print("gen-seccomp: strace is not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    tests = opts.pytest_args or ["tests/integration"] + (["tests/e2e"] if opts.e2e else [])
    workload = str(WORKLOAD_TEST.relative_to(ROOT))
    if opts.workload and workload not in tests:
        tests.append(workload)
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
        if opts.workload:
            env.update({k: os.environ.get(k, v) for k, v in WORKLOAD_ENV.items()})
        cmd = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        print("gen-seccomp: running", " ".join(cmd[1:]), flush=True)
        status = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        print(f"gen-seccomp: pytest exited {status} (failures are expected under strace; "
              "only the traces count)")
        traced: dict[str, set[str]] = {DAEMON: set(), SUPERVISOR: set()}
        used = {DAEMON: 0, SUPERVISOR: 0}
        files = sorted(trace_dir.glob("calls.*"))
        for path in files:
            for who, found in read_calls(path).items():
                used[who] += bool(found)
                traced[who] |= found
    if not traced[DAEMON]:
        print("gen-seccomp: no daemon loaded a filter; nothing written", file=sys.stderr)
        return 1
    previous, runs = current_lists()
    new = {who: traced[who] | (set() if opts.fresh else previous[who]) for who in traced}
    configs = env.get("PYVIRTIOFSD_WORKLOAD_CONFIGS")
    run = (f"{' '.join(tests)}{f' (workload configurations: {configs})' if opts.workload else ''}: "
           f"{used[DAEMON]} of {len(files)} daemons filtered, {used[SUPERVISOR]} supervisors")
    write_lists(new, ([] if opts.fresh else runs) + [run])
    for who in (DAEMON, SUPERVISOR):
        print(f"gen-seccomp: {who}: {len(new[who])} system calls ({len(traced[who])} seen in "
              f"this run) -> {OUTPUT.relative_to(ROOT)}")
        if new[who] - previous[who]:
            print("  added:", " ".join(sorted(new[who] - previous[who])))
        if previous[who] - new[who]:
            print("  gone:", " ".join(sorted(previous[who] - new[who])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
