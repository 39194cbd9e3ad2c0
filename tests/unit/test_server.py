"""Server: INIT negotiation, framing, errors, policy, concurrency."""
import errno
import os
import threading

import pytest
from pyvirtiofsd.logs import capture as capture_logs
from fusewire import (
    GUEST_FLAGS, GUEST_FLAGS2, Client, FuseError, cstr, header, parse_direntplus,
    parse_dirents, request, run,
)
from memfs import MemFs

from pyvirtiofsd.filesystem import Entry, FileSystem
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import BytesRequest
from pyvirtiofsd.server import FUSE_MAX_MINOR, Server, ServerOptions


def mem_client(init=True, fs=None, dax=None, **options):
    fs = fs or MemFs({b"a": b"alpha", b"bb": b"beta"})
    c = Client(Server(fs, ServerOptions(**options), dax=dax))
    if init:
        assert c.init().ok
    return c, fs


def init_out(reply):
    assert reply.error == 0
    return abi.fuse_init_out.parse(reply.body.ljust(64, b"\0"))


# --- INIT -----------------------------------------------------------------------------------

def test_we_speak_7_39():
    assert FUSE_MAX_MINOR == 39


@pytest.mark.parametrize("guest_minor,expect", [(45, 39), (40, 39), (39, 39), (38, 38),
                                                (36, 36), (31, 31), (27, 27)])
def test_minor_is_min_of_both(guest_minor, expect):
    c, _ = mem_client(init=False)
    r = c.init(minor=guest_minor)
    out = init_out(r)
    assert (out.major, out.minor) == (7, expect)
    assert len(r.body) == 64
    assert c.server.session.minor == expect


@pytest.mark.parametrize("guest_minor,size", [(4, 8), (5, 24), (9, 24), (22, 24), (23, 64)])
def test_init_reply_shrinks_for_old_minors(guest_minor, size):
    c, _ = mem_client(init=False)
    r = c.init(minor=guest_minor)
    assert r.error == 0 and len(r.body) == size
    assert init_out(r).minor == guest_minor


def test_old_minor_entry_and_attr_replies_use_compat_sizes():
    c, _ = mem_client(init=False)
    assert c.init(minor=8).ok
    body = c.ok(Opcode.FUSE_LOOKUP, 1, cstr("a"))
    assert len(body) == abi.FUSE_COMPAT_ENTRY_OUT_SIZE
    body = c.ok(Opcode.FUSE_GETATTR, 2)   # no fuse_getattr_in before 7.9
    assert len(body) == abi.FUSE_COMPAT_ATTR_OUT_SIZE


def test_newer_major_gets_our_major_and_no_session():
    c, _ = mem_client(init=False)
    r = c.init(major=8, minor=0)
    out = init_out(r)
    assert (out.major, out.minor) == (7, FUSE_MAX_MINOR)
    assert c.server.session is None
    assert c.call(Opcode.FUSE_GETATTR, 1, bytes(16)).error == -errno.EIO
    assert c.init(major=7, minor=38).ok      # the kernel retries with our major


def test_older_major_is_refused():
    c, _ = mem_client(init=False)
    assert c.init(major=6, minor=99).error == -errno.EPROTO
    assert c.server.session is None


def test_init_truncated_to_old_8_byte_form():
    c, _ = mem_client(init=False)
    r = c.call(Opcode.FUSE_INIT, 0, abi.fuse_init_in.build(major=7, minor=4)[:8])
    assert r.error == 0 and len(r.body) == 8


def test_flags_are_a_subset_of_the_guest_offer():
    c, _ = mem_client(init=False)
    out = init_out(c.init(flags=abi.FUSE_ASYNC_READ | abi.FUSE_POSIX_ACL, flags2=0))
    assert out.flags == abi.FUSE_ASYNC_READ
    c, _ = mem_client(init=False)
    out = init_out(c.init(flags=0, flags2=0))
    assert out.flags == 0 and out.flags2 == 0


def test_flags_offered_to_a_6_1_guest():
    c, _ = mem_client(init=False)
    out = init_out(c.init(flags=GUEST_FLAGS, flags2=GUEST_FLAGS2))
    for f in ("FUSE_ASYNC_READ", "FUSE_PARALLEL_DIROPS", "FUSE_BIG_WRITES",
              "FUSE_AUTO_INVAL_DATA", "FUSE_ASYNC_DIO", "FUSE_ATOMIC_O_TRUNC", "FUSE_MAX_PAGES",
              "FUSE_INIT_EXT", "FUSE_DO_READDIRPLUS", "FUSE_READDIRPLUS_AUTO"):
        assert out.flags & getattr(abi, f), f
    # never: they change the request format (SECURITY_CTX, SETXATTR_EXT), need code we do
    # not have (locks, ACLs, export, killpriv), or are meaningless here (splice)
    for f in ("FUSE_POSIX_LOCKS", "FUSE_FLOCK_LOCKS", "FUSE_EXPORT_SUPPORT", "FUSE_DONT_MASK",
              "FUSE_POSIX_ACL", "FUSE_SETXATTR_EXT", "FUSE_HANDLE_KILLPRIV",
              "FUSE_HANDLE_KILLPRIV_V2", "FUSE_SPLICE_READ", "FUSE_SPLICE_WRITE",
              "FUSE_SPLICE_MOVE", "FUSE_WRITEBACK_CACHE", "FUSE_MAP_ALIGNMENT",
              "FUSE_SUBMOUNTS", "FUSE_CACHE_SYMLINKS"):
        assert not out.flags & getattr(abi, f), f
    assert out.flags2 == 0      # SECURITY_CTX, HAS_INODE_DAX, EXPIRE_ONLY: none taken
    assert out.max_write == 1 << 20 and out.max_pages == 256
    assert out.time_gran == 1 and out.max_readahead == 128 * 1024
    assert out.map_alignment == 0


