"""Process containment (virtiofsd's ``--sandbox``): what a daemon taken over by its guest
can still see.

``namespace`` (default)
    The daemon runs as pid 1 of a new pid namespace, in a new network namespace (nothing but
    a loopback that is down) and a new mount namespace whose root is a small read-only
    tmpfs holding two things: ``/shared`` (a recursive bind mount of the shared directory)
    and ``/proc`` (a fresh proc of its own pid namespace, showing no other process).  The
    old root is detached: no host path resolves any more.  Unlike virtiofsd, the root is not
    the shared directory itself: a Python daemon still opens files by absolute path now and
    then (the import system, glibc's locale and time-zone files), and those must find
    nothing rather than files the guest wrote.
``chroot``
    For containers where namespaces are not allowed: ``chroot`` into the shared directory.
    /proc stays reachable through the working directory, which is left on the daemon's own
    ``/proc/<pid>/fd`` (the passthrough reopens inodes there); nothing else of the host
    resolves by path.  Weaker: same pid and network namespace as the host, and a daemon
    running code of the guest's choosing could walk out through that working directory.
``none``
    No containment.

In both confining modes the daemon is a child of a small supervisor that stays outside
(the process that bound the socket): right after the fork it execs
``pyvirtiofsd-supervisor`` (cext/supervisor/, installed beside the extension), so no
interpreter stays behind.  It reads nothing from the guest; it loads a seccomp filter of its
own, with the daemon's ``--seccomp`` action and a short list of its own
(:func:`pyvirtiofsd.seccomp.supervisor_rules`), forwards signals to the daemon, waits for it,
removes the socket file (which the daemon can no longer name) and exits the way the daemon
did.  After confinement the import system is sealed -- only
built-in and frozen modules -- so a module the daemon did not load beforehand cannot come
from the shared directory.
"""
from __future__ import annotations

import errno
import importlib
import importlib.machinery
import os
import pkgutil
import select
import signal
import sys
import threading

from pyvirtiofsd import logs

from . import seccomp, userns
from ._cext import ffi, lib
from .startup import FORWARDED, StartupError, hold_signals  # noqa: F401 - hold_signals: its old home

log = logs.get_logger("pyvirtiofsd.sandbox")

MODES = ("namespace", "chroot", "none")
SHARED = "/shared"
"""Where the shared directory is inside the namespace sandbox."""
METRICS_DIR = "/metrics"
"""Where ``--metrics-file``'s directory is inside the namespace sandbox (a bind mount)."""

SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyvirtiofsd-supervisor")
"""The supervisor program (built with the extension: ``scripts/build-ext.sh``, or pip)."""


class SandboxError(StartupError):
    """The sandbox could not be set up (the message names the step)."""


def _check(rc: int, what: str, hint: str = "") -> None:
    if rc < 0:
        raise SandboxError(f"sandbox: {what}: {os.strerror(-rc)}"
                           + (f" ({hint})" if hint and rc == -errno.EPERM else ""))


_NO_NAMESPACES = ("namespaces need CAP_SYS_ADMIN, in the host's user namespace or in one "
                  "of our own; where neither is allowed, use --sandbox chroot or none")


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


NOT_THE_DAEMON = frozenset({
    "pyvirtiofsd.__main__", "pyvirtiofsd.bench", "pyvirtiofsd.frontend", "pyvirtiofsd.guest",
    "pyvirtiofsd._testkit", "pyvirtiofsd.ops",
})
"""The package's tools (and their subpackages): never loaded by the daemon."""

OPTIONAL = frozenset({"pyvirtiofsd.metrics"})
"""Modules of the daemon that only an option needs: imported by the command line before
confinement when the option is given, and then kept; otherwise left out of the preload,
so a daemon without the option does not carry them."""


def preload() -> None:
    """Import every module of the daemon now, while the import system can still find them
    (a lazy import after confinement would fail: see :func:`seal_imports`) -- and none of
    the tools in :data:`NOT_THE_DAEMON`, so the sandboxed process carries none of their
    code, nor the :data:`OPTIONAL` modules its options did not ask for."""
    import pyvirtiofsd

    for name in _daemon_modules(pyvirtiofsd.__path__, "pyvirtiofsd."):
        try:
            importlib.import_module(name)
        except ImportError as e:  # an optional dependency the daemon does not need
            log.debug("not preloaded", module=name, error=str(e))
    _preload_unwinder()


