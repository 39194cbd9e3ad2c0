"""Serve any :class:`~pyvirtiofsd.filesystem.FileSystem` to a VM from Python.

The daemon (``python -m pyvirtiofsd``) is this module with a passthrough file system::

    import pyvirtiofsd

    class Hello(pyvirtiofsd.FileSystem):
        ...                                   # lookup, getattr, readdir, read...

    pyvirtiofsd.serve(Hello(), "/tmp/vfs.sock", tag="hello")

:func:`serve` listens on the socket, serves one front-end (QEMU) until it disconnects or
the process gets SIGTERM/SIGINT, and returns the exit status (0: clean).  Like virtiofsd it
serves a single connection: start it again (or use socket activation, see
``qemu-configs/``) for the next VM boot.  Call it from the main thread: it installs the
signal handlers.

:func:`build_backend` and :func:`run` are the two halves of :func:`serve`, for callers that
need the object graph (the CLI uses them with :class:`~pyvirtiofsd.passthrough.PassthroughFs`).
"""
from __future__ import annotations

from typing import Any, Callable

from .filesystem import FileSystem
from .opslog import OpsRecorder
from .server import Server, ServerOptions
from .stats import Stats


def build_backend(fs: FileSystem, options: ServerOptions | None = None, *,
                  tag: str | None = None, num_request_queues: int = 1,
                  thread_pool_size: int = 8, ops_log: str | None = None, stats: bool = False,
                  dax: Any = None, **device_options: Any):
    """The object graph a daemon runs: ``fs`` behind a FUSE :class:`Server`, a virtio-fs
    device and a vhost-user back-end.

    ``tag``: the tag front-ends that read the config space from the back-end see (QEMU's
    ``vhost-user-fs-pci`` takes it from its own command line instead).
    ``ops_log``: a file to append one JSON line per FUSE request to; ``stats``: collect
    per-opcode statistics (implied by ``ops_log``).  Requests served in Python are recorded
    as they complete, those served in C by C (:mod:`pyvirtiofsd.hotstats`), into the same
    statistics and file.
    ``dax`` and ``device_options`` go to the device (and ``dax`` to the server).
    """
    from . import daemon
    from .vhost_user.backend import Backend
    from .virtiofs import VirtioFsDevice

    recorder = None
    if ops_log is not None or stats:
        counters = Stats()
        if ops_log is not None:
            try:
                recorder = OpsRecorder.open(ops_log, stats=counters)
            except OSError as e:
                raise daemon.StartupError(f"cannot open the ops log {ops_log}: "
                                          f"{e.strerror or e}") from None
        else:
            recorder = OpsRecorder(stats=counters)
    server = Server(fs, options or ServerOptions(), dax=dax, ops=recorder)
    device = VirtioFsDevice(server, tag=tag, num_request_queues=num_request_queues,
                            thread_pool_size=thread_pool_size, dax=dax, **device_options)
    return Backend(device)


def run(backend, *, socket_path: str | None = None, fd: int | None = None,
        socket_group: str | None = None, stats_interval: float = 0.0,
        on_listening: Callable[[], None] | None = None) -> int:
    """Run the daemon loop (see :func:`pyvirtiofsd.daemon.run`) on a back-end from
    :func:`build_backend`; reports statistics when they are collected and closes the ops
    log at the end.  Returns the exit status."""
    from . import daemon

    recorder = getattr(getattr(backend.device, "server", None), "ops", None)
    try:
        return daemon.run(backend, socket_path=socket_path, listen_fd=fd,
                          socket_group=socket_group, on_listening=on_listening,
                          stats=getattr(recorder, "stats", None), stats_interval=stats_interval)
    finally:
        if recorder is not None:
            recorder.close()


def serve(fs: FileSystem, socket_path: str | None = None, *, fd: int | None = None,
          tag: str | None = None, num_request_queues: int = 1, thread_pool_size: int = 8,
          socket_group: str | None = None, ops_log: str | None = None, stats: bool = False,
          stats_interval: float = 0.0, log_level: str | None = "info",
          log_format: str = "console", on_listening: Callable[[], None] | None = None,
          **server_options: Any) -> int:
    """Serve ``fs`` to one VM on a vhost-user socket; returns the exit status.

    ``socket_path``: the unix socket to create and listen on (a stale one is replaced), or
    ``fd``: an already listening socket (systemd socket activation passes fd 3).
    ``server_options`` are :class:`~pyvirtiofsd.server.ServerOptions` fields:
    ``guest_page_size`` (every st_blksize the guest sees), ``readonly`` (the server refuses
    every modification with EROFS, whatever ``fs`` implements), ``cache``, ``xattr``,
    ``writeback``...  ``log_level``/``log_format`` set up structlog as the daemon does
    (``None`` leaves logging alone).  ``stats_interval``: log statistics every so many
    seconds (and collect them); SIGUSR1 logs the totals whenever statistics are collected.
    The other arguments are :func:`build_backend`'s.

    Raises :class:`pyvirtiofsd.daemon.StartupError` when it cannot start (socket in use,
    ops log not writable) and ``ValueError``/``TypeError`` for bad options.
    """
    if (socket_path is None) == (fd is None):
        raise ValueError("give exactly one of socket_path and fd")
    if log_level is not None:
        from . import logs
        logs.configure(log_level, log_format)
    backend = build_backend(fs, ServerOptions(**server_options), tag=tag,
                            num_request_queues=num_request_queues,
                            thread_pool_size=thread_pool_size, ops_log=ops_log,
                            stats=stats or stats_interval > 0)
    return run(backend, socket_path=socket_path, fd=fd, socket_group=socket_group,
               stats_interval=stats_interval, on_listening=on_listening)


__all__ = ["build_backend", "run", "serve"]