def test_no_open_support_only_for_file_systems_without_open(passthrough):
    c, _ = mem_client(init=False)
    out = init_out(c.init())
    assert out.flags & abi.FUSE_NO_OPEN_SUPPORT and out.flags & abi.FUSE_NO_OPENDIR_SUPPORT
    c = Client(Server(passthrough))
    out = init_out(c.init())
    assert not out.flags & (abi.FUSE_NO_OPEN_SUPPORT | abi.FUSE_NO_OPENDIR_SUPPORT)


class FakeDax:
    init_flags = abi.FUSE_HAS_INODE_DAX

    def __init__(self):
        self.calls = []

    def setupmapping(self, ctx, nodeid, fh, foffset, length, flags, moffset):
        self.calls.append(("setup", nodeid, fh, foffset, length, flags, moffset))

    def removemapping(self, ctx, ranges):
        self.calls.append(("remove", ranges))

    # the rest of the DaxHandler contract: nothing is ever mapped here
    def refresh(self, nodeid):
        pass

    def released(self, nodeid, fh):
        pass

    def forgotten(self, nodeid, still_known):
        pass

    def reset(self, unmap=False):
        pass

    def inode_dax(self, attr):
        return False


def test_flags2_only_with_init_ext():
    c, _ = mem_client(init=False, dax=FakeDax())
    out = init_out(c.init(flags=GUEST_FLAGS, flags2=0xFFFFFFFF))
    # HAS_INODE_DAX, CREATE_SUPP_GROUP
    assert out.flags2 == (1 << 1 | 1 << 2) and out.flags & abi.FUSE_INIT_EXT
    c, _ = mem_client(init=False, dax=FakeDax())
    out = init_out(c.init(flags=GUEST_FLAGS & ~abi.FUSE_INIT_EXT, flags2=0xFFFFFFFF))
    assert out.flags2 == 0 and not out.flags & abi.FUSE_INIT_EXT


@pytest.mark.parametrize("option,guest_offers,expect_flag,expect_value", [
    (None, True, False, 0), (12, True, True, 12), (16, True, True, 16), (12, False, False, 0),
])
def test_map_alignment(option, guest_offers, expect_flag, expect_value):
    c, _ = mem_client(init=False, map_alignment=option)
    flags = GUEST_FLAGS if guest_offers else GUEST_FLAGS & ~abi.FUSE_MAP_ALIGNMENT
    out = init_out(c.init(flags=flags))
    assert bool(out.flags & abi.FUSE_MAP_ALIGNMENT) == expect_flag
    assert out.map_alignment == expect_value


def test_map_alignment_must_fit_the_guest_limit():
    with pytest.raises(ValueError):
        ServerOptions(map_alignment=22)


@pytest.mark.parametrize("opts,flag,present", [
    ({}, abi.FUSE_WRITEBACK_CACHE, False),
    ({"writeback": True}, abi.FUSE_WRITEBACK_CACHE, True),
    ({"writeback": True, "readonly": True}, abi.FUSE_WRITEBACK_CACHE, False),
    ({"cache": "never"}, abi.FUSE_DO_READDIRPLUS, False),
    ({"cache": "never", "readdirplus": True}, abi.FUSE_DO_READDIRPLUS, True),
    ({"readdirplus": False}, abi.FUSE_READDIRPLUS_AUTO, False),
    ({"allow_mmap": True}, abi.FUSE_DIRECT_IO_ALLOW_MMAP, True),
    ({}, abi.FUSE_DIRECT_IO_ALLOW_MMAP, False),
])
def test_option_driven_flags(opts, flag, present):
    c, _ = mem_client(init=False, **opts)
    out = init_out(c.init(flags=GUEST_FLAGS | abi.FUSE_WRITEBACK_CACHE,
                          flags2=GUEST_FLAGS2 | (abi.FUSE_DIRECT_IO_ALLOW_MMAP >> 32)))
    assert bool(abi.InitFlags(out.flags, out.flags2).value & flag) == present


@pytest.mark.parametrize("page,pages", [(4096, 256), (16384, 64), (65536, 16)])
def test_max_pages_follows_guest_page_size(page, pages):
    c, _ = mem_client(init=False, guest_page_size=page)
    assert init_out(c.init()).max_pages == pages


def test_filesystem_init_can_decline_flags():
    class Picky(MemFs):
        def init(self, flags):
            return flags & ~abi.FUSE_ASYNC_READ
    c, _ = mem_client(init=False, fs=Picky())
    out = init_out(c.init())
    assert not out.flags & abi.FUSE_ASYNC_READ and out.flags & abi.FUSE_BIG_WRITES


def test_filesystem_init_failure_refuses_the_session():
    class Broken(MemFs):
        def init(self, flags):
            raise OSError(errno.EACCES, "no")
    c, _ = mem_client(init=False, fs=Broken())
    assert c.init().error == -errno.EACCES
    assert c.server.session is None


# --- session lifecycle -------------------------------------------------------------------

def test_requests_before_init_get_eio():
    c, _ = mem_client(init=False)
    assert c.call(Opcode.FUSE_LOOKUP, 1, cstr("a")).error == -errno.EIO
    assert c.call(Opcode.FUSE_DESTROY, 0).error == -errno.EIO


def test_no_reply_opcodes_before_init_get_no_reply():
    c, _ = mem_client(init=False)
    assert c.forget(2, 1).used_len == 0
    assert c.batch_forget([(2, 1)]).used_len == 0
    assert c.call(Opcode.FUSE_INTERRUPT, 0, abi.fuse_interrupt_in.pack(1)).used_len == 0


