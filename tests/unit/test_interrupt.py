"""FUSE_INTERRUPT cancels a request that is still waiting for a worker: it is answered
EINTR at once and no worker serves it.  One already being served runs to its end."""
import errno
import threading
import time

from fusewire import Client, request
from memfs import MemFs

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import BytesRequest
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.virtiofs import HIPRIO_QUEUE, VirtioFsDevice


class SlowFsync(MemFs):
    """FSYNC waits until the test lets it go; the calls that reached the file system."""

    def __init__(self):
        super().__init__({b"a": b"alpha"})
        self.go = threading.Event()
        self.served = []

    def fsync(self, ctx, inode, fh, datasync):
        self.served.append(("fsync", inode))
        assert self.go.wait(30)

    def getattr(self, ctx, inode, fh):
        self.served.append(("getattr", inode))
        return super().getattr(ctx, inode, fh)


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def error(req: BytesRequest) -> int:
    return abi.fuse_out_header.parse(req.reply).error


def test_interrupt_cancels_a_waiting_request_and_not_a_running_one():
    fs = SlowFsync()
    server = Server(fs, ServerOptions())
    assert Client(server).init().ok
    device = VirtioFsDevice(server, thread_pool_size=1)
    try:
        submit, hiprio = device.handler(1), device.handler(HIPRIO_QUEUE)
        fsync = BytesRequest(request(Opcode.FUSE_FSYNC, 2, abi.fuse_fsync_in.pack(0, 0, 0),
                                     unique=100))
        waiting = BytesRequest(request(Opcode.FUSE_GETATTR, 2, bytes(16), unique=102))
        later = BytesRequest(request(Opcode.FUSE_GETATTR, 1, bytes(16), unique=104))
        submit(fsync)
        wait_for(lambda: fs.served == [("fsync", 2)])   # the one worker is busy now
        submit(waiting)
        submit(later)

        def interrupt(unique):
            r = BytesRequest(request(Opcode.FUSE_INTERRUPT, 0,
                                     abi.fuse_interrupt_in.pack(unique), unique=unique | 1))
            hiprio(r)
            assert r.used_len == 0                      # INTERRUPT itself gets no reply

        interrupt(102)
        assert waiting.used_len == 16 and error(waiting) == -errno.EINTR   # answered at once
        interrupt(100)                                  # already running: runs to its end
        assert fsync.used_len is None
        fs.go.set()
        wait_for(lambda: later.used_len is not None)
        assert fsync.used_len == 16 and error(fsync) == 0
        assert error(later) == 0 and later.used_len > 16
        # The cancelled GETATTR never reached the file system.
        assert fs.served == [("fsync", 2), ("getattr", 1)]
    finally:
        fs.go.set()
        device.close()


def test_a_reused_unique_is_served_twice_not_lost():
    """A confused guest that sends two requests with one unique gets both answered."""
    fs = SlowFsync()
    fs.go.set()
    server = Server(fs, ServerOptions())
    assert Client(server).init().ok
    device = VirtioFsDevice(server, thread_pool_size=2)
    try:
        reqs = [BytesRequest(request(Opcode.FUSE_GETATTR, 1, bytes(16), unique=7))
                for _ in range(20)]
        for r in reqs:
            device.handler(1)(r)
        wait_for(lambda: all(r.used_len is not None for r in reqs))
        assert all(error(r) == 0 for r in reqs)
    finally:
        device.close()
