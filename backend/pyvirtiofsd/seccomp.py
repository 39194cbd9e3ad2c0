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

The sandbox supervisor (:mod:`pyvirtiofsd.sandbox`, a small C program) loads a filter of its
own, with the same action, as soon as it runs: :data:`SUPERVISOR_ALLOWED`, a much shorter
list (waiting, forwarding signals, removing the socket, logging, exiting), with ``kill``
limited to the daemon and itself (:func:`supervisor_rules`).  One mechanism, two lists, both
measured by ``scripts/gen-seccomp.py``.
"""
from __future__ import annotations

import os
import resource

from pyvirtiofsd import logs

from ._cext import ffi, lib
from .daemon import StartupError
from .seccomp_syscalls import SUPERVISOR_TRACED, TRACED

log = logs.get_logger("pyvirtiofsd.seccomp")

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
"""Allowed calls whose argument ``index`` must equal ``value`` (or one of a tuple of values)."""

FILE_HANDLE_CALLS = frozenset({"name_to_handle_at", "open_by_handle_at"})
"""Only for ``--inode-file-handles``: with CAP_DAC_READ_SEARCH, open_by_handle_at opens any
file of a file system the daemon holds an fd on, sandbox or not; without file handles the
daemon never makes these calls, so they stay off the list."""


METRICS_CALLS = frozenset({"recvfrom", "shutdown"})
"""Only for ``--metrics-address``: serving HTTP on the socket bound before the sandbox
(:mod:`pyvirtiofsd.metrics`) reads requests with recvfrom and ends each connection with
shutdown; the rest of what it does (accept4, poll, sendto, close) the daemon does anyway."""


class SeccompError(StartupError):
    pass


def syscall_number(name: str) -> int | None:
    """The number of syscall ``name`` on this architecture, None if it has none."""
    nr = lib.pvfs_seccomp_resolve(name.encode())
    return None if nr < 0 else nr


def rule_list(allowed=ALLOWED, without=(), only_with=None) -> list[tuple[str, int, int]]:
    """(name, argument index or -1, value) for each rule of a filter allowing ``allowed``
    minus ``without``, arguments restricted as ``only_with`` says (see :func:`install`)."""
    only_with = ONLY_WITH if only_with is None else only_with
    wanted: list[tuple[str, int, int]] = []
    for name in sorted(set(allowed) - set(without)):
        arg, values = only_with.get(name, (-1, 0))
        for value in values if isinstance(values, tuple) else (values,):
            wanted.append((name, arg, value))
    return wanted


def install(mode: str, allowed=ALLOWED, without=(), only_with=None, who="daemon") -> int:
    """Load the filter (``mode`` is one of :data:`MODES`) allowing ``allowed`` minus
    ``without``, each call with any arguments except those in ``only_with`` (the shape of
    :data:`ONLY_WITH`, which is the default).  Returns the number of rules (0 for ``none``)."""
    if mode == "none":
        log.warning("no seccomp filter: every system call is allowed", process=who)
        return 0
    if mode not in ACTIONS:
        raise SeccompError(f"unknown seccomp mode {mode!r}")
    wanted = rule_list(allowed, without, only_with)
    keep = [ffi.new("char[]", name.encode()) for name, _, _ in wanted]
    rules = ffi.new("struct pvfs_seccomp_rule[]", len(wanted))
    for rule, (_, arg, value), cname in zip(rules, wanted, keep):
        rule.name, rule.arg, rule.value = cname, arg, value
    rc = lib.pvfs_seccomp_install(ACTIONS[mode], rules, len(wanted))
    if rc < 0:
        raise SeccompError(f"cannot load the {who}'s seccomp filter: {os.strerror(-rc)}")
    log.debug("seccomp filter loaded", process=who, action=mode, rules=rc)
    return rc


# -- the sandbox supervisor's list -----------------------------------------------------------

SUPERVISOR_BASELINE = frozenset({
    # Signal delivery and restarts: a forwarded signal interrupts wait4.
    "rt_sigreturn", "restart_syscall",
    # Time (log time stamps): normally the vDSO; see BASELINE.
    "clock_gettime", "gettimeofday", "time",
    # The allocator, whatever a run happens to show of it.
    "brk", "mmap", "munmap", "mremap", "madvise",
    # Log lines: stderr, or the datagram socket of --syslog (connected before the fork).
    "write", "sendto",
    # Removing the socket file: unlink, which architectures of the generic table (aarch64)
    # do not have: there glibc calls unlinkat.
    "unlinkat",
    # Mirroring the daemon's death: lower its own core limit (prlimit64, RLIMIT_CORE only),
    # unblock and re-raise the signal; also the trap action's report.
    "getpid", "prlimit64", "rt_sigaction", "rt_sigprocmask", "kill", "gettid", "tgkill",
    # Ending.
    "exit_group",
})


SUPERVISOR_ALLOWED = frozenset(SUPERVISOR_TRACED) | SUPERVISOR_BASELINE


def supervisor_rules(daemon_pid: int, own_pid: int) -> list[tuple[str, int, int]]:
    """The supervisor's filter (:data:`SUPERVISOR_ALLOWED`) as :func:`rule_list`, with ``kill``
    only for the daemon and the supervisor itself, ``tgkill`` (the trap action's re-raise)
    only for itself and ``prlimit64`` only for RLIMIT_CORE.  The supervisor program
    (cext/supervisor/) loads it itself, right after it replaced the Python process that
    forked the daemon (:func:`pyvirtiofsd.sandbox.supervise`)."""
    only_with = {
        "kill": (0, (daemon_pid, own_pid)),
        "tgkill": (0, own_pid),
        "prlimit64": (1, resource.RLIMIT_CORE),
    }
    return rule_list(SUPERVISOR_ALLOWED, only_with=only_with)