def test_destroy_resets_the_session():
    c, fs = mem_client()
    assert c.call(Opcode.FUSE_DESTROY, 0).ok
    assert fs.destroyed == 1
    assert c.server.session is None
    assert c.call(Opcode.FUSE_GETATTR, 1, bytes(16)).error == -errno.EIO
    assert c.init().ok
    assert c.getattr(1).mode & 0o170000 == 0o040000


def test_second_init_starts_a_new_session():
    c, fs = mem_client()
    assert c.init(minor=31).ok
    assert fs.destroyed == 1
    assert c.server.session.minor == 31


def test_a_request_is_served_only_in_the_session_it_arrived_in():
    """What a transport noted when it took a request (Server.session_number) decides: a
    request that waited (for a worker, for the GIL) while a DESTROY and an INIT behind it
    were served fails with EIO rather than act in a session it was not sent in."""
    c, fs = mem_client()
    first = c.server.session_number
    getattr_root = request(Opcode.FUSE_GETATTR, 1, bytes(16))
    assert first > 0 and run(c.server, getattr_root, arrived_in=first).ok
    assert c.call(Opcode.FUSE_DESTROY, 0).ok and c.server.session_number == 0
    assert c.init().ok
    second = c.server.session_number
    assert second not in (0, first)
    assert run(c.server, getattr_root, arrived_in=first).error == -errno.EIO
    assert run(c.server, getattr_root, arrived_in=0).error == -errno.EIO   # before INIT
    assert run(c.server, getattr_root, arrived_in=second).ok
    assert run(c.server, getattr_root).ok                    # the transport cannot tell
    # A FORGET of the old session gets no reply and forgets nothing of the new one.
    node = c.lookup(1, "a").nodeid
    held = fs.lookups[node]
    assert run(c.server, request(Opcode.FUSE_FORGET, node, abi.fuse_forget_in.pack(1)),
               arrived_in=first).used_len == 0
    assert fs.lookups[node] == held
    assert run(c.server, request(Opcode.FUSE_FORGET, node, abi.fuse_forget_in.pack(1)),
               arrived_in=second).used_len == 0
    assert fs.lookups[node] == held - 1


def test_reset_ends_the_session():
    c, fs = mem_client()
    c.server.reset()
    assert fs.destroyed == 1 and c.server.session is None


# --- framing and errors --------------------------------------------------------------------

def test_unique_is_echoed():
    c, _ = mem_client()
    r = run(c.server, request(Opcode.FUSE_GETATTR, 1, bytes(16), unique=0xDEADBEEF12))
    assert r.unique == 0xDEADBEEF12 and r.error == 0


@pytest.mark.parametrize("opcode", [7, 19, 31, 32, 33, 37, 39, 40, 53, 99, 4096, 0xFFFFFFFF])
def test_unknown_or_unsupported_opcode_is_enosys(opcode):
    c, _ = mem_client()
    r = c.call(opcode, 1, bytes(64))
    assert r.error == -errno.ENOSYS and r.used_len == 16


@pytest.mark.parametrize("opcode,body", [
    (Opcode.FUSE_FORGET, abi.fuse_forget_in.pack(1)),
    (Opcode.FUSE_BATCH_FORGET, abi.fuse_batch_forget_in.pack(1, 0) + abi.fuse_forget_one.pack(2, 1)),
    (Opcode.FUSE_INTERRUPT, abi.fuse_interrupt_in.pack(5)),
])
def test_no_reply_opcodes_complete_with_zero(opcode, body):
    c, _ = mem_client()
    r = c.call(opcode, 2, body)
    assert r.used_len == 0


def test_batch_forget_is_applied():
    c, fs = mem_client()
    a = c.lookup(1, "a").nodeid
    c.lookup(1, "a")
    b = c.lookup(1, "bb").nodeid
    assert c.batch_forget([(a, 2), (b, 1)]).used_len == 0
    assert fs.lookups[a] == 0 and fs.lookups[b] == 0


def test_short_header():
    c, _ = mem_client()
    data = request(Opcode.FUSE_GETATTR, 1, unique=77)[:20]
    r = run(c.server, data)
    assert r.error == -errno.EINVAL and r.unique == 77


def test_tiny_request():
    c, _ = mem_client()
    r = run(c.server, b"\1\2\3")
    assert r.error == -errno.EINVAL


@pytest.mark.parametrize("length", [0, 39, 41 + 16 + 1, 10_000])
def test_header_len_must_match_the_in_area(length):
    c, _ = mem_client()
    data = header(Opcode.FUSE_GETATTR, 1, 16, length=length) + bytes(16)
    r = run(c.server, data)
    assert r.error == -errno.EINVAL


def test_total_extlen_beyond_request_is_refused():
    c, _ = mem_client()
    data = header(Opcode.FUSE_LOOKUP, 1, 2, total_extlen=1) + cstr("a")
    assert run(c.server, data).error == -errno.EINVAL


def test_extensions_are_not_taken_as_arguments():
    c, _ = mem_client()
    body = cstr("a") + bytes(8 - 2) + bytes(16)         # name padded, then a 16-byte extension
    data = header(Opcode.FUSE_LOOKUP, 1, len(body), total_extlen=2) + body
    assert run(c.server, data).error == -errno.EINVAL   # trailing padding is not the name...
    body = cstr("a") + bytes(16)
    data = header(Opcode.FUSE_LOOKUP, 1, len(body), total_extlen=2) + body
    assert run(c.server, data).error == 0               # ...but the extension is skipped


