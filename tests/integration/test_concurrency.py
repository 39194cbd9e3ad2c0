"""Requests are served concurrently: a FUSE operation blocked in the file system does not
hold up others behind it (worker pool; C releases the GIL around blocking calls)."""
import socket
import stat
import threading
import time

import pytest

from pyvirtiofsd.filesystem import Attr, FileSystem
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.vhost_user.backend import Backend
from pyvirtiofsd.vhost_user.connection import Connection
from pyvirtiofsd.virtiofs import VirtioFsDevice


class SlowFsync(FileSystem):
    """fsync blocks until ``unblock`` is set; getattr answers at once."""

    def __init__(self):
        self.unblock = threading.Event()
        self.fsync_started = threading.Event()

    def getattr(self, ctx, inode, fh):
        return Attr(ino=inode, mode=stat.S_IFDIR | 0o755, nlink=2)

    def fsync(self, ctx, inode, fh, datasync):
        self.fsync_started.set()
        if not self.unblock.wait(30):
            raise OSError(5, "never released")


def serve(fs, thread_pool_size):
    device = VirtioFsDevice(Server(fs, ServerOptions()), thread_pool_size=thread_pool_size)
    backend = Backend(device)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    t = threading.Thread(target=backend.serve, args=(Connection(theirs),), daemon=True)
    t.start()
    fe = VhostUserFrontend(sock=ours).connect()
    client = FuseClient(fe)
    client.init()
    return fe, client, backend, device


def test_slow_fsync_does_not_stall_getattr():
    fs = SlowFsync()
    fe, client, backend, device = serve(fs, thread_pool_size=4)
    try:
        pending = client.submit(Opcode.FUSE_FSYNC, abi.FUSE_ROOT_ID, abi.fuse_fsync_in.build(fh=0))
        assert fs.fsync_started.wait(10)
        t0 = time.monotonic()
        for _ in range(20):
            assert client.getattr(abi.FUSE_ROOT_ID).ino == abi.FUSE_ROOT_ID
        assert time.monotonic() - t0 < 10
        assert pending.reply is None  # the fsync is still blocked
        fs.unblock.set()
        assert client.reap(pending).error == 0
    finally:
        fs.unblock.set()
        fe.close()
        backend.close()
        device.close()


def test_without_a_pool_requests_are_served_in_order():
    # The contrast that shows the pool is what provides concurrency.
    fs = SlowFsync()
    fe, client, backend, device = serve(fs, thread_pool_size=0)
    try:
        client.submit(Opcode.FUSE_FSYNC, abi.FUSE_ROOT_ID, abi.fuse_fsync_in.build(fh=0))
        assert fs.fsync_started.wait(10)
        with pytest.raises(TimeoutError):
            client.reap(client.submit(Opcode.FUSE_GETATTR, abi.FUSE_ROOT_ID,
                                      abi.fuse_getattr_in.build(), abi.FUSE_ATTR_OUT_SIZE), timeout=1.0)
    finally:
        fs.unblock.set()
        fe.close()
        backend.close()
        device.close()
