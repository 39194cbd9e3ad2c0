"""Prometheus metrics: ``--metrics-address ADDR:PORT`` (an HTTP endpoint to scrape) and
``--metrics-file PATH`` (the same text, rewritten atomically for node_exporter's textfile
collector).

Nothing is counted for Prometheus: a :class:`Collector` reads the daemon's own state when
someone asks -- :meth:`pyvirtiofsd.stats.Stats.snapshot` (requests, errors, bytes and
latency per opcode), the passthrough store's counts, the DAX window, the request queues --
so a request costs nothing more than ``--stats`` already does.

The sandbox decides the order (see :mod:`pyvirtiofsd.cli`): the TCP socket is bound and
listening before the supervisor forks (the default sandbox gives the daemon a network
namespace of its own, where nothing could be bound that a host could reach); the
``prometheus_client`` modules are imported before the import system is sealed; the file's
directory is made reachable before the old root goes (a bind mount at
:data:`pyvirtiofsd.sandbox.METRICS_DIR` in the namespace sandbox, a directory fd in the
chroot one).  Serving then needs only calls on sockets it already has: the few the
daemon's allow-list lacks are :data:`pyvirtiofsd.seccomp.METRICS_CALLS`, allowed only when
``--metrics-address`` is given.

This module imports ``prometheus_client`` only in :func:`load`: the daemon imports every
module of its own before confinement, and one without a metrics option must not carry it.
"""
from __future__ import annotations

import os
import socket
import threading

from pyvirtiofsd import logs

from .stats import bucket_of, bucket_value

log = logs.get_logger("pyvirtiofsd.metrics")

DEFAULT_FILE_INTERVAL = 10.0
"""How often ``--metrics-file`` is rewritten when ``--stats-interval`` is 0 (seconds)."""

LE_US = tuple(1 << k for k in range(26))
"""The histogram's upper bounds in µs: powers of two from 1 µs to 33.5 s (then +Inf).

The statistics keep latencies in whole µs (rounded down) in log-linear buckets whose
boundaries include every power of two, so the count at each bound is exact: a latency
counted at ``le = 2**k µs`` is below ``2**k`` µs."""

def _startup_error(message: str) -> Exception:
    """:class:`pyvirtiofsd.daemon.StartupError`, imported only to be raised: the socket is
    bound before the fork, in a process that needs nothing else of the daemon yet."""
    from .daemon import StartupError as error
    return error(message)


_Server = None  # http.server.HTTPServer without tracebacks, once load() has run
_prom = None   # the prometheus_client names we use, once load() has imported them


