"""The FUSE wire format: opcodes, flag bits and struct layouts.  No I/O.

Names follow the Linux uapi header ``include/uapi/linux/fuse.h`` so a reader can grep the
header (or ``shared/reference/PROTOCOLS.md`` §5) for any of them: ``fuse_entry_out`` here is
``struct fuse_entry_out`` there, ``FUSE_SETUPMAPPING`` is the opcode of the same name.

Every struct is a :class:`WireStruct` -- a :class:`struct.Struct` that also knows its field
names, so ``fuse_in_header.parse(buf)`` gives a named tuple and
``fuse_open_out.build(fh=3)`` packs with every other field zero.

Byte order is little-endian ("<").  FUSE itself is host-endian, and virtio-fs carries it
between a guest and a host of the same architecture; every architecture this project runs
on (x86-64, arm64) is little-endian, and spelling it out keeps the layouts free of the
native alignment rules ``struct`` would otherwise apply.
"""
from __future__ import annotations

import enum
import struct
from collections import namedtuple
from typing import Any, NamedTuple

# --- protocol version ---------------------------------------------------------------------

FUSE_KERNEL_VERSION = 7
FUSE_ROOT_ID = 1
FUSE_UNIQUE_RESEND = 1 << 63
FUSE_NAME_MAX = 1024
"""The longest name the Linux FUSE client sends (``FUSE_NAME_MAX`` in fs/fuse/fuse_i.h)."""


class Opcode(enum.IntEnum):
    """``enum fuse_opcode``."""

    FUSE_LOOKUP = 1
    FUSE_FORGET = 2
    FUSE_GETATTR = 3
    FUSE_SETATTR = 4
    FUSE_READLINK = 5
    FUSE_SYMLINK = 6
    FUSE_MKNOD = 8
    FUSE_MKDIR = 9
    FUSE_UNLINK = 10
    FUSE_RMDIR = 11
    FUSE_RENAME = 12
    FUSE_LINK = 13
    FUSE_OPEN = 14
    FUSE_READ = 15
    FUSE_WRITE = 16
    FUSE_STATFS = 17
    FUSE_RELEASE = 18
    FUSE_FSYNC = 20
    FUSE_SETXATTR = 21
    FUSE_GETXATTR = 22
    FUSE_LISTXATTR = 23
    FUSE_REMOVEXATTR = 24
    FUSE_FLUSH = 25
    FUSE_INIT = 26
    FUSE_OPENDIR = 27
    FUSE_READDIR = 28
    FUSE_RELEASEDIR = 29
    FUSE_FSYNCDIR = 30
    FUSE_GETLK = 31
    FUSE_SETLK = 32
    FUSE_SETLKW = 33
    FUSE_ACCESS = 34
    FUSE_CREATE = 35
    FUSE_INTERRUPT = 36
    FUSE_BMAP = 37
    FUSE_DESTROY = 38
    FUSE_IOCTL = 39
    FUSE_POLL = 40
    FUSE_NOTIFY_REPLY = 41
    FUSE_BATCH_FORGET = 42
    FUSE_FALLOCATE = 43
    FUSE_READDIRPLUS = 44
    FUSE_RENAME2 = 45
    FUSE_LSEEK = 46
    FUSE_COPY_FILE_RANGE = 47
    FUSE_SETUPMAPPING = 48
    FUSE_REMOVEMAPPING = 49
    FUSE_SYNCFS = 50
    FUSE_TMPFILE = 51
    FUSE_STATX = 52
    FUSE_COPY_FILE_RANGE_64 = 53
    CUSE_INIT = 4096


# --- FUSE_INIT flags (fuse_init_in/out.flags, and flags2 << 32) -------------------------

