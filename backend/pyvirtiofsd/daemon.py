"""Daemon lifecycle: listen on the vhost-user socket, serve one front-end, exit cleanly.

Like virtiofsd, one daemon serves one front-end connection and exits 0 when the
front-end disconnects (or on SIGTERM/SIGINT), removing the socket file it created.
SIGUSR1 logs the statistics collected so far (ignored when none are); it never stops
the daemon.
"""
from __future__ import annotations

import os
import signal
import socket

from pyvirtiofsd import logs

from .guestfaults import faults
from .startup import StartupError, listen_unix  # noqa: F401 - their home before startup.py
from .stats import Stats, StatsReporter
from .vhost_user.backend import Backend
from .vhost_user.connection import Connection

log = logs.get_logger("pyvirtiofsd")


def adopt_listener(fd: int) -> socket.socket:
    """The listening socket a supervisor handed us as ``fd`` (systemd socket activation
    passes fd 3, libvirt its own number).  Anything else is a startup error, not a
    traceback."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise StartupError(f"--fd {fd}: not a usable socket ({e.strerror})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()       # not ours to close
        raise StartupError(f"--fd {fd}: not a listening unix stream socket")
    if not os.get_blocking(fd):
        sock.setblocking(True)  # accept() waits, whatever flags the supervisor left on it
    return sock


class _Terminate(Exception):
    pass


def _on_signal(signum, frame):
    raise _Terminate(signal.Signals(signum).name)


def run(backend: Backend, *, socket_path: str | None = None, listen_fd: int | None = None,
        socket_group: str | None = None, on_listening=None, stats: Stats | None = None,
        stats_interval: float = 0.0) -> int:
    """Serve one front-end connection.  Returns the process exit status.

    ``stats``: statistics to report every ``stats_interval`` seconds (0: never), on SIGUSR1
    and at exit."""
    reporter = StatsReporter(stats, stats_interval) if stats is not None else None
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # Without statistics SIGUSR1 is ignored: its default action would end the daemon.
    old[signal.SIGUSR1] = signal.signal(
        signal.SIGUSR1, signal.SIG_IGN if reporter is None else
        (lambda signum, frame: reporter.request()))
    if reporter is not None:
        reporter.start()
    listener = None
    created_path = None
    conn = None
    try:
        if listen_fd is not None:
            listener = adopt_listener(listen_fd)
        else:
            listener = listen_unix(socket_path, socket_group)
            created_path = socket_path
        log.info("listening", socket=socket_path or f"fd:{listen_fd}")
        if on_listening is not None:
            on_listening()
        sock, _ = listener.accept()
        listener.close()
        listener = None
        conn = Connection(sock)
        log.info("front-end connected")
        clean = backend.serve(conn)
        log.info("front-end disconnected")
        return 0 if clean else 1
    except _Terminate as e:
        log.info("terminating", signal=str(e))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            backend.close()
        except Exception:
            log.exception("error while shutting down")
        faults.flush()
        if reporter is not None:
            reporter.stop()
        if conn is not None:
            conn.close()
        if listener is not None:
            listener.close()
        if created_path is not None:
            try:
                os.unlink(created_path)
            except FileNotFoundError:
                pass
        for s, h in old.items():
            signal.signal(s, h)
