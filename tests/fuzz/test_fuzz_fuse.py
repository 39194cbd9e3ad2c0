"""Every FUSE opcode with truncated, oversized and garbage bodies, lying header lengths and
unknown nodeids/handles -- first through ``Server.handle(BytesRequest(...))`` with the
passthrough file system, then through the real daemon over virtqueues.

Each request must be completed exactly once, with a well-formed reply (out header length
equal to the bytes used, the request's unique, an errno in range) or, for the no-reply
opcodes, none.  The server must never reach its "unexpected exception" path (an error-level
log line: a handler bug turned into EIO), and nothing outside the shared directory may be
created, changed or removed (a canary directory beside it is compared after every case).
"""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st
from pyvirtiofsd.logs import capture as capture_logs

from fuzzstats import count_case
from fusegen import requests
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import BytesRequest
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions

NO_REPLY = {Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET, Opcode.FUSE_INTERRUPT}
OUT_LENS = st.sampled_from([0, 8, 15, 16, 17, 24, 100, 144, 4096, 1 << 20])


def populate(share: str) -> None:
    """The files fuzzed requests find: f (4 KiB), d/g, s -> /etc/passwd, p (a FIFO)."""
    with open(os.path.join(share, "f"), "wb") as f:
        f.write(os.urandom(4096))
    os.mkdir(os.path.join(share, "d"))
    open(os.path.join(share, "d", "g"), "wb").close()
    os.symlink("/etc/passwd", os.path.join(share, "s"))
    os.mkfifo(os.path.join(share, "p"))


def make_canary(parent: str) -> str:
    c = os.path.join(parent, "canary")
    os.mkdir(c)
    with open(os.path.join(c, "secret"), "wb") as f:
        f.write(b"must not change")
    return c


def snapshot(path: str) -> dict:
    """Everything about a directory tree that a stray write, create or chmod would change."""
    out = {}
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            st_ = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(st_.st_mode) else None
            out[os.path.relpath(p, path)] = (st_.st_mode, st_.st_uid, st_.st_gid, st_.st_size,
                                             st_.st_mtime_ns, st_.st_nlink, data)
    st_ = os.lstat(path)
    out["."] = (st_.st_mode, st_.st_uid, st_.st_gid, st_.st_mtime_ns, st_.st_nlink)
    return out


def header_lies(body_len: int, hdr_len: int | None, extlen: int) -> bool:
    """Whether the server must refuse the request's framing (EINVAL for an opcode that gets
    replies): fuse_in_header.len shorter than the header, longer than what was sent, or too
    short for the extensions total_extlen announces."""
    sent = 40 + body_len
    length = sent if hdr_len is None else hdr_len
    return length < 40 or length > sent or extlen * 8 > length - 40


def check_reply(unique_sent, opcode, used_len, out_len, raw, lies) -> None:
    assert 0 <= used_len <= out_len
    if out_len < 16:
        assert used_len == 0, (opcode, out_len)    # no room for even the header
        return
    if opcode in NO_REPLY:
        # Never answered, even when malformed: the guest waits for no reply (its handler
        # swallows every fault, and a lying header is refused silently).
        assert used_len == 0, (opcode, used_len, lies)
        return
    assert used_len >= 16, (opcode, used_len)     # every other opcode is answered
    h = abi.fuse_out_header.parse(raw)
    if lies:
        assert h.error == -errno.EINVAL
    assert h.len == used_len
    assert -4095 <= h.error <= 0
    if unique_sent is not None:
        assert h.unique == unique_sent
    if h.error:
        assert used_len == 16


def build(opcode, nodeid, body, hdr_len, extlen, uid, gid, unique):
    length = 40 + len(body) if hdr_len is None else hdr_len
    return abi.fuse_in_header.pack(length, opcode % 2**32, unique, nodeid, uid, gid, 1,
                                   extlen, 0) + body


def serve_case(share_parent, reqs, out_lens):
    share = os.path.join(share_parent, "share")
    os.mkdir(share)
    os.chmod(share, 0o777)
    populate(share)
    canary = make_canary(share_parent)
    before = snapshot(canary)
    fs = PassthroughFs(share, xattr=True)
    server = Server(fs, ServerOptions(xattr=True))
    try:
        init = BytesRequest(build(Opcode.FUSE_INIT, 0, abi.fuse_init_in.build(
            major=7, minor=39, flags=abi.FUSE_INIT_EXT | abi.FUSE_DO_READDIRPLUS), None, 0, 0, 0, 1)
            + b"", 4096)
        server.handle(init)
        assert abi.fuse_out_header.parse(init.reply).error == 0
        for name in (b"f", b"d", b"s", b"p"):            # nodeids 2..5
            server.handle(BytesRequest(build(Opcode.FUSE_LOOKUP, 1, name + b"\0", None, 0, 0, 0, 2)))
        for nodeid, op in ((2, Opcode.FUSE_OPEN), (3, Opcode.FUSE_OPENDIR)):   # fh 0, 1
            server.handle(BytesRequest(build(op, nodeid, abi.fuse_open_in.build(flags=os.O_RDWR
                                       if op == Opcode.FUSE_OPEN else 0), None, 0, 0, 0, 3)))
        with capture_logs() as logs:
            for i, (req, out_len) in enumerate(zip(reqs, out_lens)):
                opcode, nodeid, body, hdr_len, extlen, uid, gid = req
                unique = 1000 + i
                data = build(opcode, nodeid, body, hdr_len, extlen, uid, gid, unique)
                br = BytesRequest(data, out_len)
                server.handle(br)                               # never raises
                assert br.used_len is not None, "request not completed"
                check_reply(unique, opcode, br.used_len, out_len, br.reply,
                            header_lies(len(body), hdr_len, extlen))
        bad = [e for e in logs if e.get("log_level") in ("error", "critical")]
        assert not bad, f"the server hit an unexpected exception: {bad}"
    finally:
        fs.close()
    assert snapshot(canary) == before, "something outside the shared directory changed"
    assert sorted(os.listdir(share_parent)) == ["canary", "share"]