FUSE_ASYNC_READ = 1 << 0
FUSE_POSIX_LOCKS = 1 << 1
FUSE_FILE_OPS = 1 << 2
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_EXPORT_SUPPORT = 1 << 4
FUSE_BIG_WRITES = 1 << 5
FUSE_DONT_MASK = 1 << 6
FUSE_SPLICE_WRITE = 1 << 7
FUSE_SPLICE_MOVE = 1 << 8
FUSE_SPLICE_READ = 1 << 9
FUSE_FLOCK_LOCKS = 1 << 10
FUSE_HAS_IOCTL_DIR = 1 << 11
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_READDIRPLUS_AUTO = 1 << 14
FUSE_ASYNC_DIO = 1 << 15
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_NO_OPEN_SUPPORT = 1 << 17
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_HANDLE_KILLPRIV = 1 << 19
FUSE_POSIX_ACL = 1 << 20
FUSE_ABORT_ERROR = 1 << 21
FUSE_MAX_PAGES = 1 << 22
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_EXPLICIT_INVAL_DATA = 1 << 25
FUSE_MAP_ALIGNMENT = 1 << 26
FUSE_SUBMOUNTS = 1 << 27
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
FUSE_SETXATTR_EXT = 1 << 29
FUSE_INIT_EXT = 1 << 30
FUSE_INIT_RESERVED = 1 << 31
# flags2, as bits 32.. of the 64-bit value flags2 << 32 | flags
FUSE_SECURITY_CTX = 1 << 32
FUSE_HAS_INODE_DAX = 1 << 33
FUSE_CREATE_SUPP_GROUP = 1 << 34
FUSE_HAS_EXPIRE_ONLY = 1 << 35
FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36
FUSE_PASSTHROUGH = 1 << 37
FUSE_NO_EXPORT_SUPPORT = 1 << 38
FUSE_HAS_RESEND = 1 << 39
FUSE_ALLOW_IDMAP = 1 << 40
FUSE_OVER_IO_URING = 1 << 41
FUSE_REQUEST_TIMEOUT = 1 << 42

# --- other flag sets ------------------------------------------------------------------------

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
FOPEN_PASSTHROUGH = 1 << 7

# fuse_open_in.open_flags / fuse_create_in.open_flags
FUSE_OPEN_KILL_SUIDGID = 1 << 0

# fuse_release_in.release_flags
FUSE_RELEASE_FLUSH = 1 << 0
FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1

# fuse_getattr_in.getattr_flags
FUSE_GETATTR_FH = 1 << 0

# fuse_write_in.write_flags
FUSE_WRITE_CACHE = 1 << 0
FUSE_WRITE_LOCKOWNER = 1 << 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2

# fuse_read_in.read_flags
FUSE_READ_LOCKOWNER = 1 << 1

# fuse_fsync_in.fsync_flags
FUSE_FSYNC_FDATASYNC = 1 << 0

# fuse_attr.flags
FUSE_ATTR_SUBMOUNT = 1 << 0
FUSE_ATTR_DAX = 1 << 1

# fuse_setxattr_in.setxattr_flags
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0

# fuse_setupmapping_in.flags
FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0
FUSE_SETUPMAPPING_FLAG_READ = 1 << 1

# --- compat sizes: replies (and some requests) were shorter in older minors ---------------

FUSE_COMPAT_ENTRY_OUT_SIZE = 120      # < 7.9: fuse_attr had no blksize/flags
FUSE_COMPAT_ATTR_OUT_SIZE = 96        # < 7.9
FUSE_COMPAT_MKNOD_IN_SIZE = 8         # < 7.12: no umask
FUSE_COMPAT_WRITE_IN_SIZE = 24        # < 7.9: no lock_owner/flags
FUSE_COMPAT_STATFS_SIZE = 48          # < 7.4: no frsize
FUSE_COMPAT_SETXATTR_IN_SIZE = 8      # without FUSE_SETXATTR_EXT
FUSE_COMPAT_INIT_OUT_SIZE = 8         # < 7.5
FUSE_COMPAT_22_INIT_OUT_SIZE = 24     # < 7.23


# --- struct layouts -------------------------------------------------------------------------

