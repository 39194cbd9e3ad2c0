"""Live migration without a VM: our front-end moves a running FUSE session from one real
daemon to a second one on the same shared directory (stop the rings, DEVICE_STATE save
through a pipe, the same memory and ring bases on the second daemon, DEVICE_STATE load,
CHECK_DEVICE_STATE) and goes on through the SAME nodeids and fhs."""
import errno
import os

import pytest

from pyvirtiofsd.frontend import FuseClient
from pyvirtiofsd.frontend.migrate import migrate, save_state, stop_rings
from pyvirtiofsd.frontend.vhost import BackendError
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _move(client: FuseClient, daemon_b, opened: list, **kw):
    """Migrate client's session to daemon_b; the client goes on there."""
    source = client.fe
    dest = migrate(source, daemon_b.socket_path, **kw)
    source.close()
    opened.append(dest)
    client.fe = dest
    return dest


@pytest.fixture
def moved(start_daemon, connect):
    """(start_daemon, connect, list of front-ends to close)."""
    opened = []
    yield opened
    for fe in opened:
        fe.close()


@pytest.mark.parametrize("inodes", ["prefer", "never"])
def test_a_session_moves_to_a_second_daemon(start_daemon, connect, shared, moved, inodes):
    """Under the default sandbox and seccomp filter: files open for reading and writing,
    a directory mid-listing and looked-up inodes all go on in the second daemon -- with
    inodes kept as file handles (the default) and as O_PATH fds."""
    data = os.urandom(200_000)
    (shared / "read.bin").write_bytes(data)
    (shared / "write.bin").write_bytes(b"\0" * 1000)
    (shared / "dir").mkdir()
    names = sorted(f"entry-{k:03}".encode() for k in range(120))
    for n in names:
        (shared / "dir" / n.decode()).write_bytes(b"")
    (shared / "dir" / "sub").mkdir()
    (shared / "dir" / "sub" / "deep.txt").write_bytes(b"deep")

    a = start_daemon("--inode-file-handles", inodes, socket_name="a.sock")
    b = start_daemon("--inode-file-handles", inodes, socket_name="b.sock")
    c = connect(a)
    r = c.lookup(ROOT, b"read.bin")[0]
    w = c.lookup(ROOT, b"write.bin")[0]
    c.lookup(ROOT, b"write.bin")                      # two lookups held
    d = c.lookup(ROOT, b"dir")[0]
    sub = c.lookup(d.nodeid, b"sub")[0]
    deep = c.lookup(sub.nodeid, b"deep.txt")[0]
    rfh = c.open(r.nodeid, os.O_RDONLY).fh
    wfh = c.open(w.nodeid, os.O_WRONLY).fh
    dfh = c.opendir(d.nodeid).fh
    first = c.readdir(d.nodeid, dfh, 0, 1024)        # part of the listing
    assert 0 < len(first) < len(names)
    assert c.write(w.nodeid, wfh, 0, b"before") == 6

    b_pid = b.serving_pid()
    b_fds_idle = fd_count(b_pid)
    _move(c, b, moved)

    # the same fhs: bytes read and written through them are the file's
    assert c.read(r.nodeid, rfh, 12345, 5000) == data[12345:17345]
    assert c.write(w.nodeid, wfh, 10, b"after") == 5
    assert (shared / "write.bin").read_bytes()[:15] == b"before\0\0\0\0after"
    # the listing goes on from where it stopped on the first daemon
    rest, offset = [], first[-1][1]
    while chunk := c.readdir(d.nodeid, dfh, offset, 1024):
        rest.extend(chunk)
        offset = chunk[-1][1]
    listed = [e[3] for e in first + rest if e[3] not in (b".", b"..")]
    assert sorted(listed) == sorted(names + [b"sub"]) and len(listed) == len(set(listed))
    # the same nodeids, for files a nodeid is still known by
    assert c.lookup(sub.nodeid, b"deep.txt")[0].nodeid == deep.nodeid
    assert c.getattr(deep.nodeid).ino == os.stat(shared / "dir/sub/deep.txt").st_ino
    assert c.lookup(ROOT, b"dir")[0].nodeid == d.nodeid
    # new numbers do not collide with the moved ones
    e, _, o = c.create(ROOT, b"new.txt")
    assert e.nodeid not in (r.nodeid, w.nodeid, d.nodeid, sub.nodeid, deep.nodeid)
    assert o.fh not in (rfh, wfh, dfh)
    c.release(e.nodeid, o.fh)
    c.forget(e.nodeid, 1)

    # RELEASE and FORGET work on the moved ones, and give their fds back
    before = fd_count(b_pid)
    # 3 handles, 5 inodes: with O_PATH fds, 5 fds; with file handles, those used since the
    # move keep an fd idle (up to 5)
    inode_fds = 5 if inodes == "never" else 0
    assert before >= b_fds_idle + 3 + inode_fds
    c.release(r.nodeid, rfh)
    c.release(w.nodeid, wfh)
    c.release(d.nodeid, dfh, dir=True)
    with pytest.raises(OSError) as ei:
        c.read(r.nodeid, rfh, 0, 10)
    assert ei.value.errno == errno.EBADF
    c.batch_forget([(r.nodeid, 1), (w.nodeid, 2), (deep.nodeid, 2), (sub.nodeid, 1),
                    (d.nodeid, 2)])
    if inodes == "never":
        assert fd_count(b_pid) == before - 3 - 5
    else:
        assert before - 3 - 5 <= fd_count(b_pid) <= before - 3
    with pytest.raises(OSError) as ei:
        c.getattr(w.nodeid)
    assert ei.value.errno == errno.EBADF
    assert "device state loaded" in b.log() and "device state saved" in a.log()