@given(reqs=st.lists(requests(), min_size=1, max_size=12), data=st.data())
def test_server_takes_any_request(reqs, data, fresh_dir):
    count_case("fuse_server")
    out_lens = [data.draw(OUT_LENS) for _ in reqs]
    import tempfile
    case_dir = tempfile.mkdtemp(dir=fresh_dir)
    serve_case(case_dir, reqs, out_lens)


# ---- through the real daemon --------------------------------------------------------------


class LiveDaemon:
    def __init__(self, base: str):
        self.base = base
        self.share = os.path.join(base, "share")
        os.mkdir(self.share)
        os.chmod(self.share, 0o777)
        populate(self.share)
        self.canary = make_canary(base)
        self.canary_before = snapshot(self.canary)
        self.sock = os.path.join(base, "vfs.sock")
        self.log_path = os.path.join(base, "daemon.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyvirtiofsd", "--socket-path", self.sock, "--shared-dir",
             self.share, "--xattr", "--log-level", "warn"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, "daemon did not listen"
            time.sleep(0.02)
        self.fe = VhostUserFrontend(self.sock, queue_size=64).connect()
        self.client = FuseClient(self.fe, timeout=20)

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return open(self.log_path, "rb").read().decode(errors="replace")

    def close(self) -> int:
        self.fe.close()
        try:
            return self.proc.wait(20)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory, small_fs):
    import tempfile
    d = LiveDaemon(tempfile.mkdtemp(dir=small_fs))
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def track_session(alive: bool, opcode: int, body: bytes, r) -> bool:
    """Whether the daemon has a FUSE session after answering ``r`` (well framed): an INIT
    of major 7 starts one (a newer major only gets ours back), a DESTROY ends it."""
    if r.error:
        return alive
    if opcode == Opcode.FUSE_INIT:
        return True if int.from_bytes(body[:4], "little") == abi.FUSE_KERNEL_VERSION else alive
    if opcode == Opcode.FUSE_DESTROY:
        return False
    return alive


@given(reqs=st.lists(requests(), min_size=1, max_size=12), data=st.data())
def test_daemon_takes_any_request(live, reqs, data):
    count_case("fuse_daemon")
    c = live.client
    c.init(minor=39)
    session = True
    for name in (b"f", b"d", b"s", b"p"):
        try:
            c.lookup(1, name)
        except OSError:
            pass    # a previous case may have removed or replaced it
    for req in reqs:
        opcode, nodeid, body, hdr_len, extlen, uid, gid = req
        out_size = data.draw(st.sampled_from([0, 64, 4096, 65536]))
        no_reply = opcode in NO_REPLY and data.draw(st.booleans())
        raw_len = None if hdr_len is None else hdr_len
        queue = 0 if opcode in NO_REPLY else 1
        p = c.submit(opcode % 2**32, nodeid, body, out_size, uid=uid, gid=gid, queue=queue,
                     no_reply=no_reply, raw_len=raw_len)
        r = c.reap(p, timeout=20)
        lies = header_lies(len(body), hdr_len, 0)    # submit() sends total_extlen 0
        if opcode in NO_REPLY:
            # No reply is due, writable part or not, malformed or not: a used element with
            # length 0 is all the driver gets back.
            assert r.used_len == 0, (opcode, no_reply, lies, r)
            continue
        assert 16 <= r.used_len <= 16 + out_size, (opcode, out_size, r)
        assert r.unique == p.unique
        assert -4095 <= r.error <= 0
        if r.error:
            assert r.used_len == 16 and r.body == b""
        if lies:
            assert r.error == -errno.EINVAL
        else:
            session = track_session(session, opcode, body, r)
    assert live.proc.poll() is None, "the daemon died:\n" + live.text()[-3000:]
    # Still serving: a plain request after the hostile ones -- EIO exactly when a hostile
    # DESTROY ended the session (the next case's INIT restarts it).
    assert c.call(Opcode.FUSE_GETATTR, 1, abi.fuse_getattr_in.build(), abi.FUSE_ATTR_OUT_SIZE).error \
        == (0 if session else -errno.EIO)
    assert snapshot(live.canary) == live.canary_before, "the canary outside the share changed"


def test_daemon_survived_and_logged_no_crash(live):
    """Runs after the fuzz cases (file order): clean exit; no error-level line (an
    unexpected exception, a broken queue) and no sanitizer or interpreter crash report in
    the log (warnings about the hostile requests are expected)."""
    count_case("fuse_daemon_exit")
    assert live.close() == 0, live.text()[-3000:]
    text = live.text()
    for bad in ("[error", "[critical", "Fatal Python error", "AddressSanitizer",
                "runtime error:", "Segmentation fault"):
        assert bad not in text, text[text.index(bad) - 2000:text.index(bad) + 3000]
    assert snapshot(live.canary) == live.canary_before