def _preload_unwinder() -> None:
    """Load libgcc_s now: glibc dlopens it the first time a thread calls pthread_exit, which
    Python does for every thread still running at interpreter shutdown -- inside a chroot
    the dlopen fails and glibc aborts the process ("libgcc_s.so.1 must be installed for
    pthread_exit to work"), so a daemon told to stop died of SIGABRT instead.  Once loaded,
    glibc finds it by its soname without the file system."""
    import ctypes

    try:
        ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        log.warning("cannot preload libgcc_s: a thread still running at exit may abort the "
                    "sandboxed daemon", error=str(e))


def _daemon_modules(path, prefix: str):
    """Module names below ``path``, depth first; a package is imported only to look inside
    it (``pkgutil.walk_packages`` would import the tools' packages too)."""
    for info in pkgutil.iter_modules(path, prefix):
        if info.name in NOT_THE_DAEMON or (info.name in OPTIONAL
                                           and info.name not in sys.modules):
            continue
        yield info.name
        if info.ispkg:
            package = importlib.import_module(info.name)
            yield from _daemon_modules(package.__path__, info.name + ".")


def seal_imports() -> None:
    """Only built-in and frozen modules from now on: every finder that searches the file
    system goes, including package ``__path__`` lookups and editable-install finders."""
    keep = (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter)
    sys.meta_path[:] = [f for f in sys.meta_path if f in keep]
    sys.path[:] = []
    sys.path_hooks[:] = []
    sys.path_importer_cache.clear()


# -- the supervisor --------------------------------------------------------------------------


def spawn(mode: str, seccomp_mode: str = "kill", uid_map: userns.IdMapping | None = None,
          gid_map: userns.IdMapping | None = None) -> int:
    """Fork the daemon for the confining modes: returns its pid in the parent, which then
    becomes the supervisor (:func:`supervise`), and 0 in the daemon; ``none`` does not fork
    and returns 0.  ``seccomp_mode`` is checked here, before anything is forked; the
    supervisor loads its filter itself.

    The fork happens before any thread exists (a pid namespace takes effect for children
    only, and a forked copy of a threaded process is unsafe).  Forwarded signals are blocked
    across the fork (:func:`hold_signals`): the daemon, which as pid 1 of its namespace
    would silently drop any signal it has no handler for, receives them once its handlers
    are in place (:func:`_daemon_signals`, :func:`ready`); the supervisor, once it has its
    own (they stay pending across its exec)."""
    if mode == "none":
        return 0
    if mode not in MODES:
        raise SandboxError(f"unknown sandbox mode {mode!r}")
    if seccomp_mode not in seccomp.MODES:
        raise SandboxError(f"unknown seccomp mode {seccomp_mode!r}")
    if not os.access(SUPERVISOR, os.X_OK):
        raise SandboxError(f"sandbox: the supervisor program {SUPERVISOR} is missing: build it "
                           "with scripts/build-ext.sh (or pip install), or use --sandbox none")
    if _thread_count() != 1:
        raise SandboxError(f"sandbox: cannot fork with {_thread_count()} threads running")
    if mode == "namespace":
        if userns.needed(uid_map, gid_map):
            userns.enter(uid_map, gid_map)     # an ordinary user's way to the rest
        _check(lib.pvfs_sb_unshare(lib.PVFS_SB_CLONE_NEWPID), "unshare(CLONE_NEWPID)",
               _NO_NAMESPACES)
    hold_signals()
    sys.stdout.flush()
    sys.stderr.flush()
    # The supervisor holds the write end for its whole life (across its exec): should it
    # die before the daemon has asked to be told (PR_SET_PDEATHSIG), the daemon sees the
    # end of this pipe.
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        # Do not outlive the supervisor (killed with SIGKILL, it cannot clean up for us).
        _check(lib.pvfs_sb_set_pdeathsig(signal.SIGTERM), "prctl(PR_SET_PDEATHSIG)")
        gone = select.select([alive_r], [], [], 0)[0]
        os.close(alive_r)
        if gone:
            raise SandboxError("sandbox: the supervisor died as the daemon started")
        _daemon_signals()
    else:
        os.close(alive_r)
        os.set_inheritable(alive_w, True)
    return pid