def test_a_file_created_through_fuse_create_moves_with_its_handle(start_daemon, connect, shared,
                                                                 moved):
    """CREATE opens the host file with O_NOFOLLOW, which its F_GETFL keeps: the second daemon
    reopens the handle through /proc without it (with it: ELOOP, and the load failed -- what
    QEMU 11.1 met when a guest shell had `exec 3>>file` open during a live migration)."""
    a, b = start_daemon(socket_name="a.sock"), start_daemon(socket_name="b.sock")
    c = connect(a)
    e, _, o = c.create(ROOT, b"created.txt", os.O_WRONLY | os.O_APPEND)
    assert c.write(e.nodeid, o.fh, 0, b"before ") == 7
    _move(c, b, moved)
    assert c.write(e.nodeid, o.fh, 7, b"after") == 5
    assert (shared / "created.txt").read_bytes() == b"before after"
    assert "migration state loaded" in b.log() and "lost=0" in b.log()


def _two_files(start_daemon, connect, shared, *b_args, a_args=()):
    (shared / "keep.txt").write_bytes(b"kept")
    (shared / "gone.txt").write_bytes(b"gone")
    a = start_daemon(*a_args, socket_name="a.sock")
    b = start_daemon(*b_args, socket_name="b.sock")
    c = connect(a)
    keep = c.lookup(ROOT, b"keep.txt")[0]
    gone = c.lookup(ROOT, b"gone.txt")[0]
    kfh = c.open(keep.nodeid, os.O_RDONLY).fh
    gfh = c.open(gone.nodeid, os.O_RDONLY).fh
    bases = stop_rings(c.fe)
    state = save_state(c.fe)
    return a, b, c, (keep, kfh), (gone, gfh), bases, state


@pytest.mark.parametrize("change", ["rename", "unlink"])
def test_a_file_changed_between_save_and_load_aborts_by_default(start_daemon, connect, shared,
                                                                moved, change):
    a, b, c, _, _, bases, state = _two_files(start_daemon, connect, shared)
    if change == "rename":
        os.rename(shared / "gone.txt", shared / "elsewhere.txt")
    else:
        os.unlink(shared / "gone.txt")
    with pytest.raises(BackendError, match="CHECK_DEVICE_STATE"):
        migrate(c.fe, b.socket_path, state=state, bases=bases)
    assert "device state transfer failed" in b.log() and "inode" in b.log()
    assert "fuse session restored" in b.log() and "fuse session ended" in b.log()


def test_a_file_changed_between_save_and_load_answers_eio_with_guest_error(
        start_daemon, connect, shared, moved):
    a, b, c, (keep, kfh), (gone, gfh), bases, state = _two_files(
        start_daemon, connect, shared, "--migration-on-error", "guest-error")
    os.unlink(shared / "gone.txt")
    _move(c, b, moved, state=state, bases=bases)
    assert c.read(keep.nodeid, kfh, 0, 100) == b"kept"
    for call in (lambda: c.read(gone.nodeid, gfh, 0, 100), lambda: c.getattr(gone.nodeid),
                 lambda: c.open(gone.nodeid, os.O_RDONLY)):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EIO
    # the guest can still give them back
    c.release(gone.nodeid, gfh)
    c.forget(gone.nodeid, 1)
    with pytest.raises(OSError) as ei:
        c.getattr(gone.nodeid)
    assert ei.value.errno == errno.EBADF