@pytest.mark.parametrize("out_len", [0, 8, 15])
def test_out_area_too_small_for_a_header(out_len):
    c, _ = mem_client()
    req = BytesRequest(request(Opcode.FUSE_GETATTR, 1, bytes(16)), out_len)
    c.server.handle(req)
    assert req.used_len == 0


def test_reply_larger_than_out_area_is_eio():
    c, _ = mem_client()
    r = run(c.server, request(Opcode.FUSE_GETATTR, 1, bytes(16)), out_len=64)
    assert r.error == -errno.EIO


class Buggy(FileSystem):
    def getattr(self, ctx, inode, fh):
        raise RuntimeError("bug in a file system")

    def lookup(self, ctx, parent, name):
        return None      # wrong type: the server must cope

    def readlink(self, ctx, inode):
        raise OSError("an OSError without errno")

    def statfs(self, ctx, inode):
        raise OSError(errno.EACCES, "denied")


@pytest.mark.parametrize("opcode,body,err", [
    (Opcode.FUSE_GETATTR, bytes(16), errno.EIO),
    (Opcode.FUSE_LOOKUP, cstr("x"), errno.EIO),
    (Opcode.FUSE_READLINK, b"", errno.EIO),
    (Opcode.FUSE_STATFS, b"", errno.EACCES),
    (Opcode.FUSE_MKDIR, abi.fuse_mkdir_in.pack(0o755, 0) + cstr("d"), errno.ENOSYS),
])
def test_filesystem_errors_become_errno_replies(opcode, body, err):
    c = Client(Server(Buggy()))
    assert c.init().ok
    assert c.call(opcode, 1, body).error == -err


# Valid bodies for every opcode we decode, with the length below which it is malformed.
def _bodies(fh, nodeid):
    setx = abi.fuse_setxattr_in.pack(3, 0, 0, 0)[:8] + cstr("user.x") + b"abc"
    full = lambda b: (b, len(b))  # noqa: E731
    return {
        Opcode.FUSE_LOOKUP: full(cstr("f")),
        Opcode.FUSE_SETATTR: full(abi.fuse_setattr_in.build(valid=abi.FATTR_MODE, mode=0o644)),
        Opcode.FUSE_SYMLINK: full(cstr("s") + cstr("target")),
        Opcode.FUSE_MKNOD: full(abi.fuse_mknod_in.pack(0o10644, 0, 0, 0) + cstr("n")),
        Opcode.FUSE_MKDIR: full(abi.fuse_mkdir_in.pack(0o755, 0) + cstr("d")),
        Opcode.FUSE_UNLINK: full(cstr("nope")),
        Opcode.FUSE_RMDIR: full(cstr("nope")),
        Opcode.FUSE_RENAME: full(abi.fuse_rename_in.pack(1) + cstr("x1") + cstr("x2")),
        Opcode.FUSE_RENAME2: full(abi.fuse_rename2_in.pack(1, 0, 0) + cstr("x1") + cstr("x2")),
        Opcode.FUSE_LINK: full(abi.fuse_link_in.pack(nodeid) + cstr("l")),
        Opcode.FUSE_OPEN: full(abi.fuse_open_in.pack(os.O_RDONLY, 0)),
        Opcode.FUSE_READ: (abi.fuse_read_in.build(fh=fh, size=10), 24),
        Opcode.FUSE_WRITE: full(abi.fuse_write_in.build(fh=fh, size=5) + b"hello"),
        Opcode.FUSE_RELEASE: (abi.fuse_release_in.build(fh=999), 16),
        Opcode.FUSE_FSYNC: full(abi.fuse_fsync_in.build(fh=fh)),
        Opcode.FUSE_SETXATTR: full(setx),
        Opcode.FUSE_GETXATTR: full(abi.fuse_getxattr_in.pack(0, 0) + cstr("user.x")),
        Opcode.FUSE_LISTXATTR: full(abi.fuse_getxattr_in.pack(0, 0)),
        Opcode.FUSE_REMOVEXATTR: full(cstr("user.nope")),
        Opcode.FUSE_FLUSH: full(abi.fuse_flush_in.build(fh=fh)),
        Opcode.FUSE_OPENDIR: full(abi.fuse_open_in.pack(0, 0)),
        Opcode.FUSE_READDIR: (abi.fuse_read_in.build(fh=999, size=4096), 24),
        Opcode.FUSE_READDIRPLUS: (abi.fuse_read_in.build(fh=999, size=4096), 24),
        Opcode.FUSE_RELEASEDIR: (abi.fuse_release_in.build(fh=999), 16),
        Opcode.FUSE_FSYNCDIR: full(abi.fuse_fsync_in.build(fh=999)),
        Opcode.FUSE_ACCESS: full(abi.fuse_access_in.pack(os.R_OK, 0)),
        Opcode.FUSE_CREATE: full(abi.fuse_create_in.pack(os.O_RDWR, 0o644, 0, 0) + cstr("c")),
        Opcode.FUSE_FALLOCATE: full(abi.fuse_fallocate_in.build(fh=fh, length=1)),
        Opcode.FUSE_LSEEK: full(abi.fuse_lseek_in.build(fh=fh, whence=3)),
        Opcode.FUSE_COPY_FILE_RANGE: full(abi.fuse_copy_file_range_in.build(
            fh_in=fh, nodeid_out=nodeid, fh_out=fh, off_out=100, len=1)),
        Opcode.FUSE_SYNCFS: full(abi.fuse_syncfs_in.pack(0)),
        Opcode.FUSE_TMPFILE: full(abi.fuse_create_in.pack(os.O_RDWR, 0o600, 0, 0)),
        Opcode.FUSE_STATX: full(abi.fuse_statx_in.build(sx_mask=0x7FF)),
        Opcode.FUSE_SETUPMAPPING: full(abi.fuse_setupmapping_in.build(len=4096)),
        Opcode.FUSE_REMOVEMAPPING: full(abi.fuse_removemapping_in.pack(1)
                                        + abi.fuse_removemapping_one.pack(0, 4096)),
        Opcode.FUSE_FORGET: full(abi.fuse_forget_in.pack(0)),
        Opcode.FUSE_BATCH_FORGET: full(abi.fuse_batch_forget_in.pack(1, 0)
                                       + abi.fuse_forget_one.pack(999, 1)),
        Opcode.FUSE_GETATTR: (abi.fuse_getattr_in.pack(0, 0, 0), 0),
        Opcode.FUSE_READLINK: (b"", 0),
        Opcode.FUSE_STATFS: (b"", 0),
        Opcode.FUSE_INTERRUPT: (abi.fuse_interrupt_in.pack(1), 0),
    }


