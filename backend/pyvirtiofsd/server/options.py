"""What the server does on behalf of every file system: :class:`ServerOptions`, and the
cache policies and negotiation modes its fields take."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CachePolicy:
    """``ServerOptions.cache`` values, as virtiofsd's ``--cache``."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"
    METADATA = "metadata"
    """Metadata cached as with ``always``, file data never (FOPEN_DIRECT_IO)."""

    TIMEOUTS = {AUTO: 1.0, ALWAYS: 86400.0, NEVER: 0.0, METADATA: 86400.0}


NEGOTIATION = ("never", "auto", "always")
"""``posix_acl``/``security_label`` modes: off; on if the guest supports it; on, and a guest
that does not support it cannot mount (INIT fails with EPROTO)."""


@dataclass(frozen=True)
class ServerOptions:
    """What the server does on behalf of every file system.

    ``guest_page_size``: the guest's PAGE_SIZE; every blksize sent is exactly this.
    ``readonly``: refuse every modifying operation with EROFS (and opens for writing).
    ``xattr``: when False (the default, as virtiofsd), GET/SET/LIST/REMOVEXATTR answer ENOSYS
    without reaching the file system, so the guest kernel stops asking and returns
    EOPNOTSUPP to applications.
    ``cache``: ``never`` → timeouts 0 and FOPEN_DIRECT_IO; ``auto`` → 1 s timeouts;
    ``always`` → 1 day timeouts, FOPEN_KEEP_CACHE and FOPEN_CACHE_DIR (virtiofsd's meaning).
    ``writeback``: offer FUSE_WRITEBACK_CACHE (guest-side write-back page cache).
    ``readdirplus``: offer READDIRPLUS; ``None`` = on unless ``cache`` is ``never``.
    ``allow_mmap``: offer DIRECT_IO_ALLOW_MMAP (shared mmap with ``cache=never``).
    ``max_write``: largest WRITE payload (also sets ``max_pages``).
    ``map_alignment``: ``None`` → never echo FUSE_MAP_ALIGNMENT; else log2 of the alignment
    SETUPMAPPING offsets need (12 for 4 KiB host pages), sent when the guest offers it.
    ``ops_log``: one structlog ``fuse op`` event per request (costs; off by default).  For an
    ops-log file and statistics pass ``Server(ops=OpsRecorder(...))`` instead.
    ``posix_acl``: ``never``/``auto``/``always`` (:data:`NEGOTIATION`) offer POSIX_ACL with
    DONT_MASK and SETXATTR_EXT: the guest enforces ACLs and leaves the umask to us.
    ``security_label``: the same for SECURITY_CTX (labels sent with create-type requests).
    ``announce_submounts``: offer SUBMOUNTS (mount points inside the share get their own
    st_dev in the guest).  ``killpriv_v2``: offer HANDLE_KILLPRIV_V2 (the guest leaves
    clearing set-user/group-ID on write/truncate/chown to us).
    ``uid_map``/``gid_map``: :class:`~pyvirtiofsd.passthrough.idmap.IdMap` translations
    applied to every caller id and every attribute sent.
    """

    guest_page_size: int = 4096
    readonly: bool = False
    xattr: bool = False
    cache: str = CachePolicy.AUTO
    writeback: bool = False
    readdirplus: bool | None = None
    allow_mmap: bool = False
    max_write: int = 1 << 20
    map_alignment: int | None = None
    ops_log: bool = False
    posix_acl: str = "never"
    security_label: str = "never"
    announce_submounts: bool = False
    killpriv_v2: bool = False
    uid_map: Any = None
    gid_map: Any = None

    def __post_init__(self) -> None:
        p = self.guest_page_size
        if p < 4096 or p > (1 << 21) or p & (p - 1):
            raise ValueError(f"guest_page_size {p} is not a power of two in 4 KiB..2 MiB")
        if self.cache not in CachePolicy.TIMEOUTS:
            raise ValueError(f"cache must be one of {sorted(CachePolicy.TIMEOUTS)}")
        if self.max_write < 4096:
            raise ValueError("max_write below 4096")
        if self.map_alignment is not None and not 0 <= self.map_alignment <= 21:
            raise ValueError("map_alignment is log2 of an alignment, at most 21 (2 MiB)")
        for name in ("posix_acl", "security_label"):
            if getattr(self, name) not in NEGOTIATION:
                raise ValueError(f"{name} must be one of {NEGOTIATION}")
        if self.posix_acl != "never" and (self.uid_map or self.gid_map):
            raise ValueError("POSIX ACLs cannot be combined with uid/gid translation: the "
                             "ids inside ACLs would not be translated")

    @property
    def max_pages(self) -> int:
        """``fuse_init_out.max_pages``: enough guest pages for ``max_write``."""
        return min(0xFFFF, -(-self.max_write // self.guest_page_size))

    @property
    def max_read(self) -> int:
        """The most a READ or READDIR(PLUS) reply may carry: ``max_pages`` pages."""
        return self.max_pages * self.guest_page_size

    @property
    def translating(self) -> bool:
        return bool(self.uid_map) or bool(self.gid_map)

    @property
    def timeout(self) -> float:
        return CachePolicy.TIMEOUTS[self.cache]

    @property
    def use_readdirplus(self) -> bool:
        if self.readdirplus is None:
            return self.cache != CachePolicy.NEVER
        return self.readdirplus
