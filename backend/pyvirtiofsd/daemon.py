"""Daemon lifecycle: listen on the vhost-user socket, serve one front-end, exit cleanly.

Like virtiofsd, one daemon serves one front-end connection and exits 0 when the
front-end disconnects (or on SIGTERM/SIGINT), removing the socket file it created.
SIGUSR1 logs the statistics collected so far (ignored when none are); it never stops
the daemon.
"""
from __future__ import annotations

import errno
import grp
import os
import signal
import socket
import stat

from pyvirtiofsd import logs

from .guestfaults import faults
from .stats import Stats, StatsReporter
from .vhost_user.backend import Backend
from .vhost_user.connection import Connection

log = logs.get_logger("pyvirtiofsd")


class StartupError(RuntimeError):
    """The daemon cannot start (e.g. another daemon owns the socket)."""


def _socket_in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        return e.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        s.close()


def listen_unix(path: str, group: str | None = None) -> socket.socket:
    """Bind a listening socket at ``path``.  A stale socket file (nobody listening) is
    replaced; a live one is refused, as is any other kind of file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket")
        if _socket_in_use(path):
            raise StartupError(f"another process is listening on {path}")
        os.unlink(path)
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"no such group: {group}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Bind with a umask that leaves the socket to its owner until --socket-group is applied,
    # so nobody else can connect in between.  (Renaming a bound socket into place would do
    # too, but /proc/net/unix keeps the old name, which tools that wait for us read.)
    old_umask = os.umask(0o177) if gid is not None else None
    try:
        try:
            sock.bind(path)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        sock.listen(1)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {path}: {e.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


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
