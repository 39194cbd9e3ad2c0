"""The wire format against the uapi header's numbers (PROTOCOLS.md §5)."""
import pytest

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode


def offset_of(ws: abi.WireStruct, field: str) -> int:
    """Byte offset of ``field``: pack a struct with only that field set to a marker."""
    raw = ws.build(**{field: 0x5A})
    return raw.index(0x5A)


@pytest.mark.parametrize("ws,size", [
    (abi.fuse_in_header, 40), (abi.fuse_out_header, 16), (abi.fuse_attr, 88),
    (abi.fuse_entry_out_head, 40), (abi.fuse_attr_out_head, 16), (abi.fuse_kstatfs, 80),
    (abi.fuse_init_in, 64), (abi.fuse_init_out, 64), (abi.fuse_setattr_in, 88),
    (abi.fuse_open_in, 8), (abi.fuse_create_in, 16), (abi.fuse_open_out, 16),
    (abi.fuse_read_in, 40), (abi.fuse_write_in, 40), (abi.fuse_write_out, 8),
    (abi.fuse_release_in, 24), (abi.fuse_flush_in, 24), (abi.fuse_fsync_in, 16),
    (abi.fuse_forget_one, 16), (abi.fuse_batch_forget_in, 8), (abi.fuse_mknod_in, 16),
    (abi.fuse_mkdir_in, 8), (abi.fuse_rename2_in, 16), (abi.fuse_getxattr_in, 8),
    (abi.fuse_setxattr_in, 16), (abi.fuse_fallocate_in, 32), (abi.fuse_lseek_in, 24),
    (abi.fuse_copy_file_range_in, 56), (abi.fuse_setupmapping_in, 40),
    (abi.fuse_removemapping_in, 4), (abi.fuse_removemapping_one, 16),
    (abi.fuse_statx_in, 24), (abi.fuse_statx, 256), (abi.fuse_statx_out_head, 32),
    (abi.fuse_dirent, 24), (abi.fuse_syncfs_in, 8), (abi.fuse_access_in, 8),
])
def test_struct_sizes(ws, size):
    assert ws.size == size


def test_reply_sizes():
    assert abi.FUSE_ENTRY_OUT_SIZE == 128
    assert abi.FUSE_ATTR_OUT_SIZE == 104
    assert abi.FUSE_STATX_OUT_SIZE == 288


@pytest.mark.parametrize("ws,field,offset", [
    (abi.fuse_in_header, "opcode", 4), (abi.fuse_in_header, "unique", 8),
    (abi.fuse_in_header, "nodeid", 16), (abi.fuse_in_header, "uid", 24),
    (abi.fuse_in_header, "pid", 32), (abi.fuse_in_header, "total_extlen", 36),
    (abi.fuse_attr, "atimensec", 48), (abi.fuse_attr, "mode", 60),
    (abi.fuse_attr, "rdev", 76), (abi.fuse_attr, "blksize", 80), (abi.fuse_attr, "flags", 84),
    (abi.fuse_init_out, "max_background", 16), (abi.fuse_init_out, "max_write", 20),
    (abi.fuse_init_out, "max_pages", 28), (abi.fuse_init_out, "map_alignment", 30),
    (abi.fuse_init_out, "flags2", 32), (abi.fuse_init_out, "max_stack_depth", 36),
    (abi.fuse_init_out, "request_timeout", 40), (abi.fuse_init_in, "flags2", 16),
    (abi.fuse_statx, "blksize", 4), (abi.fuse_statx, "mode", 28), (abi.fuse_statx, "ino", 32),
    (abi.fuse_statx, "atime_sec", 64), (abi.fuse_statx, "btime_sec", 80),
    (abi.fuse_statx, "mtime_sec", 112), (abi.fuse_statx, "rdev_major", 128),
    (abi.fuse_statx, "dev_minor", 140), (abi.fuse_statx_in, "sx_mask", 20),
    (abi.fuse_kstatfs, "bsize", 40), (abi.fuse_kstatfs, "frsize", 48),
    (abi.fuse_setupmapping_in, "moffset", 32), (abi.fuse_setupmapping_in, "flags", 24),
    (abi.fuse_setattr_in, "mode", 68), (abi.fuse_setattr_in, "uid", 76),
    (abi.fuse_open_out, "backing_id", 12),
])
def test_field_offsets(ws, field, offset):
    assert offset_of(ws, field) == offset


def test_blksize_position_in_replies():
    # PROTOCOLS.md §5.5: blksize at 120 in fuse_entry_out, 96 in fuse_attr_out, 36 in
    # fuse_statx_out
    assert abi.fuse_entry_out_head.size + offset_of(abi.fuse_attr, "blksize") == 120
    assert abi.fuse_attr_out_head.size + offset_of(abi.fuse_attr, "blksize") == 96
    assert abi.fuse_statx_out_head.size + offset_of(abi.fuse_statx, "blksize") == 36


def test_removemapping_entries_start_at_byte_44():
    assert abi.fuse_in_header.size + abi.fuse_removemapping_in.size == 44