class WireStruct(struct.Struct):
    """A :class:`struct.Struct` with field names.

    ``parse`` returns a named tuple; ``build`` packs keyword arguments, zero for any field
    left out (padding and reserved fields are simply never named by callers).
    """

    def __init__(self, name: str, fields: str, layout: str):
        super().__init__("<" + layout)
        self.name = name
        self.fields: tuple[str, ...] = tuple(fields.split())
        self.tuple = namedtuple(name, self.fields)  # type: ignore[misc]
        if len(self.fields) != len(self.unpack(bytes(self.size))):
            raise TypeError(f"{name}: field names do not match the layout")

    def parse(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        return self.tuple._make(self.unpack_from(buf, offset))

    def build(self, **values: int) -> bytes:
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"{self.name}: unknown fields {sorted(unknown)}")
        return self.pack(*(values.get(f, 0) for f in self.fields))

    def __repr__(self) -> str:
        return f"<WireStruct {self.name} ({self.size} bytes)>"


fuse_in_header = WireStruct(
    "fuse_in_header", "len opcode unique nodeid uid gid pid total_extlen padding", "IIQQIIIHH")
fuse_out_header = WireStruct("fuse_out_header", "len error unique", "IiQ")

fuse_attr = WireStruct(
    "fuse_attr",
    "ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev "
    "blksize flags",
    "QQQQQQIIIIIIIIII")
fuse_entry_out_head = WireStruct(
    "fuse_entry_out_head",
    "nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec",
    "QQQQII")
"""The first 40 bytes of ``fuse_entry_out``; the ``fuse_attr`` follows."""
fuse_attr_out_head = WireStruct("fuse_attr_out_head", "attr_valid attr_valid_nsec dummy", "QII")
"""The first 16 bytes of ``fuse_attr_out``; the ``fuse_attr`` follows."""
FUSE_ENTRY_OUT_SIZE = fuse_entry_out_head.size + fuse_attr.size   # 128
FUSE_ATTR_OUT_SIZE = fuse_attr_out_head.size + fuse_attr.size     # 104

fuse_kstatfs = WireStruct(
    "fuse_kstatfs",
    "blocks bfree bavail files ffree bsize namelen frsize padding "
    "spare0 spare1 spare2 spare3 spare4 spare5",
    "QQQQQIIIIIIIIII")
fuse_statfs_out = fuse_kstatfs

fuse_forget_in = WireStruct("fuse_forget_in", "nlookup", "Q")
fuse_forget_one = WireStruct("fuse_forget_one", "nodeid nlookup", "QQ")
fuse_batch_forget_in = WireStruct("fuse_batch_forget_in", "count dummy", "II")
fuse_getattr_in = WireStruct("fuse_getattr_in", "getattr_flags dummy fh", "IIQ")
fuse_mknod_in = WireStruct("fuse_mknod_in", "mode rdev umask padding", "IIII")
fuse_mkdir_in = WireStruct("fuse_mkdir_in", "mode umask", "II")
fuse_rename_in = WireStruct("fuse_rename_in", "newdir", "Q")
fuse_rename2_in = WireStruct("fuse_rename2_in", "newdir flags padding", "QII")
fuse_link_in = WireStruct("fuse_link_in", "oldnodeid", "Q")
fuse_setattr_in = WireStruct(
    "fuse_setattr_in",
    "valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode "
    "unused4 uid gid unused5",
    "IIQQQQQQIIIIIIII")
fuse_open_in = WireStruct("fuse_open_in", "flags open_flags", "II")
fuse_create_in = WireStruct("fuse_create_in", "flags mode umask open_flags", "IIII")
fuse_open_out = WireStruct("fuse_open_out", "fh open_flags backing_id", "QIi")
fuse_release_in = WireStruct("fuse_release_in", "fh flags release_flags lock_owner", "QIIQ")
fuse_flush_in = WireStruct("fuse_flush_in", "fh unused padding lock_owner", "QIIQ")
fuse_read_in = WireStruct(
    "fuse_read_in", "fh offset size read_flags lock_owner flags padding", "QQIIQII")
fuse_write_in = WireStruct(
    "fuse_write_in", "fh offset size write_flags lock_owner flags padding", "QQIIQII")
