"""PassthroughFs's extended attributes: GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR, through
the optional xattr map, on the file behind an inode's /proc/self/fd magic link."""
from __future__ import annotations

import os
import stat

from pyvirtiofsd.filesystem import Context
from pyvirtiofsd.passthrough.common import PassthroughBase, modifies, xattr_op
from pyvirtiofsd.passthrough.store import Inode


class XattrOps(PassthroughBase):
    """Mixed into :class:`~pyvirtiofsd.passthrough.PassthroughFs` (the server gates them on
    ``ServerOptions.xattr``; this file system on its own ``xattr``)."""

    def _xattr_path(self, i: Inode) -> str:
        # Through the magic link: works for every file type without opening it (a FIFO or
        # device is never opened) and never follows a symlink inode's target.
        return os.path.join(self.proc_self_fd, str(i.fd))

    def _host_xattr(self, name: bytes) -> str:
        return os.fsdecode(self.xattrmap.to_host(name) if self.xattrmap is not None else name)

    @xattr_op
    def getxattr(self, ctx: Context, inode: int, name: bytes) -> bytes:
        host = self._host_xattr(name)
        with self.inodes.borrow(inode) as i:
            return os.getxattr(self._xattr_path(i), host)

    @xattr_op
    def listxattr(self, ctx: Context, inode: int) -> list[bytes]:
        with self.inodes.borrow(inode) as i:
            names = [os.fsencode(n) for n in os.listxattr(self._xattr_path(i))]
        if self.xattrmap is None:
            return names
        return [g for g in map(self.xattrmap.to_guest, names) if g is not None]

    @xattr_op
    @modifies
    def setxattr(self, ctx: Context, inode: int, name: bytes, value: bytes, flags: int) -> None:
        host = self._host_xattr(name)
        with self.inodes.borrow(inode) as i:
            os.setxattr(self._xattr_path(i), host, value, flags)
            if ctx.kill_sgid and name == b"system.posix_acl_access":
                # The guest caller is not in the file's group: setting an access ACL clears
                # set-group-ID -- which the host skips for us, holding CAP_FSETID.
                st = os.fstat(i.fd)
                if st.st_mode & stat.S_ISGID:
                    os.chmod(self._proc_name(i.fd), stat.S_IMODE(st.st_mode) & ~stat.S_ISGID,
                             dir_fd=self._proc_fd)

    @xattr_op
    @modifies
    def removexattr(self, ctx: Context, inode: int, name: bytes) -> None:
        host = self._host_xattr(name)
        with self.inodes.borrow(inode) as i:
            os.removexattr(self._xattr_path(i), host)
