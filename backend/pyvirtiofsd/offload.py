"""What a file system lets the C hot path serve: its *offload description*.

The device asks the file system once (:meth:`FileSystem.offload
<pyvirtiofsd.filesystem.FileSystem.offload>`), telling it what the server does to every
reply (:class:`ReplyPolicy`); the file system answers with the C store its requests are
served from and the opcodes C may answer for it -- those whose C answer is, under that
policy, byte for byte the one its Python methods would give.  Nothing else decides:
the device only adds what is the server's business (an ops recorder that must see every
request, ``PYVIRTIOFSD_HOTPATH=0``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyvirtiofsd.fuse.abi import Opcode


@dataclass(frozen=True)
class ReplyPolicy:
    """What the server does to replies that C, serving alone, would not."""

    readonly: bool
    """The server refuses every modification (EROFS)."""
    dax: bool
    """A DAX window: attributes carry FUSE_ATTR_DAX, and WRITE/GETATTR re-fit mappings."""
    id_mapping: bool
    """uid/gid translation (``--translate-uid``/``--translate-gid``) rewrites attributes and
    the caller's ids."""


@dataclass(frozen=True)
class Offload:
    """The C store (``struct pvfs_store *``) and the opcodes C serves from it."""

    store: Any
    opcodes: frozenset[Opcode]