NO_REPLY = {Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET, Opcode.FUSE_INTERRUPT}


def test_every_decoded_opcode_is_covered_by_the_truncation_test(passthrough):
    server = Server(passthrough)
    covered = set(_bodies(1, 2)) | {Opcode.FUSE_INIT, Opcode.FUSE_DESTROY}
    assert set(server._handlers) | {Opcode.FUSE_INIT} <= covered


@pytest.mark.parametrize("opcode", sorted(_bodies(1, 2), key=int), ids=lambda o: o.name)
def test_truncated_bodies_get_an_error_reply(share, opcode):
    from pyvirtiofsd.passthrough import PassthroughFs
    (share / "f").write_bytes(b"0123456789")
    fs = PassthroughFs(share, xattr=True)
    try:
        c = Client(Server(fs, ServerOptions(xattr=True)))
        assert c.init().ok
        nodeid = c.lookup(1, "f").nodeid
        fh, _ = c.open(nodeid, os.O_RDWR)
        body, required = _bodies(fh, nodeid)[opcode]
        target = 1 if opcode in (Opcode.FUSE_LOOKUP, Opcode.FUSE_SYMLINK, Opcode.FUSE_MKNOD,
                                 Opcode.FUSE_MKDIR, Opcode.FUSE_UNLINK, Opcode.FUSE_RMDIR,
                                 Opcode.FUSE_RENAME, Opcode.FUSE_RENAME2, Opcode.FUSE_LINK,
                                 Opcode.FUSE_CREATE, Opcode.FUSE_TMPFILE, Opcode.FUSE_OPENDIR,
                                 Opcode.FUSE_READDIR, Opcode.FUSE_READDIRPLUS,
                                 Opcode.FUSE_RELEASEDIR, Opcode.FUSE_FSYNCDIR) else nodeid
        expect = errno.ENOSYS if opcode in (Opcode.FUSE_SETUPMAPPING,
                                            Opcode.FUSE_REMOVEMAPPING) else errno.EINVAL
        for cut in range(len(body)):
            r = c.call(opcode, target, body[:cut])
            if opcode in NO_REPLY:
                assert r.used_len == 0
            elif cut < required:
                assert r.error == -expect, (cut, r)
            else:
                assert r.used_len >= 16            # some answer, success or not
        # the full body is well-formed: whatever the answer, it is not EINVAL-for-framing
        r = c.call(opcode, target, body)
        if opcode not in NO_REPLY:
            assert r.used_len >= 16
    finally:
        fs.close()


@pytest.mark.parametrize("cut", range(0, 64))
def test_truncated_init(cut):
    c, _ = mem_client(init=False)
    body = abi.fuse_init_in.build(major=7, minor=39, flags=GUEST_FLAGS, flags2=GUEST_FLAGS2)
    r = c.call(Opcode.FUSE_INIT, 0, body[:cut])
    if cut < 8:
        assert r.error == -errno.EINVAL
    else:
        assert r.error == 0


def test_names_with_slash_or_empty_are_refused_by_the_server():
    c, fs = mem_client()
    for name in (b"", b"a/b", b"/", b"../x"):
        assert c.call(Opcode.FUSE_LOOKUP, 1, name + b"\0").error == -errno.EINVAL
    assert fs.calls["lookup"] == 0
    assert c.call(Opcode.FUSE_LOOKUP, 1, b"a\0b\0").error == -errno.EINVAL
    assert c.call(Opcode.FUSE_LOOKUP, 1, b"x" * 1025 + b"\0").error == -errno.ENAMETOOLONG


@pytest.mark.parametrize("name", [b".", b".."])
def test_dot_names_refused_for_create_type_ops(name):
    c, _ = mem_client()
    r = c.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.pack(0o755, 0), name + b"\0")
    assert r.error == -errno.EINVAL
    r = c.call(Opcode.FUSE_UNLINK, 1, name + b"\0")
    assert r.error == -errno.EINVAL


# --- policy ------------------------------------------------------------------------------

def test_xattr_off_answers_enosys_without_calling_the_filesystem():
    c, fs = mem_client()
    assert c.call(Opcode.FUSE_GETXATTR, 1, abi.fuse_getxattr_in.pack(0, 0),
                  cstr("user.a")).error == -errno.ENOSYS
    assert c.call(Opcode.FUSE_LISTXATTR, 1, abi.fuse_getxattr_in.pack(0, 0)).error == -errno.ENOSYS
    assert c.call(Opcode.FUSE_SETXATTR, 1, abi.fuse_setxattr_in.pack(1, 0, 0, 0)[:8],
                  cstr("user.a"), b"v").error == -errno.ENOSYS
    assert c.call(Opcode.FUSE_REMOVEXATTR, 1, cstr("user.a")).error == -errno.ENOSYS
    assert sum(fs.calls[k] for k in ("getxattr", "listxattr", "setxattr", "removexattr")) == 0


