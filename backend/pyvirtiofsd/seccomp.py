"""The system-call filter (virtiofsd's ``--seccomp none|kill|log|trap``, default kill).

Once the daemon is confined and about to accept its front-end, it allows itself only the
system calls it was seen to make while serving: :data:`TRACED`, the list
``scripts/gen-seccomp.py`` derives by running the integration tests and real guests with
every daemon under strace (regenerate it after adding a code path that makes new calls),
plus :data:`BASELINE`, the few calls a run may never show but the daemon can still make.
Everything else -- socket(), execve(), ptrace(), mount(), bpf(), ... -- is refused:

* ``kill``: the kernel kills the whole process at once (SIGSYS; exit status -31);
* ``trap``: SIGSYS; the daemon prints the refused call's name on stderr and dies of it;
* ``log``: the call goes through and the kernel's audit log records it (for finding what a
  new code path needs: run with ``--seccomp log`` and read ``dmesg``/``ausearch``);
* ``none``: no filter.

The filter covers every thread (TSYNC) and sets no_new_privs.
"""
from __future__ import annotations

import os

import structlog

from ._cext import ffi, lib
from .daemon import StartupError
from .seccomp_syscalls import TRACED

log = structlog.get_logger("pyvirtiofsd.seccomp")

ACTIONS = {"kill": lib.PVFS_SECCOMP_KILL, "log": lib.PVFS_SECCOMP_LOG,
           "trap": lib.PVFS_SECCOMP_TRAP}
MODES = ("none", *ACTIONS)

BASELINE = frozenset({
    # Signal delivery and restarts: a run sees them only when a signal lands mid-call.
    "rt_sigreturn", "restart_syscall",
    # Time: normally the vDSO, but a real system call on clock sources the vDSO cannot
    # read (some virtual machines, and after a clock-source switch).
    "clock_gettime", "gettimeofday", "time", "clock_getres", "getcpu",
    # glibc malloc: realloc of a large block moves it with mremap; free trims with madvise.
    "mremap", "madvise",
    # The trap action's own report: write, then re-raise SIGSYS on this thread.
    "write", "rt_sigprocmask", "rt_sigaction", "getpid", "gettid", "tgkill",
    # Ending: a thread returning, the process exiting.
    "exit", "exit_group",
    # The hot path's cached-read attempt (cext/hotpath.c: preadv2 with RWF_NOWAIT), newer
    # than the traced runs; gen-seccomp.py will list it once it has run with it.
    "preadv2",
    # Per-thread alternate signal stacks: sanitizer runtimes (the ASan fuzz run) set one up
    # for every thread, including the hot path's C threads started after the filter.
    "sigaltstack",
})

ALLOWED = frozenset(TRACED) | BASELINE

CLONE_FS = 0x200
ONLY_WITH = {
    # Worker threads unshare their fs_struct for a private umask (passthrough/credentials):
    # that flag alone.  unshare(CLONE_NEWUSER) needs no capability and would hand a
    # taken-over daemon a namespace where it holds them all.
    "unshare": (0, CLONE_FS),
}
"""Allowed calls whose argument ``index`` must equal ``value``."""

FILE_HANDLE_CALLS = frozenset({"name_to_handle_at", "open_by_handle_at"})
"""Only for ``--inode-file-handles``: with CAP_DAC_READ_SEARCH, open_by_handle_at opens any
file of a file system the daemon holds an fd on, sandbox or not; without file handles the
daemon never makes these calls, so they stay off the list."""


class SeccompError(StartupError):
    pass


def syscall_number(name: str) -> int | None:
    """The number of syscall ``name`` on this architecture, None if it has none."""
    nr = lib.pvfs_seccomp_resolve(name.encode())
    return None if nr < 0 else nr


def install(mode: str, allowed=ALLOWED, without=()) -> int:
    """Load the filter (``mode`` is one of :data:`MODES`) allowing ``allowed`` minus
    ``without``.  Returns the number of syscalls allowed (0 for ``none``)."""
    if mode == "none":
        log.warning("no seccomp filter: every system call is allowed")
        return 0
    if mode not in ACTIONS:
        raise SeccompError(f"unknown seccomp mode {mode!r}")
    names = sorted(set(allowed) - set(without))
    keep = [ffi.new("char[]", n.encode()) for n in names]
    rules = ffi.new("struct pvfs_seccomp_rule[]", len(names))
    for rule, name, cname in zip(rules, names, keep):
        rule.name = cname
        rule.arg, rule.value = ONLY_WITH.get(name, (-1, 0))
    rc = lib.pvfs_seccomp_install(ACTIONS[mode], rules, len(names))
    if rc < 0:
        raise SeccompError(f"cannot load the seccomp filter: {os.strerror(-rc)}")
    log.debug("seccomp filter loaded", action=mode, syscalls=rc)
    return rc
