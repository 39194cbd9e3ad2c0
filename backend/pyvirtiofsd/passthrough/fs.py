"""PassthroughFs: serve a host directory, the way virtiofsd does.

Security model in one paragraph: the guest only ever names files by (inode, one name
component).  Every host call is an ``*at()`` call relative to an inode's ``O_PATH`` fd, and
LOOKUP opens a child with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` plus
``O_PATH|O_NOFOLLOW``, so no name, ``..`` or symlink resolves outside the shared directory
and a symlink is never followed by the daemon (it becomes an inode of its own; the guest
reads its target with READLINK and resolves it inside the guest).  Opening a file for I/O
re-opens the inode through ``/proc/self/fd/N`` -- only for regular files and directories,
never a symlink, FIFO or device node (a guest could otherwise create a device node and
open a host device through it).

``..`` in LOOKUP: at the root it is the root itself (a chroot's rule); elsewhere it is the
parent directory only if the guest already holds that directory (it came down through it),
otherwise EXDEV -- the daemon never hands out an inode above the shared directory.  The
Linux guest resolves ``..`` itself and never sends it; only NFS-export style clients would.

The operations are grouped by concern, one mixin per module: :mod:`.names` (LOOKUP,
attributes, creating and removing names), :mod:`.files` (open files, I/O, DAX fds),
:mod:`.dirs` (listing), :mod:`.xattrs`; :mod:`.common` holds what they share.  This module
puts them together and owns the lifecycle (construction, INIT, DESTROY, close).
"""
from __future__ import annotations

import errno
import os

from pyvirtiofsd import logs

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.passthrough import file_handle, syscalls
from pyvirtiofsd.passthrough.common import STAT_EMPTY, PassthroughBase, inode_key
from pyvirtiofsd.passthrough.credentials import Credentials
from pyvirtiofsd.passthrough.dirs import DirOps
from pyvirtiofsd.passthrough.files import FileOps
from pyvirtiofsd.passthrough.names import NameOps
from pyvirtiofsd.passthrough.offload import OffloadOps
from pyvirtiofsd.passthrough.store import Store
from pyvirtiofsd.passthrough.xattrmap import XattrMap
from pyvirtiofsd.passthrough.xattrs import XattrOps

log = logs.get_logger()


class PassthroughFs(NameOps, FileOps, DirOps, XattrOps, OffloadOps, PassthroughBase):
    """Serve the host directory ``root``.

    ``allow_direct_io``: honour O_DIRECT from the guest (virtiofsd's ``--allow-direct-io``;
    off by default: O_DIRECT is dropped because the guest's alignment need not suit the
    host file system).
    ``switch_credentials``: create files with the caller's fsuid/fsgid; default: when the
    daemon runs as root.
    ``readonly``: refuse every modification with EROFS (the server refuses them too when
    its own ``readonly`` option is set; this keeps the file system safe under any server).
    ``xattr``: serve extended attributes; off → ENOSYS, as virtiofsd without ``--xattr``.
    ``proc_self_fd``: where the process's ``/proc/self/fd`` directory is (a chroot sandbox
    leaves it in the working directory: ``"."``; see :mod:`pyvirtiofsd.sandbox`).
    ``xattrmap``: an :class:`~.xattrmap.XattrMap` renaming xattrs between guest and host.
    ``inode_file_handles``: ``never`` | ``prefer`` | ``mandatory`` (see :mod:`.file_handle`).
    ``handle_fd_cache``: with file handles, how many inodes nobody uses right now keep their
    fd open anyway (the ones used last), so that requests on a busy file do not each pay an
    ``open_by_handle_at``; the daemon's inode fds stay bounded by it.
    ``preserve_noatime``: keep O_NOATIME on opens (virtiofsd drops it by default: the host
    refuses it with EPERM unless the daemon's fsuid owns the file or has CAP_FOWNER).

    Besides, what the guest negotiates at INIT (:meth:`init`): with FUSE_POSIX_ACL the
    guest's umask is applied here (the host skips it where a default ACL applies); with
    FUSE_SUBMOUNTS a directory on another host mount than its parent is flagged
    FUSE_ATTR_SUBMOUNT, so the guest gives it an st_dev of its own.  Security contexts
    (``Context.secctx``) are set on every file created; FUSE_WRITE_KILL_SUIDGID and
    FATTR_KILL_SUIDGID (killpriv_v2) clear set-user-ID and set-group-ID as a write by an
    unprivileged user would -- the daemon's own writes, with CAP_FSETID, would not.
    """

    def __init__(self, root: str | os.PathLike[str], *, allow_direct_io: bool = False,
                 switch_credentials: bool | None = None, readonly: bool = False,
                 xattr: bool = False, proc_self_fd: str = "/proc/self/fd",
                 xattrmap: XattrMap | None = None, inode_file_handles: str = "never",
                 handle_fd_cache: int = 1024, preserve_noatime: bool = False):
        if inode_file_handles not in file_handle.MODES:
            raise ValueError(f"inode_file_handles must be one of {file_handle.MODES}")
        self.root_path = os.fspath(root)
        self.allow_direct_io = allow_direct_io
        self.readonly = readonly
        self.xattr = xattr
        self.xattrmap = xattrmap
        self.preserve_noatime = preserve_noatime
        self.writeback = False
        self.posix_acl = False
        self.submounts = False
        self.proc_self_fd = proc_self_fd
        self.credentials = Credentials(switch_credentials)
        root_fd = os.open(self.root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            stx = syscalls.statx(root_fd, b"", STAT_EMPTY, syscalls.STATX_BASIC_STATS)
            self._proc_fd = os.open(proc_self_fd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(root_fd)
            raise
        self.file_handles = inode_file_handles
        if inode_file_handles != "never":
            why = file_handle.probe(root_fd)
            if why is not None:
                if inode_file_handles == "mandatory":
                    os.close(root_fd)
                    os.close(self._proc_fd)
                    raise OSError(errno.EOPNOTSUPP, f"--inode-file-handles=mandatory: {why}")
                # "prefer" is the default: without CAP_DAC_READ_SEARCH (rootless) this is
                # the normal case, not something to warn about
                log.info("inode file handles unusable, using O_PATH fds", reason=why)
                self.file_handles = "never"
        self.store = Store(root_fd, inode_key(stx), stx.mode)
        self.store.set_file_handles(self.file_handles, handle_fd_cache)
        self.inodes = self.store.inodes
        self.handles = self.store.handles
        self.store.set_proc(self._proc_fd)
        self._publish_policy()

    def close(self) -> None:
        """Release every fd (the object is unusable afterwards)."""
        self.store.close()
        os.close(self._proc_fd)

    # --- lifecycle ------------------------------------------------------------------------

    def init(self, flags: int) -> int:
        # With a guest write-back cache the guest may READ through a handle the application
        # opened write-only, and computes append offsets itself (see _open_flags).
        self.writeback = bool(flags & abi.FUSE_WRITEBACK_CACHE)
        self.posix_acl = bool(flags & abi.FUSE_POSIX_ACL)
        self.submounts = bool(flags & abi.FUSE_SUBMOUNTS)
        self._publish_policy()
        return flags

    def _publish_policy(self) -> None:
        """What C must do alike when it serves metadata from the store (cext/mutate.c)."""
        self.store.set_policy(switch_ids=self.credentials.switch_ids, posix_acl=self.posix_acl,
                              writeback=self.writeback, direct_io=self.allow_direct_io,
                              noatime=self.preserve_noatime)

    def destroy(self) -> None:
        self.store.clear()