def test_xattr_size_protocol():
    c, _ = mem_client(xattr=True)
    body = c.ok(Opcode.FUSE_GETXATTR, 1, abi.fuse_getxattr_in.pack(0, 0), cstr("user.a"))
    assert abi.fuse_getxattr_out.parse(body).size == 5
    assert c.ok(Opcode.FUSE_GETXATTR, 1, abi.fuse_getxattr_in.pack(5, 0),
                cstr("user.a")) == b"value"
    assert c.call(Opcode.FUSE_GETXATTR, 1, abi.fuse_getxattr_in.pack(4, 0),
                  cstr("user.a")).error == -errno.ERANGE
    body = c.ok(Opcode.FUSE_LISTXATTR, 1, abi.fuse_getxattr_in.pack(0, 0))
    assert abi.fuse_getxattr_out.parse(body).size == len(b"user.a\0user.bb\0")
    assert c.ok(Opcode.FUSE_LISTXATTR, 1, abi.fuse_getxattr_in.pack(100, 0)) == b"user.a\0user.bb\0"
    assert c.call(Opcode.FUSE_LISTXATTR, 1, abi.fuse_getxattr_in.pack(3, 0)).error == -errno.ERANGE
    assert c.ok(Opcode.FUSE_SETXATTR, 1, abi.fuse_setxattr_in.pack(1, 0, 0, 0)[:8],
                cstr("user.a"), b"v") == b""


@pytest.mark.parametrize("cache,timeout", [("never", 0), ("auto", 1), ("always", 86400)])
def test_cache_policy_timeouts(cache, timeout):
    c, _ = mem_client(cache=cache)
    e = c.lookup(1, "a")
    assert e.entry_valid == timeout and e.attr_valid == timeout
    body = c.ok(Opcode.FUSE_GETATTR, e.nodeid, bytes(16))
    assert abi.fuse_attr_out_head.parse(body).attr_valid == timeout


def test_filesystem_timeouts_override_policy():
    class Timed(MemFs):
        def lookup(self, ctx, parent, name):
            e = super().lookup(ctx, parent, name)
            return Entry(e.nodeid, 0, e.attr, entry_timeout=2.5, attr_timeout=0.0)

        def getattr(self, ctx, inode, fh):
            return super().getattr(ctx, inode, fh), 7.0
    c, _ = mem_client(fs=Timed({b"a": b"x"}), cache="always")
    body = c.ok(Opcode.FUSE_LOOKUP, 1, cstr("a"))
    h = abi.fuse_entry_out_head.parse(body)
    assert (h.entry_valid, h.entry_valid_nsec, h.attr_valid) == (2, 500_000_000, 0)
    body = c.ok(Opcode.FUSE_GETATTR, 2, bytes(16))
    assert abi.fuse_attr_out_head.parse(body).attr_valid == 7


@pytest.mark.parametrize("cache,file_flags,dir_flags", [
    ("never", abi.FOPEN_DIRECT_IO, 0), ("auto", 0, 0),
    ("always", abi.FOPEN_KEEP_CACHE, abi.FOPEN_CACHE_DIR),
])
def test_cache_policy_open_flags(make_client, share, cache, file_flags, dir_flags):
    (share / "f").write_bytes(b"x")
    c = make_client(cache=cache)
    e = c.lookup(1, "f")
    assert c.open(e.nodeid, os.O_RDONLY)[1] == file_flags
    body = c.ok(Opcode.FUSE_OPENDIR, 1, abi.fuse_open_in.pack(0, 0))
    assert abi.fuse_open_out.parse(body).open_flags == dir_flags


def test_readonly_refuses_modifications(make_client, share):
    (share / "f").write_bytes(b"data")
    c = make_client(readonly=True)
    e = c.lookup(1, "f")
    for op, body in [
        (Opcode.FUSE_MKDIR, abi.fuse_mkdir_in.pack(0o755, 0) + cstr("d")),
        (Opcode.FUSE_CREATE, abi.fuse_create_in.pack(os.O_RDWR, 0o644, 0, 0) + cstr("c")),
        (Opcode.FUSE_UNLINK, cstr("f")),
        (Opcode.FUSE_SYMLINK, cstr("s") + cstr("t")),
        (Opcode.FUSE_RENAME, abi.fuse_rename_in.pack(1) + cstr("f") + cstr("g")),
        (Opcode.FUSE_TMPFILE, abi.fuse_create_in.pack(os.O_RDWR, 0o600, 0, 0)),
    ]:
        assert c.call(op, 1, body).error == -errno.EROFS, op
    assert c.call(Opcode.FUSE_SETATTR, e.nodeid, abi.fuse_setattr_in.build(
        valid=abi.FATTR_SIZE, size=0)).error == -errno.EROFS
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert c.call(Opcode.FUSE_OPEN, e.nodeid,
                      abi.fuse_open_in.pack(flags, 0)).error == -errno.EROFS
    fh, _ = c.open(e.nodeid, os.O_RDONLY)
    assert c.read(e.nodeid, fh, 0, 10) == b"data"
    assert c.call(Opcode.FUSE_WRITE, e.nodeid, abi.fuse_write_in.build(fh=fh, size=1),
                  b"x").error == -errno.EROFS
    assert sorted(os.listdir(share)) == ["f"] and (share / "f").read_bytes() == b"data"


# --- READDIR / READDIRPLUS through a custom file system -----------------------------------