def supervisor_command(pid: int, seccomp_mode: str = "kill", socket_path: str | None = None,
                       syslog_fd: int | None = None) -> list[str]:
    """The supervisor program's command line for the daemon ``pid``: its filter (the rules
    of :func:`pyvirtiofsd.seccomp.supervisor_rules` for this process, whose pid it keeps),
    the socket file to remove, and the log settings of :mod:`pyvirtiofsd.logs`."""
    level, fmt = logs.settings()
    argv = [SUPERVISOR, str(pid), "--seccomp", seccomp_mode, "--log-level", level,
            "--log-format", fmt]
    if seccomp_mode != "none":
        for name, arg, value in seccomp.supervisor_rules(pid, os.getpid()):
            argv += ["--allow", name if arg < 0 else f"{name}:{arg}:{value}"]
    if socket_path is not None:
        argv += ["--unlink", socket_path]
    if syslog_fd is not None:
        os.set_inheritable(syslog_fd, True)
        argv += ["--syslog-fd", str(syslog_fd)]
    return argv


def _daemon_signals() -> None:
    """In the daemon, right after :func:`spawn`.  The forwarded signals stay blocked --
    pending, not lost -- until the daemon loop has its handlers (:func:`ready`): a SIGUSR1
    for statistics or a SIGTERM that arrive during set-up then reach the real handler.
    HUP and QUIT, which the daemon loop does not handle, stop it cleanly (as pid 1 of its
    namespace it would otherwise ignore them)."""
    def stop(signum, frame):
        raise SystemExit(0)

    for s in (signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, stop)


def release_startup_memory() -> None:
    """Give the kernel back the heap pages start-up freed (the bytes of every module file
    read, the import system's temporaries): glibc keeps freed memory below the top of its
    heap for reuse, resident, and a daemon never needs that much again."""
    import gc

    gc.collect()
    try:
        import ctypes   # loaded with the daemon (the passthrough's credentials use it)

        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):   # not glibc
        pass