def load() -> None:
    """Import ``prometheus_client`` and everything serving it uses, while the import system
    can still find them (before :func:`pyvirtiofsd.sandbox.confine`)."""
    global _prom, _Server
    if _prom is not None:
        return
    try:
        import gzip  # noqa: F401  (the exposition module compresses when asked to)
        import http.server
        import socketserver  # noqa: F401

        import prometheus_client.core as core
        import prometheus_client.exposition as exposition
        import prometheus_client.openmetrics.exposition  # noqa: F401  (Prometheus asks for it)
        import prometheus_client.registry as registry
    except ImportError as e:
        raise _startup_error(f"metrics need the prometheus_client package: {e}") from None
    _prom = {
        "Counter": core.CounterMetricFamily, "Gauge": core.GaugeMetricFamily,
        "Histogram": core.HistogramMetricFamily, "Registry": registry.CollectorRegistry,
        "generate_latest": exposition.generate_latest, "Handler": exposition.MetricsHandler,
    }

    class Server(http.server.HTTPServer):
        def handle_error(self, request, client_address):
            # A client that went away mid-request: no traceback on stderr (printing one
            # reads source files, which the sandbox does not have).
            log.debug("metrics request failed", client=str(client_address), exc_info=True)

    _Server = Server


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` (port 0: any free port) -> (host, port).
    Raises ValueError with a message for the command line."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not ADDR:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets ([::1]:9101): {text!r}")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"not a port number (0-65535): {port_text!r}")
    return host, int(port_text)


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (the host's network, before the sandbox)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as e:
        raise _startup_error(f"--metrics-address: cannot resolve {host!r}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(16)
    except OSError as e:
        sock.close()
        raise _startup_error(f"--metrics-address: cannot listen on {host}:{port}: "
                           f"{e.strerror}") from None
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Collector:
    """What the daemon holds, read at scrape time.  ``backend``: the
    :class:`~pyvirtiofsd.vhost_user.backend.Backend` of :func:`pyvirtiofsd.api.build_backend`;
    its server's ops recorder must collect statistics."""

    def __init__(self, backend):
        self.backend = backend
        device = backend.device
        server = device.server
        self.stats = server.ops.stats
        self.store = getattr(server.fs, "store", None)
        self.dax = getattr(device, "dax", None)

    def collect(self):
        P = _prom
        requests = P["Counter"]("pyvirtiofsd_requests", "FUSE requests served, by opcode",
                                labels=["opcode"])
        errors = P["Counter"]("pyvirtiofsd_request_errors",
                              "FUSE requests answered with an error, by opcode",
                              labels=["opcode"])
        nbytes = P["Counter"]("pyvirtiofsd_request_bytes",
                              "File and directory data bytes moved by FUSE requests "
                              "(READ, WRITE, READDIR...), by opcode", labels=["opcode"])
        latency = P["Histogram"]("pyvirtiofsd_request_duration_seconds",
                                 "Time from taking a request off its queue to its reply, by "
                                 "opcode (bucket counts exact; the sum is estimated from "
                                 "log-linear buckets, within about 3%)", labels=["opcode"])
        for op, s in sorted(self.stats.snapshot().items()):
            requests.add_metric([op], s.count)
            errors.add_metric([op], s.errors)
            nbytes.add_metric([op], s.bytes)
            buckets, total_us = _cumulative(s.latency.counts)
            latency.add_metric([op], [(f"{le / 1e6:.6f}".rstrip("0"), n) for le, n in buckets]
                               + [("+Inf", s.latency.n)], total_us / 1e6)
        yield from (requests, errors, nbytes, latency)
        dropped = P["Counter"]("pyvirtiofsd_ops_log_dropped_records",
                               "Ops-log records lost because a ring was full")
        dropped.add_metric([], self.stats.dropped_records)
        yield dropped
        inflight = P["Gauge"]("pyvirtiofsd_requests_in_flight",
                              "Requests taken off a request queue and not yet answered",
                              labels=["queue"])
        for vring in self.backend.vrings[1:]:
            if vring.started:
                inflight.add_metric([str(vring.index - 1)], _vq_inflight(vring))
        yield inflight
        if self.store is not None:
            inodes, inode_fds, handles = self.store.counts()
            yield P["Gauge"]("pyvirtiofsd_inodes", "Inodes the guest knows (lookup count > 0)",
                             value=inodes)
            yield P["Gauge"]("pyvirtiofsd_inode_fds", "File descriptors held for inodes",
                             value=inode_fds)
            yield P["Gauge"]("pyvirtiofsd_handles", "Files and directories the guest has open",
                             value=handles)
        if self.dax is not None:
            maps = self.dax.mappings()
            yield P["Gauge"]("pyvirtiofsd_dax_window_bytes", "Size of the DAX cache window",
                             value=self.dax.size)
            yield P["Gauge"]("pyvirtiofsd_dax_mappings", "File ranges mapped in the DAX window",
                             value=len(maps))
            yield P["Gauge"]("pyvirtiofsd_dax_mapped_bytes",
                             "Bytes of the DAX window mapped to files", value=sum(m.length for m in maps))
            counts = dict(self.dax.stats)
            for key, name, what in (("map", "maps", "DAX mappings made"),
                                    ("unmap", "unmaps", "DAX mappings removed"),
                                    ("map_failed", "map_failures",
                                     "DAX mappings the front-end refused")):
                c = P["Counter"](f"pyvirtiofsd_dax_{name}", what)
                c.add_metric([], counts.get(key, 0))
                yield c


def _vq_inflight(vring) -> int:
    from ._cext import lib     # loaded with the daemon (found in sys.modules once sealed)
    return lib.pvfs_vq_inflight(vring.vq)


def _cumulative(counts: dict[int, int]) -> tuple[list[tuple[int, int]], int]:
    """[(le_us, requests below le_us)] for :data:`LE_US`, and the estimated sum in µs."""
    out, seen, total = [], 0, 0
    items = sorted(counts.items())
    i = 0
    for le in LE_US:
        limit = bucket_of(le)          # every bucket below it holds latencies < le
        while i < len(items) and items[i][0] < limit:
            seen += items[i][1]
            i += 1
        out.append((le, seen))
    total = sum(bucket_value(b) * n for b, n in items)
    return out, total


class Metrics:
    """The metrics of one daemon: a registry with a :class:`Collector`, served on ``sock``
    (already listening) from a daemon thread and/or written to ``file_name`` in the
    directory ``dir_fd`` every ``interval`` seconds and at :meth:`stop`."""

    def __init__(self, backend, *, sock: socket.socket | None = None, dir_fd: int | None = None,
                 file_name: str | None = None, interval: float = DEFAULT_FILE_INTERVAL):
        load()
        self.registry = _prom["Registry"](auto_describe=False)
        self.registry.register(Collector(backend))
        self._sock = sock
        self._dir_fd, self._file_name = dir_fd, file_name
        self.interval = interval if interval > 0 else DEFAULT_FILE_INTERVAL
        self._httpd = None
        if sock is not None:   # made now: socket() is not on the seccomp allow-list
            handler = type("Handler", (_prom["Handler"],), {
                "registry": self.registry, "timeout": 10})  # a silent client cannot stall it
            self._httpd = _Server(("", 0), handler, bind_and_activate=False)
            self._httpd.socket.close()                     # the one it made: ours is bound
            self._httpd.socket = sock
            self._httpd.server_address = sock.getsockname()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def text(self) -> bytes:
        return _prom["generate_latest"](self.registry)

    def start(self) -> Metrics:
        if self._httpd is not None:
            self._threads.append(threading.Thread(target=self._serve, name="metrics-http",
                                                  daemon=True))
            log.info("metrics listening", address=address_of(self._sock))
        if self._file_name is not None:
            self.write_file(strict=True)    # a file that cannot be written: a startup error
            self._threads.append(threading.Thread(target=self._write_loop,
                                                  name="metrics-file", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def _serve(self) -> None:
        # One request at a time, looking at the stop flag every half second: unlike
        # serve_forever()/shutdown(), stopping never waits for a client that is slow to
        # send its request (the handler gives it up to its timeout).
        self._httpd.timeout = 0.5
        while not self._stop.is_set():
            try:
                self._httpd.handle_request()
            except Exception:  # noqa: BLE001 - metrics must never end the daemon
                log.error("metrics endpoint failed", exc_info=True)
                self._stop.wait(1.0)

    def _write_loop(self) -> None:
        while not self._stop.wait(self.interval):   # a futex wait, like the stats reporter
            self.write_file()

    def write_file(self, strict: bool = False) -> None:
        """Write the text to a temporary file beside the target, then rename it over the
        target: a reader sees the old text or the new one, never a part.  A failure is
        logged (a full disk must not end the daemon), or raised as a
        :class:`~pyvirtiofsd.daemon.StartupError` when ``strict``."""
        tmp = f".{self._file_name}.{os.getpid()}.tmp"  # the textfile collector reads *.prom only
        try:
            data = self.text()
            # A new file, whatever is in the way (a stale one, or -- should the directory be
            # one a guest can write to -- a symlink, a FIFO or a hard link it planted).
            try:
                os.unlink(tmp, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=self._dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, self._file_name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except Exception as e:  # noqa: BLE001 - a full disk must not end the daemon
            try:
                os.unlink(tmp, dir_fd=self._dir_fd)
            except OSError:
                pass
            if strict:
                raise _startup_error(f"--metrics-file: cannot write {self._file_name}: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
            log.error("cannot write the metrics file", file=self._file_name, error=str(e))

    def stop(self) -> None:
        """Stop serving; write the file one last time."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1)
        if self._httpd is not None and not self._threads[0].is_alive():
            self._httpd.server_close()  # else a slow client holds it: the exit closes it
        if self._file_name is not None:
            self.write_file()


__all__ = ["Collector", "DEFAULT_FILE_INTERVAL", "LE_US", "Metrics", "address_of", "listen_tcp",
           "load", "parse_address"]