def test_readdirplus_uses_lookup_and_skips_dots():
    fs = MemFs({b"a": b"1", b"bb": b"22", b"ccc": b"333"})
    c, _ = mem_client(fs=fs)
    ents = parse_direntplus(c.readdir(1, 0, plus=True))
    names = [d[3] for _, d in ents]
    assert names == [b".", b"..", b"a", b"bb", b"ccc"]
    for e, (_, _, _, name) in ents:
        if name in (b".", b".."):
            assert e.nodeid == 0
        else:
            assert e.nodeid == fs.names[name] and e.attr.size == len(fs.data[e.nodeid])
    assert fs.calls["lookup"] == 3
    assert all(fs.lookups[fs.names[n]] == 1 for n in (b"a", b"bb", b"ccc"))


def test_readdirplus_does_not_look_up_entries_that_do_not_fit():
    fs = MemFs({b"a": b"1", b"bb": b"22", b"ccc": b"333"})
    c, _ = mem_client(fs=fs)
    # room for ".", ".." and "a", one byte short of "bb"
    size = abi.direntplus_size(1) + abi.direntplus_size(2) * 2 + abi.direntplus_size(2) - 1
    ents = parse_direntplus(c.readdir(1, 0, size=size, plus=True))
    assert [d[3] for _, d in ents] == [b".", b"..", b"a"]
    assert fs.calls["lookup"] == 1 and fs.lookups[fs.names[b"bb"]] == 0
    # continue from the last offset
    ents2 = parse_direntplus(c.readdir(1, 0, offset=ents[-1][1][1], plus=True))
    assert [d[3] for _, d in ents2] == [b"bb", b"ccc"]
    assert fs.calls["lookup"] == 3


def test_readdir_packs_to_the_size_and_continues():
    names = {f"file{i:03d}".encode(): b"" for i in range(50)}
    c, _ = mem_client(fs=MemFs(names))
    seen, offset = [], 0
    while True:
        body = c.readdir(1, 0, offset=offset, size=256)
        assert len(body) <= 256
        ents = parse_dirents(body)
        if not ents:
            break
        seen += [e[3] for e in ents]
        offset = ents[-1][1]
    assert seen == [b".", b".."] + sorted(names)


def test_readdir_buffer_too_small_for_one_entry():
    c, _ = mem_client()
    r = c.call(Opcode.FUSE_READDIR, 1, abi.fuse_read_in.build(size=10))
    assert r.error == -errno.EINVAL


def test_readdirplus_skips_entries_that_vanish():
    class Vanishing(MemFs):
        def lookup(self, ctx, parent, name):
            if name == b"bb":
                raise OSError(errno.ENOENT, "gone")
            return super().lookup(ctx, parent, name)
    fs = Vanishing({b"a": b"1", b"bb": b"2", b"ccc": b"3"})
    c, _ = mem_client(fs=fs)
    names = [d[3] for _, d in parse_direntplus(c.readdir(1, 0, plus=True))]
    assert names == [b".", b"..", b"a", b"ccc"]


def test_readdir_generator_is_closed_when_the_buffer_fills():
    closed = []

    class Tracking(MemFs):
        def readdir(self, ctx, inode, fh, offset):
            try:
                yield from super().readdir(ctx, inode, fh, offset)
            finally:
                closed.append(True)
    c, _ = mem_client(fs=Tracking({b"a" * 50: b"", b"b" * 50: b""}))
    c.readdir(1, 0, size=abi.dirent_size(1) * 2)
    assert closed == [True]


def test_read_and_write_through_a_custom_filesystem():
    c, fs = mem_client()
    nodeid = c.lookup(1, "a").nodeid
    assert c.read(nodeid, 0, 1, 3) == b"lph"
    assert c.write(nodeid, 0, 5, b"!!") == 2
    assert bytes(fs.data[nodeid]) == b"alpha!!"


def test_statx_derived_from_getattr():
    c, fs = mem_client()
    nodeid = c.lookup(1, "bb").nodeid
    sx = c.statx(nodeid)
    assert sx.mask & 0x7FF == 0x7FF and sx.size == 4 and sx.ino == nodeid
    assert sx.mode == fs.modes[nodeid]


# --- DAX hook ----------------------------------------------------------------------------

def test_setupmapping_and_removemapping_enosys_without_dax():
    c, _ = mem_client()
    assert c.call(Opcode.FUSE_SETUPMAPPING, 2,
                  abi.fuse_setupmapping_in.build(len=1)).error == -errno.ENOSYS
    assert c.call(Opcode.FUSE_REMOVEMAPPING, 2, abi.fuse_removemapping_in.pack(0)).error \
        == -errno.ENOSYS


def test_dax_hook_gets_decoded_requests():
    dax = FakeDax()
    c, _ = mem_client(dax=dax)
    assert c.ok(Opcode.FUSE_SETUPMAPPING, 2, abi.fuse_setupmapping_in.build(
        fh=2**64 - 1, foffset=2 << 20, len=2 << 20, flags=3, moffset=6 << 20)) == b""
    data = request(Opcode.FUSE_REMOVEMAPPING, 2, abi.fuse_removemapping_in.pack(2),
                   abi.fuse_removemapping_one.pack(0, 2 << 20),
                   abi.fuse_removemapping_one.pack(4 << 20, 2 << 20))
    assert data[44:52] == (0).to_bytes(8, "little")     # entries start at byte 44
    assert run(c.server, data).error == 0
    assert dax.calls == [("setup", 2, 2**64 - 1, 2 << 20, 2 << 20, 3, 6 << 20),
                         ("remove", [(0, 2 << 20), (4 << 20, 2 << 20)])]
    r = c.call(Opcode.FUSE_REMOVEMAPPING, 2, abi.fuse_removemapping_in.pack(2),
               abi.fuse_removemapping_one.pack(0, 1))
    assert r.error == -errno.EINVAL                       # count says 2, one present