fuse_write_out = WireStruct("fuse_write_out", "size padding", "II")
fuse_fsync_in = WireStruct("fuse_fsync_in", "fh fsync_flags padding", "QII")
fuse_setxattr_in = WireStruct("fuse_setxattr_in", "size flags setxattr_flags padding", "IIII")
fuse_getxattr_in = WireStruct("fuse_getxattr_in", "size padding", "II")

# Request extensions (7.38+): ``fuse_in_header.total_extlen`` 8-byte units at the end of the
# request, each starting with fuse_ext_header.  A security context (FUSE_SECURITY_CTX) is an
# extension whose ``type`` is its context count (0..FUSE_MAX_NR_SECCTX): its header is
# fuse_secctx_header, followed by that many (fuse_secctx, NUL-terminated xattr name, value),
# each padded to 8 bytes.  Kernels before the extension mechanism (7.36/7.37) sent the same
# bytes as a trailing argument after the name, with total_extlen 0.
fuse_ext_header = WireStruct("fuse_ext_header", "size type", "II")
fuse_secctx_header = WireStruct("fuse_secctx_header", "size nr_secctx", "II")
fuse_secctx = WireStruct("fuse_secctx", "size padding", "II")
fuse_supp_groups = WireStruct("fuse_supp_groups", "nr_groups", "I")
FUSE_MAX_NR_SECCTX = 31
FUSE_EXT_GROUPS = 32
fuse_getxattr_out = WireStruct("fuse_getxattr_out", "size padding", "II")
fuse_access_in = WireStruct("fuse_access_in", "mask padding", "II")
fuse_init_in = WireStruct(
    "fuse_init_in",
    "major minor max_readahead flags flags2 "
    "unused0 unused1 unused2 unused3 unused4 unused5 unused6 unused7 unused8 unused9 unused10",
    "IIIII11I")
FUSE_INIT_IN_COMPAT_SIZE = 16
"""``fuse_init_in`` without ``flags2``/``unused``: what a guest without FUSE_INIT_EXT sends."""
fuse_init_out = WireStruct(
    "fuse_init_out",
    "major minor max_readahead flags max_background congestion_threshold max_write time_gran "
    "max_pages map_alignment flags2 max_stack_depth request_timeout "
    "unused0 unused1 unused2 unused3 unused4",
    "IIIIHHIIHHIIH2x5I")
fuse_interrupt_in = WireStruct("fuse_interrupt_in", "unique", "Q")
fuse_fallocate_in = WireStruct("fuse_fallocate_in", "fh offset length mode padding", "QQQII")
fuse_lseek_in = WireStruct("fuse_lseek_in", "fh offset whence padding", "QQII")
fuse_lseek_out = WireStruct("fuse_lseek_out", "offset", "Q")
fuse_copy_file_range_in = WireStruct(
    "fuse_copy_file_range_in", "fh_in off_in nodeid_out fh_out off_out len flags", "QQQQQQQ")
fuse_syncfs_in = WireStruct("fuse_syncfs_in", "padding", "Q")
fuse_dirent = WireStruct("fuse_dirent", "ino off namelen type", "QQII")
"""The fixed part of ``struct fuse_dirent``; the name follows, the record is padded to 8."""

# SETUPMAPPING / REMOVEMAPPING (virtio-fs DAX)
fuse_setupmapping_in = WireStruct(
    "fuse_setupmapping_in", "fh foffset len flags moffset", "QQQQQ")
fuse_removemapping_in = WireStruct("fuse_removemapping_in", "count", "I")
fuse_removemapping_one = WireStruct("fuse_removemapping_one", "moffset len", "QQ")

# STATX (7.39)
fuse_statx_in = WireStruct(
    "fuse_statx_in", "getattr_flags reserved fh sx_flags sx_mask", "IIQII")
fuse_sx_time = WireStruct("fuse_sx_time", "tv_sec tv_nsec reserved", "qIi")
fuse_statx = WireStruct(
    "fuse_statx",
    "mask blksize attributes nlink uid gid mode spare0 ino size blocks attributes_mask "
    "atime_sec atime_nsec atime_reserved btime_sec btime_nsec btime_reserved "
    "ctime_sec ctime_nsec ctime_reserved mtime_sec mtime_nsec mtime_reserved "
    "rdev_major rdev_minor dev_major dev_minor",
    "IIQIIIHHQQQQ" + "qIi" * 4 + "IIII112x")
