"""SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (VHOST_USER_PROTOCOL_F_DEVICE_STATE): moving
the device's internal state through a pipe the front-end gives us, for live migration.

The front-end stops the rings, then sends SET_DEVICE_STATE_FD with the direction (save:
we write the whole state into the fd and close it; load: we read it until EOF) and one end
of a pipe.  The transfer runs on a thread of its own, so a slow pipe never blocks the
control socket; CHECK_DEVICE_STATE waits for it and answers 0 when it succeeded.  What the
state is belongs to the device (``VhostUserDevice.save_state`` / ``load_state``).
"""
from __future__ import annotations

import os
import select
import threading

from pyvirtiofsd import logs

log = logs.get_logger("pyvirtiofsd.vhost_user")

SAVE, LOAD = 0, 1
PHASE_STOPPED = 0
NO_FD = 1 << 8            # reply bit: no fd of ours comes back (we never send one)
ERROR = 1                 # reply bits 0-7: non-zero is failure
CHECK_WAIT = 120.0        # CHECK_DEVICE_STATE waits this long for a transfer at most
MAX_LOAD_BYTES = 512 << 20


class StateTransfer:
    """One transfer, running on its own thread until :meth:`check`."""

    def __init__(self, device, direction: int, fd: int):
        self.device = device
        self.direction = direction
        self.error: str | None = None
        self._fd = fd
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-state", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """The session ends (reset, close): give up waiting on the pipe."""
        self._cancelled.set()
        self._thread.join(1.0)

    def _wait(self, fd: int, event: int) -> None:
        """Until fd is ready (the pipe end is the front-end's too, so it is not made
        non-blocking: poll, then at most what cannot block)."""
        p = select.poll()
        p.register(fd, event)
        while not p.poll(100):
            if self._cancelled.is_set():
                raise ValueError("the transfer was cancelled (the session ended)")

    def _run(self) -> None:
        fd, self._fd = self._fd, -1
        try:
            if self.direction == SAVE:
                data = self.device.save_state()
                view = memoryview(data)
                while view:
                    self._wait(fd, select.POLLOUT)
                    view = view[os.write(fd, view[:select.PIPE_BUF]):]
                os.close(fd)
                fd = -1
                log.info("device state saved", bytes=len(data))
            else:
                buf = bytearray()
                while True:
                    self._wait(fd, select.POLLIN)
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > MAX_LOAD_BYTES:
                        raise ValueError(f"device state larger than {MAX_LOAD_BYTES} bytes")
                os.close(fd)
                fd = -1
                self.device.load_state(bytes(buf))
                log.info("device state loaded", bytes=len(buf))
        except Exception as e:  # noqa: BLE001 - any failure is the transfer's, reported by CHECK
            self.error = str(e) or type(e).__name__
            log.error("device state transfer failed",
                      direction="save" if self.direction == SAVE else "load", reason=self.error)
        finally:
            if fd >= 0:
                os.close(fd)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float = CHECK_WAIT) -> str | None:
        """None when the transfer succeeded, else why not."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return f"the transfer did not end within {timeout:.0f} s (pipe not closed?)"
        return self.error


def set_device_state_fd(backend, msg, body) -> int:
    """Start a transfer; the u64 to reply (never raises: a refusal is an error code)."""
    fds, msg.fds[:] = list(msg.fds), []
    try:
        if len(fds) != 1:
            raise ValueError(f"expected one file descriptor, got {len(fds)}")
        if body.direction not in (SAVE, LOAD):
            raise ValueError(f"unknown transfer direction {body.direction}")
        if body.phase != PHASE_STOPPED:
            raise ValueError(f"unknown migration phase {body.phase} (only 0, stopped)")
        if any(v.started for v in backend.vrings):
            raise ValueError("the rings must be stopped (GET_VRING_BASE) before a transfer")
        t = backend.state_transfer
        if t is not None and t.running:
            raise ValueError("a state transfer is running already")
        if not getattr(backend.device, "has_state", False):
            raise ValueError("this device has no state to transfer")
        backend.state_transfer = StateTransfer(backend.device, body.direction, fds.pop())
        return NO_FD
    except ValueError as e:
        log.warning("refused SET_DEVICE_STATE_FD", reason=str(e))
        return NO_FD | ERROR
    finally:
        for fd in fds:
            os.close(fd)


def check_device_state(backend) -> int:
    """CHECK_DEVICE_STATE's u64: 0 when the last transfer succeeded."""
    t, backend.state_transfer = backend.state_transfer, None
    if t is None:
        log.warning("CHECK_DEVICE_STATE without a transfer")
        return ERROR
    why = t.wait()
    if why is not None:
        log.error("device state transfer reported failed", reason=why)
        return ERROR
    return 0