def test_file_handles_mode_follows_a_renamed_file(start_daemon, connect, shared, moved):
    mode = ("--migration-mode", "file-handles")
    a, b, c, (keep, kfh), (gone, gfh), bases, state = _two_files(
        start_daemon, connect, shared, *mode, a_args=mode)
    os.rename(shared / "gone.txt", shared / "moved.txt")
    _move(c, b, moved, state=state, bases=bases)
    assert c.read(gone.nodeid, gfh, 0, 100) == b"gone"
    assert c.getattr(gone.nodeid).ino == os.stat(shared / "moved.txt").st_ino
    assert c.read(keep.nodeid, kfh, 0, 100) == b"kept"


def test_find_paths_with_verified_handles_and_confirmed_paths(start_daemon, connect, shared,
                                                              moved):
    opts = ("--migration-verify-handles", "--migration-confirm-paths")
    a, b, c, (keep, kfh), (gone, gfh), bases, state = _two_files(
        start_daemon, connect, shared, *opts, a_args=opts)
    # a different file now at the path the source sent: the handle check notices
    os.unlink(shared / "gone.txt")
    (shared / "gone.txt").write_bytes(b"impostor")
    with pytest.raises(BackendError):
        migrate(c.fe, b.socket_path, state=state, bases=bases)
    assert "another file" in b.log()


def test_the_source_refuses_a_transfer_while_rings_run(start_daemon, connect, shared):
    c = connect(start_daemon())
    with pytest.raises(BackendError, match="SET_DEVICE_STATE_FD"):
        save_state(c.fe)
    assert c.getattr(ROOT).ino == os.stat(shared).st_ino     # and goes on serving


def test_a_hostile_state_is_refused_and_the_daemon_lives(start_daemon, connect, shared, moved):
    from pyvirtiofsd.frontend.migrate import load_state
    from pyvirtiofsd.migration import state as st

    b = start_daemon(socket_name="b.sock")
    fe = connect(b, init=False).fe
    for q in fe.queues:
        fe.stop_queue(q.index)
    hostile = [b"", b"garbage", st._HEAD.pack(st.MAGIC, 1, 0, 1 << 40) + b"{}",
               st.encode({"session": {"minor": 38, "flags": 0, "max_write": 1 << 20,
                                      "max_read": 1 << 20},
                          "next_nodeid": 2, "next_fh": 1, "handles": [],
                          "inodes": [{"n": 2, "l": 1, "t": 0o100000,
                                      "p": "Li4vLi4vZXRjL3Bhc3N3ZA=="}]})]   # ../../etc/passwd
    for data in hostile:
        with pytest.raises(BackendError, match="CHECK_DEVICE_STATE"):
            load_state(fe, data)
    assert b.proc.poll() is None
    assert b.log().count("device state transfer failed") == len(hostile)


def test_malformed_transfer_requests_are_refused_with_an_error_code(start_daemon, connect,
                                                                    shared):
    from pyvirtiofsd.frontend.migrate import _call
    from pyvirtiofsd.vhost_user.codec import DeviceStateTransfer
    from pyvirtiofsd.vhost_user.protocol import FrontendReq as R

    d = start_daemon()
    fe = connect(d, init=False).fe
    for q in fe.queues:
        fe.stop_queue(q.index)
    r, w = os.pipe()
    try:
        for direction, phase, fds in [(2, 0, [w]), (0, 1, [w]), (0, 0, []), (0, 0, [r, w])]:
            rc = _call(fe, R.SET_DEVICE_STATE_FD, DeviceStateTransfer(direction, phase).pack(),
                       fds)
            assert rc & 0xFF != 0
        assert _call(fe, R.CHECK_DEVICE_STATE) != 0          # no transfer to check
    finally:
        os.close(r)
        os.close(w)
    assert d.proc.poll() is None
    assert d.log().count("refused SET_DEVICE_STATE_FD") == 4


def test_a_transfer_whose_pipe_is_never_closed_does_not_hold_the_daemon(start_daemon, connect):
    from pyvirtiofsd.frontend.migrate import _call
    from pyvirtiofsd.vhost_user.codec import DeviceStateTransfer
    from pyvirtiofsd.vhost_user.protocol import FrontendReq as R

    d = start_daemon()
    fe = connect(d, init=False).fe
    for q in fe.queues:
        fe.stop_queue(q.index)
    r, w = os.pipe()
    try:
        assert _call(fe, R.SET_DEVICE_STATE_FD, DeviceStateTransfer(1, 0).pack(), [r]) == 1 << 8
        os.write(w, b"PVFSMIG\0")                # and then nothing, the pipe left open
        fe.close()
        assert d.wait(10) == 0                   # the daemon ends as after any session
    finally:
        os.close(r)
        os.close(w)
    assert "cancelled" in d.log()