@pytest.mark.parametrize("name,value", [
    ("FUSE_LOOKUP", 1), ("FUSE_FORGET", 2), ("FUSE_MKNOD", 8), ("FUSE_RELEASE", 18),
    ("FUSE_FSYNC", 20), ("FUSE_INIT", 26), ("FUSE_CREATE", 35), ("FUSE_DESTROY", 38),
    ("FUSE_BATCH_FORGET", 42), ("FUSE_READDIRPLUS", 44), ("FUSE_RENAME2", 45),
    ("FUSE_SETUPMAPPING", 48), ("FUSE_REMOVEMAPPING", 49), ("FUSE_SYNCFS", 50),
    ("FUSE_TMPFILE", 51), ("FUSE_STATX", 52), ("FUSE_COPY_FILE_RANGE_64", 53),
    ("CUSE_INIT", 4096),
])
def test_opcodes(name, value):
    assert Opcode[name] == value


def test_no_opcode_7_or_19():
    values = {int(op) for op in Opcode}
    assert 7 not in values and 19 not in values


@pytest.mark.parametrize("name,bit", [
    ("FUSE_ASYNC_READ", 0), ("FUSE_ATOMIC_O_TRUNC", 3), ("FUSE_BIG_WRITES", 5),
    ("FUSE_DO_READDIRPLUS", 13), ("FUSE_WRITEBACK_CACHE", 16), ("FUSE_PARALLEL_DIROPS", 18),
    ("FUSE_MAX_PAGES", 22), ("FUSE_MAP_ALIGNMENT", 26), ("FUSE_SUBMOUNTS", 27),
    ("FUSE_INIT_EXT", 30), ("FUSE_SECURITY_CTX", 32), ("FUSE_HAS_INODE_DAX", 33),
    ("FUSE_CREATE_SUPP_GROUP", 34), ("FUSE_DIRECT_IO_ALLOW_MMAP", 36),
    ("FUSE_ALLOW_IDMAP", 40), ("FUSE_REQUEST_TIMEOUT", 42),
])
def test_init_flag_bits(name, bit):
    assert getattr(abi, name) == 1 << bit


def test_flag_sets():
    assert abi.FATTR_ATIME_NOW == 1 << 7 and abi.FATTR_KILL_SUIDGID == 1 << 11
    assert abi.FOPEN_DIRECT_IO == 1 and abi.FOPEN_KEEP_CACHE == 2 and abi.FOPEN_CACHE_DIR == 8
    assert abi.FUSE_ATTR_DAX == 2 and abi.FUSE_ATTR_SUBMOUNT == 1
    assert abi.FUSE_SETUPMAPPING_FLAG_WRITE == 1 and abi.FUSE_SETUPMAPPING_FLAG_READ == 2


def test_init_flags_split_and_join():
    f = abi.InitFlags.split(abi.FUSE_HAS_INODE_DAX | abi.FUSE_INIT_EXT | abi.FUSE_ASYNC_READ)
    assert f.flags == abi.FUSE_INIT_EXT | abi.FUSE_ASYNC_READ
    assert f.flags2 == 1 << 1
    assert f.value == abi.FUSE_HAS_INODE_DAX | abi.FUSE_INIT_EXT | abi.FUSE_ASYNC_READ


@pytest.mark.parametrize("namelen", range(0, 20))
def test_dirent_records_are_8_byte_aligned(namelen):
    name = b"n" * namelen
    rec = abi.pack_dirent(7, 9, 8, name)
    assert len(rec) % 8 == 0
    assert len(rec) == abi.dirent_size(namelen) == (24 + namelen + 7) // 8 * 8
    d = abi.fuse_dirent.parse(rec)
    assert (d.ino, d.off, d.namelen, d.type) == (7, 9, namelen, 8)
    assert rec[24:24 + namelen] == name
    assert rec[24 + namelen:] == bytes(len(rec) - 24 - namelen)


@pytest.mark.parametrize("namelen", [1, 2, 7, 8, 9, 255])
def test_direntplus_records(namelen):
    entry = bytes(range(128))
    rec = abi.pack_direntplus(entry, 1, 2, 4, b"x" * namelen)
    assert len(rec) == abi.direntplus_size(namelen)
    assert len(rec) % 8 == 0
    assert rec[:128] == entry
    assert abi.fuse_dirent.parse(rec, 128).namelen == namelen


def test_direntplus_refuses_short_entry():
    with pytest.raises(ValueError):
        abi.pack_direntplus(b"\0" * 120, 1, 2, 4, b"x")


def test_build_parse_round_trip_and_unknown_field():
    raw = abi.fuse_setupmapping_in.build(fh=2**64 - 1, foffset=2 << 20, len=2 << 20,
                                         flags=3, moffset=4 << 20)
    p = abi.fuse_setupmapping_in.parse(raw)
    assert (p.fh, p.foffset, p.len, p.flags, p.moffset) == (2**64 - 1, 2 << 20, 2 << 20, 3,
                                                            4 << 20)
    with pytest.raises(TypeError):
        abi.fuse_open_out.build(nonsense=1)


def test_little_endian():
    assert abi.fuse_out_header.pack(16, -2, 1) == b"\x10\0\0\0\xfe\xff\xff\xff\x01" + bytes(7)