fuse_statx_out_head = WireStruct(
    "fuse_statx_out_head", "attr_valid attr_valid_nsec flags spare0 spare1", "QIIQQ")
"""The first 32 bytes of ``fuse_statx_out``; the ``fuse_statx`` follows."""
FUSE_STATX_OUT_SIZE = fuse_statx_out_head.size + fuse_statx.size   # 288

# statx(2) mask bits used in fuse_statx.mask
STATX_TYPE = 0x1
STATX_MODE = 0x2
STATX_NLINK = 0x4
STATX_UID = 0x8
STATX_GID = 0x10
STATX_ATIME = 0x20
STATX_MTIME = 0x40
STATX_CTIME = 0x80
STATX_INO = 0x100
STATX_SIZE = 0x200
STATX_BLOCKS = 0x400
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800


def _check_sizes() -> None:
    """The sizes the uapi header fixes; a wrong format string fails at import, not on a guest."""
    expected = {
        fuse_in_header: 40, fuse_out_header: 16, fuse_attr: 88, fuse_kstatfs: 80,
        fuse_setattr_in: 88, fuse_open_out: 16, fuse_read_in: 40, fuse_write_in: 40,
        fuse_init_in: 64, fuse_init_out: 64, fuse_release_in: 24, fuse_flush_in: 24,
        fuse_create_in: 16, fuse_mknod_in: 16, fuse_getattr_in: 16, fuse_rename2_in: 16,
        fuse_fallocate_in: 32, fuse_lseek_in: 24, fuse_copy_file_range_in: 56,
        fuse_setupmapping_in: 40, fuse_removemapping_in: 4, fuse_removemapping_one: 16,
        fuse_statx_in: 24, fuse_statx: 256, fuse_sx_time: 16, fuse_dirent: 24,
    }
    for s, size in expected.items():
        if s.size != size:
            raise AssertionError(f"{s.name} is {s.size} bytes, uapi says {size}")


_check_sizes()


# --- variable-length records ------------------------------------------------------------

def fuse_rec_align(n: int) -> int:
    """``FUSE_REC_ALIGN``: directory records are padded to a multiple of 8 bytes."""
    return (n + 7) & ~7


def dirent_size(namelen: int) -> int:
    """``FUSE_DIRENT_SIZE``: bytes one ``fuse_dirent`` record takes, padding included."""
    return fuse_rec_align(fuse_dirent.size + namelen)


def direntplus_size(namelen: int) -> int:
    """``FUSE_DIRENTPLUS_SIZE``: bytes one ``fuse_direntplus`` record takes."""
    return fuse_rec_align(FUSE_ENTRY_OUT_SIZE + fuse_dirent.size + namelen)


def pack_dirent(ino: int, off: int, type_: int, name: bytes) -> bytes:
    """One ``fuse_dirent`` record, zero-padded to 8 bytes."""
    raw = fuse_dirent.pack(ino, off, len(name), type_) + name
    return raw + bytes(dirent_size(len(name)) - len(raw))


def pack_direntplus(entry_out: bytes, ino: int, off: int, type_: int, name: bytes) -> bytes:
    """One ``fuse_direntplus`` record: a packed ``fuse_entry_out`` then the dirent."""
    if len(entry_out) != FUSE_ENTRY_OUT_SIZE:
        raise ValueError("entry_out must be a full fuse_entry_out")
    raw = entry_out + fuse_dirent.pack(ino, off, len(name), type_) + name
    return raw + bytes(direntplus_size(len(name)) - len(raw))


class InitFlags(NamedTuple):
    """Helpers for the 64-bit INIT flag value split over ``flags`` and ``flags2``."""

    flags: int
    flags2: int

    @classmethod
    def split(cls, value: int) -> "InitFlags":
        return cls(value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF)

    @property
    def value(self) -> int:
        return self.flags2 << 32 | self.flags
