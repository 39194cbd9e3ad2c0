"""A guest's claims size nothing: request lengths are bounded before anything is read,
reply sizes are cut to what a reply may carry, guest conditions are logged without a
flood, and a failed CREATE gives back what it counted."""
import errno
import os
import stat

import pytest
from fdcount import fd_count as _fds
from fusewire import Client, cstr, header, request, run
from memfs import MemFs
from pyvirtiofsd.logs import capture as capture_logs

from pyvirtiofsd.filesystem import SetAttr
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.guestfaults import GuestFaults, faults
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import ARGS_MAX, XATTR_SIZE_MAX, Server, ServerOptions

CLAIM = (4 << 30) - 1        # the most a u32 length can claim
NO_REPLY = {Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET, Opcode.FUSE_INTERRUPT}


class ClaimingRequest:
    """A FuseRequest whose areas claim ``in_len``/``out_len`` bytes -- as a chain of
    descriptors aliasing one guest buffer does -- while only ``data`` is real.  It counts
    what the server reads and writes, so a test sees whether a claim sized anything."""

    def __init__(self, data: bytes, in_len: int = CLAIM, out_len: int = 1 << 20):
        self.data = data
        self.in_len = in_len
        self.out_len = out_len
        self.read_bytes = 0
        self.largest_read = 0
        self.out = bytearray()
        self.used_len = None

    def read_in(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.in_len - offset))
        self.read_bytes += size
        self.largest_read = max(self.largest_read, size)
        real = self.data[offset:offset + size]
        return real + bytes(min(size - len(real), 1 << 20))   # the alias: zeros (kept small)

    def write_out(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.out_len:
            raise ValueError("reply does not fit the out area")
        end = offset + len(data)
        if len(self.out) < end:
            self.out.extend(bytes(end - len(self.out)))
        self.out[offset:end] = data

    def out_from_fd(self, fd, out_offset, size, file_offset):
        data = os.pread(fd, size, file_offset)
        self.write_out(out_offset, data)
        return len(data)

    def in_to_fd(self, fd, in_offset, size, file_offset):
        return os.pwrite(fd, self.read_in(in_offset, size), file_offset)

    def complete(self, used_len: int) -> None:
        assert self.used_len is None
        self.used_len = used_len

    @property
    def error(self) -> int:
        return abi.fuse_out_header.parse(bytes(self.out[:16])).error


def serve(server: Server, req: ClaimingRequest) -> ClaimingRequest:
    server.handle(req)
    assert req.used_len is not None
    return req


def mem_server(**options) -> Server:
    server = Server(MemFs({b"a": b"alpha"}), ServerOptions(xattr=True, **options))
    assert Client(server).init().ok
    return server


@pytest.mark.parametrize("opcode", sorted(set(range(1, 60)) | set(Opcode)))
def test_a_request_claiming_gigabytes_is_refused_unread(opcode):
    server = mem_server()
    req = serve(server, ClaimingRequest(header(opcode, 1, 0, length=CLAIM) + bytes(64)))
    assert req.read_bytes <= abi.fuse_in_header.size
    if opcode in NO_REPLY:
        assert req.used_len == 0
    else:
        assert req.error == -errno.EINVAL
    assert Client(server).getattr(1).ino == 1     # and the session goes on


def test_write_is_bounded_by_max_write_plus_its_header():
    server = mem_server(max_write=64 << 10)
    c = Client(server)
    fh = 0                     # MemFs keeps no handles
    wi = abi.fuse_write_in.size
    at_bound = header(Opcode.FUSE_WRITE, 2, wi + (64 << 10))
    req = serve(server, ClaimingRequest(at_bound + abi.fuse_write_in.pack(
        fh, 0, 64 << 10, 0, 0, 0, 0) + b"x" * (64 << 10)))
    assert req.error == 0 and req.largest_read <= (64 << 10)
    over = header(Opcode.FUSE_WRITE, 2, wi + (64 << 10) + 1)
    req = serve(server, ClaimingRequest(over + abi.fuse_write_in.pack(
        fh, 0, (64 << 10) + 1, 0, 0, 0, 0)))
    assert req.error == -errno.EINVAL and req.read_bytes <= abi.fuse_in_header.size


class XattrFs(MemFs):
    def __init__(self):
        super().__init__({b"a": b"alpha"})
        self.xattrs = {}

    def setxattr(self, ctx, inode, name, value, flags):
        self.xattrs[(inode, bytes(name))] = bytes(value)


def test_the_largest_legitimate_setxattr_still_passes():
    server = Server(XattrFs(), ServerOptions(xattr=True))
    assert Client(server).init().ok
    name = cstr(b"user." + b"n" * 250)
    value = b"v" * XATTR_SIZE_MAX
    args = abi.fuse_setxattr_in.pack(len(value), 0, 0, 0)[:abi.FUSE_COMPAT_SETXATTR_IN_SIZE]
    assert len(args) + len(name) + len(value) <= ARGS_MAX
    req = serve(server, ClaimingRequest(request(Opcode.FUSE_SETXATTR, 2, args, name, value),
                                        in_len=abi.fuse_in_header.size + len(args) + len(name)
                                        + len(value)))
    assert req.error == 0
    assert server.fs.xattrs == {(2, name[:-1]): value}


class SizeRecordingFs(MemFs):
    """MemFs that says which READ size reached it and lists a directory without end."""

    def __init__(self):
        super().__init__({b"big": b"z" * (3 << 20)})
        self.read_sizes = []

    def read(self, ctx, inode, fh, offset, size, flags):
        self.read_sizes.append(size)
        return super().read(ctx, inode, fh, offset, size, flags)

    def readdir(self, ctx, inode, fh, offset):
        from pyvirtiofsd.filesystem import DirEntry
        n = offset
        while True:
            n += 1
            yield DirEntry(ino=2, offset=n, type=stat.S_IFREG >> 12, name=b"big")


def test_read_and_readdir_sizes_are_cut_to_max_pages():
    fs = SizeRecordingFs()
    server = Server(fs, ServerOptions(max_write=256 << 10))
    assert Client(server).init().ok
    c = Client(server)
    fh = 0
    read_in = abi.fuse_read_in.pack(fh, 0, 0xFFFFFFFF, 0, 0, 0, 0)
    with capture_logs() as logs:
        req = serve(server, ClaimingRequest(request(Opcode.FUSE_READ, 2, read_in),
                                            out_len=CLAIM))
    assert req.error == 0
    assert fs.read_sizes == [256 << 10] and req.used_len == 16 + (256 << 10)
    assert any(e["event"] == "fuse request asks for more than a reply may carry" for e in logs)

    for op in (Opcode.FUSE_READDIR, Opcode.FUSE_READDIRPLUS):
        dh = 0
        req = serve(server, ClaimingRequest(request(op, 1, abi.fuse_read_in.pack(
            dh, 0, 0xFFFFFFFF, 0, 0, 0, 0)), out_len=CLAIM))
        assert req.error == 0
        assert (256 << 10) - 512 < req.used_len - 16 <= 256 << 10


def test_xattr_sizes_are_cut_to_the_reply_room():
    server = mem_server()      # MemFs: every value is b"value", the list user.a, user.bb
    # The guest claims 4 GiB of room but offers 4 writable bytes: ERANGE, not a reply
    # built for 4 GiB that then does not fit.
    gi = abi.fuse_getxattr_in.pack(0xFFFFFFFF, 0)
    req = serve(server, ClaimingRequest(request(Opcode.FUSE_GETXATTR, 2, gi, cstr("user.x")),
                                        out_len=16 + 4))
    assert req.error == -errno.ERANGE
    req = serve(server, ClaimingRequest(request(Opcode.FUSE_GETXATTR, 2, gi, cstr("user.x")),
                                        out_len=CLAIM))
    assert req.error == 0 and bytes(req.out[16:req.used_len]) == b"value"
    req = serve(server, ClaimingRequest(request(Opcode.FUSE_LISTXATTR, 2, gi), out_len=16 + 4))
    assert req.error == -errno.ERANGE
    req = serve(server, ClaimingRequest(request(Opcode.FUSE_LISTXATTR, 2, gi), out_len=CLAIM))
    assert req.error == 0 and bytes(req.out[16:req.used_len]) == b"user.a\0user.bb\0"


# --- CREATE that fails after it counted a lookup --------------------------------------------

class FailingKillSuidgid(PassthroughFs):
    def setattr(self, ctx, inode, attrs: SetAttr, fh=None):
        if attrs.kill_suidgid:
            raise OSError(errno.EIO, "cannot clear set-user-ID")
        return super().setattr(ctx, inode, attrs, fh)


def test_create_whose_kill_suidgid_fails_forgets_its_lookup(tmp_path):
    fs = FailingKillSuidgid(str(tmp_path))
    server = Server(fs, ServerOptions(killpriv_v2=True))
    c = Client(server)
    assert c.init(flags=abi.FUSE_HANDLE_KILLPRIV_V2 | abi.FUSE_INIT_EXT).ok
    assert server.session.flags & abi.FUSE_HANDLE_KILLPRIV_V2
    before = _fds()
    for i in range(20):
        ci = abi.fuse_create_in.pack(os.O_RDWR | os.O_TRUNC, 0o4755, 0, abi.FUSE_OPEN_KILL_SUIDGID)
        r = c.call(Opcode.FUSE_CREATE, 1, ci, cstr(f"f{i}"))
        assert r.error == -errno.EIO
    # Every inode CREATE opened was forgotten and every handle released: no fd is left.
    assert _fds() == before
    assert sorted(os.listdir(tmp_path)) == sorted(f"f{i}" for i in range(20))
    # A lookup now is the guest's only one: CREATE's count was given back.
    entry = c.lookup(1, "f0")
    assert fs.lookup_count(entry.nodeid) == 1


# --- the log a guest can cause ----------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_guest_faults_log_the_first_few_then_count():
    clock = Clock()
    g = GuestFaults(limit=3, interval=60.0, clock=clock)
    with capture_logs() as logs:
        for i in range(1000):
            g.report("bad thing", n=i)
        g.report("other thing")
    assert [e["n"] for e in logs if e["event"] == "bad thing"] == [0, 1, 2]
    assert "further" in logs[2] and "further" not in logs[1]
    assert [e["event"] for e in logs].count("other thing") == 1
    with capture_logs() as logs:
        clock.now += 61
        g.report("bad thing", n=1000)          # a new interval: the summary, then the line
    assert logs[0] == {"event": "guest conditions not logged", "kind": "bad thing",
                       "count": 997, "seconds": 61.0, "log_level": "warning"}
    assert logs[1]["n"] == 1000
    with capture_logs() as logs:
        for i in range(10):
            g.report("bad thing", n=i)
        g.flush()
        g.flush()                               # nothing left: no second summary
    summaries = [e for e in logs if e["event"] == "guest conditions not logged"]
    assert [s["count"] for s in summaries] == [8]
    assert g.totals() == {"bad thing": 1011, "other thing": 1}


def test_malformed_requests_log_no_traceback():
    server = mem_server()
    with capture_logs() as logs:
        run(server, b"\x01" * 20, out_len=8)                    # short; no room for a reply
        run(server, header(Opcode.FUSE_GETATTR, 1, 0, length=999) + bytes(16))
        run(server, request(Opcode.FUSE_GETATTR, 1, bytes(16)), out_len=4)
    assert logs and not any("exc_info" in e or "exception" in e for e in logs)
    assert {e["log_level"] for e in logs} == {"warning"}
    assert faults.totals()["fuse request length mismatch"] >= 1


def test_c_and_python_share_the_request_bound():
    from pyvirtiofsd._cext import lib
    assert lib.PVFS_FUSE_ARGS_MAX == ARGS_MAX
