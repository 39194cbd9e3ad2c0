"""PassthroughFs's offload description: which requests the C hot path serves for it (see
:mod:`pyvirtiofsd.offload`).

C answers an opcode only where its bytes are the ones these Python methods would give:
the method is PassthroughFs's own (a subclass that overrides it keeps it in Python), and no
reply policy changes the answer -- uid/gid translation (ids in attributes and in the
caller), or a read-only server or file system (Python answers EROFS).  File handles change
nothing here: the store makes and opens them for C as for Python.  With a DAX window only READ is served in C: attributes
carry FUSE_ATTR_DAX, and the window follows WRITE, GETATTR, RELEASE and FORGET.
Per request, C still leaves to Python whatever is unusual (an extension, an odd name, a
kill-suid/sgid open...: cext/mutate.h).
"""
from __future__ import annotations

from pyvirtiofsd.fuse.abi import Opcode as Op
from pyvirtiofsd.offload import Offload, ReplyPolicy
from pyvirtiofsd.passthrough.common import PassthroughBase

# opcode -> the PassthroughFs method whose answer C gives
_METHOD = {
    Op.FUSE_READ: "read", Op.FUSE_WRITE: "write", Op.FUSE_GETATTR: "getattr",
    Op.FUSE_LOOKUP: "lookup", Op.FUSE_CREATE: "create", Op.FUSE_MKDIR: "mkdir",
    Op.FUSE_MKNOD: "mknod", Op.FUSE_SYMLINK: "symlink", Op.FUSE_LINK: "link",
    Op.FUSE_UNLINK: "unlink", Op.FUSE_RMDIR: "rmdir", Op.FUSE_RENAME: "rename",
    Op.FUSE_RENAME2: "rename", Op.FUSE_OPEN: "open", Op.FUSE_OPENDIR: "opendir",
    Op.FUSE_RELEASE: "release", Op.FUSE_RELEASEDIR: "releasedir", Op.FUSE_FLUSH: "flush",
    Op.FUSE_FSYNC: "fsync", Op.FUSE_FSYNCDIR: "fsyncdir", Op.FUSE_STATFS: "statfs",
    Op.FUSE_FORGET: "forget", Op.FUSE_BATCH_FORGET: "batch_forget", Op.FUSE_SETATTR: "setattr",
    Op.FUSE_READDIRPLUS: "readdirplus_records", Op.FUSE_READDIR: "readdir",
}
# what else must be PassthroughFs's own for C's answer to be the Python one
_ALSO = {Op.FUSE_READDIRPLUS: ("lookup",)}   # the records are lookups
# what changes the file system (EROFS when read-only)
_MODIFYING = {Op.FUSE_WRITE, Op.FUSE_CREATE, Op.FUSE_MKDIR, Op.FUSE_MKNOD, Op.FUSE_SYMLINK,
              Op.FUSE_LINK, Op.FUSE_UNLINK, Op.FUSE_RMDIR, Op.FUSE_RENAME, Op.FUSE_RENAME2,
              Op.FUSE_OPEN, Op.FUSE_SETATTR}   # OPEN: Python refuses writable opens of a read-only fs
# what packs attributes, or acts as the caller (id translation changes both)
_IDS = {Op.FUSE_GETATTR, Op.FUSE_LOOKUP, Op.FUSE_SETATTR, Op.FUSE_CREATE, Op.FUSE_MKDIR, Op.FUSE_MKNOD,
        Op.FUSE_SYMLINK, Op.FUSE_LINK, Op.FUSE_READDIRPLUS}


class OffloadOps(PassthroughBase):
    """Mixed into :class:`~pyvirtiofsd.passthrough.PassthroughFs`."""

    def offload(self, policy: ReplyPolicy) -> Offload | None:
        from pyvirtiofsd.passthrough.fs import PassthroughFs

        readonly = policy.readonly or self.readonly
        ops = set()
        for op, method in _METHOD.items():
            if any(getattr(type(self), m) is not getattr(PassthroughFs, m)
                   for m in (method, *_ALSO.get(op, ()))):
                continue
            if policy.dax and op != Op.FUSE_READ:
                continue
            if readonly and op in _MODIFYING or policy.id_mapping and op in _IDS:
                continue
            ops.add(op)
        return Offload(self.store.c, frozenset(ops)) if ops else None
