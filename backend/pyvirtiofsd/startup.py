"""What the daemon does before it imports the daemon: block the signals a supervisor or a
front-end may send from the moment the socket exists, and listen on the socket.

Kept apart (and light: standard library only) so that the socket listens within a few tens
of milliseconds of the start -- a VMM waits for it -- while the rest of the daemon (the
server, the passthrough, the C extension) is imported afterwards; a front-end that connects
meanwhile waits in the listen backlog.
"""
from __future__ import annotations

import errno
import grp
import os
import signal
import socket
import stat

# Signals the supervisor passes on: the daemon's own (TERM/INT stop it, USR1 logs
# statistics) and the ones a terminal or service manager sends.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def hold_signals() -> None:
    """Block the forwarded signals from the moment the socket exists -- a front-end or a
    service manager may signal as soon as it sees it -- until whoever must handle them is
    ready: the supervisor's forwarding or the daemon loop's own handlers
    (:func:`pyvirtiofsd.sandbox.ready`).  Blocked signals stay pending; none is lost."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)


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