def ready() -> None:
    """The daemon loop's signal handlers are in place: let the held signals in."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


def supervise(pid: int, seccomp_mode: str = "kill", socket_path: str | None = None,
              syslog_fd: int | None = None, extra=()) -> int:
    """Become the supervisor of ``pid``: exec the supervisor program
    (:func:`supervisor_command`; ``extra``: more of its options), which forwards signals to
    the daemon, waits for it, removes ``socket_path`` and ends as the daemon ended.  Returns
    only if the exec failed, after stopping the daemon: an error (exit 1)."""
    argv = [*supervisor_command(pid, seccomp_mode, socket_path, syslog_fd), *extra]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(SUPERVISOR, argv)
    except OSError as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if socket_path is not None:
            try:
                os.unlink(socket_path)
            except OSError:
                pass
        raise SandboxError(f"sandbox: cannot run the supervisor {SUPERVISOR}: "
                           f"{e.strerror}") from None
    return 1  # not reached


# -- confinement (in the daemon) -------------------------------------------------------------


def confine(mode: str, shared_dir: str, keep_fds=(), binds=None) -> tuple[str, str]:
    """Confine the calling process (the daemon after :func:`spawn`).  Returns where the
    shared directory and the daemon's ``/proc/self/fd`` are now, as paths the daemon can
    open (the latter relative to the working directory in ``chroot`` mode).  Descriptors
    other than stdin/stdout/stderr and ``keep_fds`` are closed: one inherited on a host
    directory would lead out of any sandbox.  ``binds``: {path inside: host directory},
    more directories the namespace sandbox shows (read-write, nosuid, nodev, noexec)."""
    shared_dir = os.path.abspath(shared_dir)
    if mode == "none":
        return shared_dir, "/proc/self/fd"
    close_inherited({0, 1, 2, *keep_fds})
    preload()
    if mode == "namespace":
        _enter_namespaces(shared_dir, binds or {})
        seal_imports()
        return SHARED, "/proc/self/fd"
    if mode == "chroot":
        _enter_chroot(shared_dir)
        seal_imports()
        return "/", "."
    raise SandboxError(f"unknown sandbox mode {mode!r}")


def close_inherited(keep) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, already gone
                pass


def _c(value: str | None):
    return ffi.NULL if value is None else os.fsencode(value)


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> int:
    return lib.pvfs_sb_mount(_c(source), _c(target), _c(fstype), flags, _c(data))


def _enter_namespaces(shared_dir: str, binds: dict[str, str]) -> None:
    """Mount and network namespaces; a read-only tmpfs root with ``/shared`` and a fresh
    ``/proc``; pivot_root into it and detach the old root."""
    L = lib
    _check(L.pvfs_sb_unshare(L.PVFS_SB_CLONE_NEWNS | L.PVFS_SB_CLONE_NEWNET),
           "unshare(CLONE_NEWNS|CLONE_NEWNET)", _NO_NAMESPACES)
    # Nothing we mount from here on propagates back to the host.  Slave rather than
    # private: when the host unmounts something below the shared directory, the daemon's
    # copy goes too, instead of keeping the host's file system busy.
    _check(_mount(None, "/", None, L.PVFS_SB_MS_SLAVE | L.PVFS_SB_MS_REC),
           "make / a slave mount")
    # The new root is assembled on top of /proc: a directory sure to exist, and whose host
    # instance the daemon must stop seeing anyway.
    new_root = "/proc"
    hardened = L.PVFS_SB_MS_NOSUID | L.PVFS_SB_MS_NODEV | L.PVFS_SB_MS_NOEXEC
    _check(_mount("tmpfs", new_root, "tmpfs", hardened, "size=16k,nr_inodes=16,mode=0755"),
           "mount a tmpfs root")
    os.mkdir(new_root + SHARED, 0o755)
    os.mkdir(new_root + "/proc", 0o555)
    _check(_mount(shared_dir, new_root + SHARED, None, L.PVFS_SB_MS_BIND | L.PVFS_SB_MS_REC),
           f"bind mount {shared_dir}")
    for inside, host_dir in binds.items():
        os.mkdir(new_root + inside, 0o755)
        _check(_mount(host_dir, new_root + inside, None, L.PVFS_SB_MS_BIND),
               f"bind mount {host_dir}")
        _check(_mount(None, new_root + inside, None,
                      L.PVFS_SB_MS_REMOUNT | L.PVFS_SB_MS_BIND | hardened),
               f"harden the bind mount of {host_dir}")
    # subset=pid (Linux 5.8): only process directories, no /proc/sys and friends.
    rc = _mount("proc", new_root + "/proc", "proc", hardened, "subset=pid")
    if rc == -errno.EINVAL:  # an older kernel
        rc = _mount("proc", new_root + "/proc", "proc", hardened)
    _check(rc, "mount /proc")
    _check(_mount(None, new_root, None,
                  L.PVFS_SB_MS_REMOUNT | L.PVFS_SB_MS_BIND | L.PVFS_SB_MS_RDONLY | hardened),
           "make the root read-only")
    os.chdir(new_root)
    _check(L.pvfs_sb_pivot_root(b".", b"."), "pivot_root")
    # The old root now sits under the new one at "."; detach it (and everything below it).
    _check(L.pvfs_sb_umount2(b".", L.PVFS_SB_MNT_DETACH), "detach the old root")
    os.chdir("/")


def _enter_chroot(shared_dir: str) -> None:
    proc_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chroot(shared_dir)
        os.fchdir(proc_fd)
    except OSError as e:
        hint = " (needs CAP_SYS_CHROOT; else use --sandbox none)" if e.errno == errno.EPERM else ""
        raise SandboxError(f"sandbox: chroot {shared_dir}: {e.strerror}{hint}") from None
    finally:
        os.close(proc_fd)
