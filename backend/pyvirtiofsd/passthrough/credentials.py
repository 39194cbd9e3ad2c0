"""Creating files as the guest user who asked.

When the daemon runs as root, a file a guest user creates must be owned by that user, and
the host's permission checks on the parent directory should be that user's.  virtiofsd
does this by switching the *file-system* ids of the worker thread -- ``setfsuid`` /
``setfsgid`` -- around create-type operations (mknod, mkdir, symlink, create, tmpfile).
Those syscalls act on the calling thread only (glibc does not broadcast them to other
threads, unlike ``setuid``), so concurrent workers can each act for a different guest user.
They report failure only by not changing anything, which the C wrapper detects by asking
again; a failure here refuses the operation rather than creating a root-owned file.

The process umask is another trap: the guest kernel has already applied the caller's umask
to the mode it sends, and the daemon's own umask must not strip more bits.  The umask is
shared by all threads of a process unless a thread unshares its fs_struct, so each thread
does that once (``unshare(CLONE_FS)``) and then sets umask 0 just for the operation.
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from pyvirtiofsd import logs

from pyvirtiofsd.filesystem import Context
from pyvirtiofsd.passthrough import syscalls

log = logs.get_logger()

_thread = threading.local()


def _own_umask() -> bool:
    """Make this thread's umask private (once per thread); False if the kernel refused."""
    own = getattr(_thread, "own_umask", None)
    if own is None:
        try:
            syscalls.unshare_fs()
            own = True
        except OSError as e:
            log.warning("cannot give a worker thread its own umask; created files get the "
                        "daemon's umask applied", error=str(e))
            own = False
        _thread.own_umask = own
    return own


@contextmanager
def _umask(mask: int = 0) -> Iterator[None]:
    if not _own_umask():
        yield
        return
    old = os.umask(mask & 0o777)
    try:
        yield
    finally:
        os.umask(old)


_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81,
                  "s390x": 206}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)


def _thread_setgroups(groups: list[int]) -> None:
    """setgroups(2) for this thread only: the raw system call (glibc's wrapper would apply
    it to every thread of the process, as POSIX wants for set*id)."""
    if _SYS_SETGROUPS is None:
        raise OSError(errno.ENOSYS, "setgroups: unknown system call number on this machine")
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(ctypes.c_long(_SYS_SETGROUPS), ctypes.c_long(len(groups)), arr) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), "setgroups")


@contextmanager
def _supp_groups(groups: tuple[int, ...]) -> Iterator[None]:
    """Act with ``groups`` as this thread's supplementary groups (FUSE_CREATE_SUPP_GROUP:
    the guest caller is a member of the new file's directory group, which the daemon's
    host-side permission check must know)."""
    old = os.getgroups()
    _thread_setgroups(list(groups))
    try:
        yield
    finally:
        _thread_setgroups(old)


class Credentials:
    """Switches fsuid/fsgid to the caller's when (and only when) we are root."""

    def __init__(self, switch_ids: bool | None = None):
        self.switch_ids = os.geteuid() == 0 if switch_ids is None else switch_ids

    @contextmanager
    def caller(self, ctx: Context, umask: int = 0) -> Iterator[None]:
        """Run the body with the file-system ids of ``ctx`` (and its supplementary groups,
        if the request carried any) under ``umask`` -- 0 unless the guest left applying
        the umask to us (FUSE_DONT_MASK with POSIX ACLs: the host then applies it only
        where the directory has no default ACL, as a local file system would)."""
        with _umask(umask):
            if not self.switch_ids or (ctx.uid == 0 and ctx.gid == 0):
                yield
            elif ctx.supp_groups:
                with _supp_groups(ctx.supp_groups), self._ids(ctx):
                    yield
            else:
                with self._ids(ctx):
                    yield

    @contextmanager
    def _ids(self, ctx: Context) -> Iterator[None]:
        old_gid = syscalls.setfsgid(ctx.gid)
        try:
            old_uid = syscalls.setfsuid(ctx.uid)
        except OSError:
            syscalls.setfsgid(old_gid)
            log.warning("setfsuid refused", uid=ctx.uid)
            raise
        try:
            yield
        finally:
            syscalls.setfsuid(old_uid)
            syscalls.setfsgid(old_gid)
