"""PassthroughFs's offload description: which requests the C hot path serves for it (see
:mod:`pyvirtiofsd.offload`).

C answers an opcode only where its bytes are the ones these Python methods would give:
the method is PassthroughFs's own (a subclass that overrides it keeps it in Python), and no
reply policy changes the answer -- a DAX window (attributes carry FUSE_ATTR_DAX, WRITE and
GETATTR re-fit mappings), uid/gid translation, a read-only server or file system (Python
answers EROFS).
"""
from __future__ import annotations

from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.offload import Offload, ReplyPolicy
from pyvirtiofsd.passthrough.common import PassthroughBase


class OffloadOps(PassthroughBase):
    """Mixed into :class:`~pyvirtiofsd.passthrough.PassthroughFs`."""

    def offload(self, policy: ReplyPolicy) -> Offload | None:
        from pyvirtiofsd.passthrough.fs import PassthroughFs

        def own(name: str) -> bool:
            return getattr(type(self), name) is getattr(PassthroughFs, name)

        ops = set()
        if own("read"):
            ops.add(Opcode.FUSE_READ)
        if own("write") and not (policy.dax or policy.readonly or self.readonly):
            ops.add(Opcode.FUSE_WRITE)
        if own("getattr") and not (policy.dax or policy.id_mapping):
            ops.add(Opcode.FUSE_GETATTR)
            if own("lookup"):
                ops.add(Opcode.FUSE_LOOKUP)
        return Offload(self.store.c, frozenset(ops)) if ops else None