def test_readonly_refuses_writable_mappings():
    dax = FakeDax()
    c, _ = mem_client(dax=dax, readonly=True)
    assert c.call(Opcode.FUSE_SETUPMAPPING, 2, abi.fuse_setupmapping_in.build(
        len=2 << 20, flags=3)).error == -errno.EROFS
    assert c.call(Opcode.FUSE_SETUPMAPPING, 2, abi.fuse_setupmapping_in.build(
        len=2 << 20, flags=2)).error == 0


# --- concurrency -----------------------------------------------------------------------

def test_concurrent_requests(make_client, share, passthrough):
    for i in range(8):
        (share / f"f{i}").write_bytes(bytes([i]) * 5000)
    c = make_client()
    errors = []

    def worker(k):
        try:
            for n in range(100):
                name = f"f{(k + n) % 8}"
                e = c.lookup(1, name)
                fh, _ = c.open(e.nodeid, os.O_RDONLY)
                data = c.read(e.nodeid, fh, 100, 1000)
                assert data == bytes([(k + n) % 8]) * 1000
                assert c.getattr(e.nodeid).size == 5000
                c.release(e.nodeid, fh)
                assert c.forget(e.nodeid, 1).used_len == 0
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(passthrough.inodes) == 1 and len(passthrough.handles) == 0


def test_fuse_error_helper():
    c, _ = mem_client()
    with pytest.raises(FuseError) as ei:
        c.lookup(1, "missing")
    assert ei.value.errno == errno.ENOENT


def test_filesystem_init_returning_none_keeps_the_flags():
    class Forgetful(MemFs):
        def init(self, flags):
            self.seen = flags
    c, fs = mem_client(init=False, fs=Forgetful())
    out = init_out(c.init())
    assert out.flags & abi.FUSE_ASYNC_READ and abi.InitFlags(out.flags, out.flags2).value \
        == fs.seen


def test_readdirplus_entries_are_whole_even_for_old_minors():
    c, _ = mem_client(init=False)
    assert c.init(minor=8).ok          # a guest this old never sends READDIRPLUS; still sane
    ents = parse_direntplus(c.readdir(1, 0, plus=True))
    assert [d[3] for _, d in ents][:2] == [b".", b".."]


def test_handle_survives_a_transport_whose_complete_fails():
    completions = []

    class Exploding(BytesRequest):
        def complete(self, used_len):
            completions.append(used_len)
            super().complete(used_len)     # keep the reply readable, then fail as a ring would
            raise OSError(errno.EIO, "ring gone")
    c, _ = mem_client()
    req = Exploding(request(Opcode.FUSE_GETATTR, 1, bytes(16), unique=4242))
    with capture_logs() as logs:
        c.server.handle(req)                       # must not raise
    # complete() was tried exactly once, with the whole GETATTR reply already written
    assert completions == [16 + abi.FUSE_ATTR_OUT_SIZE]
    out = abi.fuse_out_header.parse(req.reply[:16])
    assert (out.len, out.error, out.unique) == (16 + abi.FUSE_ATTR_OUT_SIZE, 0, 4242)
    # the failure is logged, not swallowed silently, and names the request
    failed = [e for e in logs if e["event"] == "completing fuse request failed"]
    assert len(failed) == 1 and failed[0]["unique"] == 4242
    assert failed[0]["log_level"] == "error"
    # and the server goes on serving
    assert c.getattr(1).ino == 1


BIG = 1 << 63          # does not fit a host off_t / ssize_t


@pytest.mark.parametrize("opcode,make_body,target,err", [
    (Opcode.FUSE_READDIR, lambda fh, n: abi.fuse_read_in.build(fh=fh, offset=BIG, size=4096),
     1, errno.EINVAL),
    (Opcode.FUSE_READDIRPLUS, lambda fh, n: abi.fuse_read_in.build(fh=fh, offset=BIG, size=4096),
     1, errno.EINVAL),
    # LSEEK's offset is signed on the wire; SEEK_DATA from a negative offset is ENXIO on the host
    (Opcode.FUSE_LSEEK, lambda fh, n: abi.fuse_lseek_in.build(fh=fh, offset=BIG, whence=3),
     None, errno.ENXIO),
    (Opcode.FUSE_COPY_FILE_RANGE, lambda fh, n: abi.fuse_copy_file_range_in.build(
        fh_in=fh, off_in=BIG, nodeid_out=n, fh_out=fh, len=1), None, errno.EINVAL),
    (Opcode.FUSE_SETATTR, lambda fh, n: abi.fuse_setattr_in.build(
        valid=abi.FATTR_SIZE, size=(1 << 64) - 1), None, errno.EINVAL),
], ids=["readdir", "readdirplus", "lseek", "copy_file_range", "setattr-size"])
def test_out_of_range_offsets_are_refused(make_client, share, opcode, make_body, target, err):
    """A 64-bit field the host cannot represent is refused on that request with an errno."""
    (share / "f").write_bytes(b"0123456789")
    c = make_client()
    nodeid = c.lookup(1, "f").nodeid
    fh, _ = c.open(nodeid, os.O_RDWR)
    if target == 1:
        fh = c.opendir(1)
    r = c.call(opcode, nodeid if target is None else target, make_body(fh, nodeid))
    assert r.error == -err
    assert (share / "f").read_bytes() == b"0123456789"
    assert c.getattr(nodeid).size == 10    # the server goes on serving
