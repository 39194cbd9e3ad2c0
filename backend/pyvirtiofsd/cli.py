"""Command line: virtiofsd's option names where virtiofsd has the option."""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__, virtiofsd_options

CAPABILITIES = {"type": "fs", "features": virtiofsd_options.FEATURES}


class _Formatter(argparse.HelpFormatter):
    """argparse's, sized as shutil.get_terminal_size would (COLUMNS, else the terminal on
    stdout, else 80) without importing shutil -- with bz2, lzma and zlib -- into every
    daemon: argparse makes a formatter for each option it adds, at every start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None):
        if width is None:
            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _page_size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 4096 or value > 65536 or value & (value - 1):
        raise argparse.ArgumentTypeError(
            f"{value} is not a power of two from 4096 to 65536")
    return value


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(num, 0) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0 or value % (2 << 20):
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of 2 MiB")
    return value


def _nonneg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive(text: str) -> int:
    value = _nonneg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds, at least 0")
    return value


def _metrics_address(text: str) -> tuple[str, int]:
    from .metrics import parse_address     # socket parsing only: no prometheus_client yet
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyvirtiofsd", description="virtio-fs vhost-user device backend")
    sock = p.add_argument_group("socket")
    sock.add_argument("--socket-path", metavar="PATH", help="vhost-user socket to listen on")
    sock.add_argument("--fd", type=_nonneg, metavar="FDNUM",
                      help="an already listening socket to accept the front-end on")
    sock.add_argument("--socket-group", metavar="GROUP",
                      help="group owning the socket file (mode 0660)")
    fs = p.add_argument_group("file system")
    fs.add_argument("--shared-dir", metavar="DIR", help="host directory to share")
    fs.add_argument("--tag", help="virtio-fs tag for front-ends that read the config space "
                                  "from the back-end (1-36 bytes)")
    fs.add_argument("--cache", choices=("auto", "always", "never", "metadata"), default="auto",
                    help="guest caching policy (default auto; metadata: cache metadata, "
                         "never file data)")
    fs.add_argument("--readonly", action="store_true", help="refuse every modification")
    fs.add_argument("--xattr", action="store_true", help="serve extended attributes")
    fs.add_argument("--guest-page-size", type=_page_size, default=4096, metavar="BYTES",
                    help="the guest's page size; every st_blksize the guest sees equals it "
                         "(power of two, 4096-65536, default 4096)")
    dax = p.add_argument_group("DAX cache window")
    dax.add_argument("--cache-size", type=_size, default=0, metavar="SIZE",
                     help="size of the DAX cache window (shared-memory region 0), e.g. 1G; a "
                          "multiple of 2 MiB, a power of two for QEMU; 0 (default): no window")
    dax.add_argument("--shmem-bit", type=int, choices=(20, 21, 22), default=22,
                     help="protocol feature bit of VHOST_USER_PROTOCOL_F_SHMEM (22 upstream "
                          "QEMU 11.1 and crosvm; 21 alioth and rust-vmm <= 0.16)")
    dax.add_argument("--dax-protocol", choices=("shmem", "legacy-fs"), default="shmem",
                     help="backend-channel dialect: shmem (SHMEM_MAP/UNMAP) or legacy-fs "
                          "(FS_MAP/FS_UNMAP of the old virtio-fs development branch)")
    dax.add_argument("--dax-inode", choices=("aligned", "never"), default="aligned",
                     help="which files a dax=inode guest maps: regular files whose size is a "
                          "whole number of host pages (default), or none")
    dax.add_argument("--test-host-page-size", type=_page_size, default=None,
                     help=argparse.SUPPRESS)  # tests: pretend the host has 16/64 KiB pages
    dev = p.add_argument_group("device")
    dev.add_argument("--thread-pool-size", type=_nonneg, default=8, metavar="N",
                     help="worker threads for FUSE requests (0: serve on the queue thread)")
    dev.add_argument("--num-request-queues", type=_positive, default=1, metavar="N",
                     help="number of request queues (default 1)")
    out = p.add_argument_group("logging")
    out.add_argument("--log-level", choices=("error", "warn", "info", "debug", "trace", "off"),
                     default="info", help="trace is the same as debug")
    out.add_argument("--log-format", choices=("console", "json"), default="console")
    out.add_argument("--ops-log", metavar="FILE",
                     help="append one JSON line per FUSE request to FILE (costs speed; "
                          "summarize with pyvirtiofsd-ops FILE)")
    out.add_argument("--stats", action="store_true",
                     help="collect per-opcode statistics; SIGUSR1 logs them (costs speed)")
    out.add_argument("--stats-interval", type=_seconds, default=0.0, metavar="SECONDS",
                     help="log per-opcode statistics every SECONDS (default 0: never); "
                          "also how often --metrics-file is rewritten")
    met = p.add_argument_group("Prometheus metrics (collect statistics, as --stats does)")
    met.add_argument("--metrics-address", type=_metrics_address, metavar="ADDR:PORT",
                     help="serve metrics over HTTP for Prometheus to scrape, e.g. "
                          "127.0.0.1:9101 or [::1]:9101 (bound before the sandbox)")
    met.add_argument("--metrics-file", metavar="PATH",
                     help="write the same metrics to PATH (atomically, by rename) every "
                          "--stats-interval seconds (10 when that is 0) and at exit, for "
                          "node_exporter's textfile collector (name it *.prom)")
    compat = p.add_argument_group("virtiofsd's older syntax (what libvirt passes)")
    compat.add_argument("-o", dest="legacy_options", action="append", default=[],
                        metavar="OPT[,OPT...]",
                        help="source=DIR, cache=none|auto|always, xattr, no_xattr, "
                             "sandbox=namespace|chroot, log_level=LEVEL, [no_]writeback, "
                             "[no_]readdirplus, [no_]posix_acl, [no_]security_label, "
                             "[no_]killpriv_v2, [no_]announce_submounts, "
                             "[no_]allow_direct_io, xattrmap=RULES, modcaps=CAPS, debug, "
                             "no_flock, no_posix_lock (flock/posix_lock: refused)")
    compat.add_argument("-d", dest="legacy_debug", action="store_true",
                        help="the same as --log-level debug")
    sec = p.add_argument_group("sandbox (see SECURITY.md)")
    sec.add_argument("--sandbox", choices=("namespace", "chroot", "none"), default="namespace",
                     help="confine the daemon: new mount/pid/net namespaces with only the "
                          "shared dir and its own /proc (default), chroot into the shared "
                          "dir, or nothing")
    sec.add_argument("--seccomp", choices=("none", "kill", "log", "trap"), default="kill",
                     help="system calls outside the daemon's allow-list: kill the daemon "
                          "(default), log them, trap (print the call, then die), or allow all")
    sec.add_argument("--modcaps", metavar="+CAP:-CAP",
                     help="capabilities to add to or remove from the kept set (chown, "
                          "dac_override, fowner, fsetid, setgid, setuid, mknod, setfcap), "
                          "e.g. +sys_admin:-mknod")
    sec.add_argument("--rlimit-nofile", type=_nonneg, default=None, metavar="N",
                     help="open-file limit (default min(1000000, /proc/sys/fs/nr_open); "
                          "0: leave it alone)")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user capabilities JSON and exit")
    virtiofsd_options.add_arguments(p)
    p.add_argument("-V", "--version", action="version", version=f"pyvirtiofsd {__version__}")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.print_capabilities:
        return args
    _apply_legacy_options(p, args)
    if (args.socket_path is None) == (args.fd is None):
        p.error("exactly one of --socket-path and --fd is required")
    if args.shared_dir is None:
        p.error("--shared-dir is required")
    if not os.path.isdir(args.shared_dir):
        p.error(f"shared directory {args.shared_dir!r} does not exist or is not a directory")
    if args.tag is not None and not 1 <= len(args.tag.encode()) <= 36:
        p.error("--tag must be 1 to 36 bytes")
    if args.modcaps is not None:
        from .caps import parse_modcaps
        try:
            parse_modcaps(args.modcaps)
        except ValueError as e:
            p.error(f"--modcaps: {e}")
    if args.metrics_file is not None:
        parent = os.path.dirname(os.path.abspath(args.metrics_file))
        if not os.path.isdir(parent) or os.path.basename(args.metrics_file) in ("", ".", ".."):
            p.error(f"--metrics-file: {args.metrics_file!r} is not a file in an existing "
                    "directory")
    if args.log_level == "trace":
        args.log_level = "debug"
    virtiofsd_options.validate(p, args)
    return args


_LEGACY_CACHE = {"none": "never", "never": "never", "auto": "auto", "always": "always"}
_LEGACY_LOG = {"err": "error", "warn": "warn", "info": "info", "debug": "debug"}


def _split_legacy(text: str) -> list[str]:
    """``-o`` items: commas separate, a doubled comma is a comma (libvirt escapes paths so)."""
    items, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    return [item for item in [*items, cur] if item]


def _apply_legacy_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold virtiofsd's ``-o source=DIR,cache=...,xattr`` and ``-d`` into the options.

    libvirt starts the ``<binary>`` of a virtiofs ``<filesystem>`` as
    ``BINARY --fd=N -o source=DIR[,cache=MODE][,sandbox=MODE][,xattr] [--thread-pool-size=N]``,
    the C virtiofsd's syntax; this lets pyvirtiofsd be that binary."""
    if args.legacy_debug:
        args.log_level = "debug"
    for group in args.legacy_options:
        for item in _split_legacy(group):
            key, has_value, value = item.partition("=")
            if key == "source" and has_value:
                if args.shared_dir is not None and args.shared_dir != value:
                    p.error("-o source= and --shared-dir name different directories")
                args.shared_dir = value
            elif key == "cache" and value in _LEGACY_CACHE:
                args.cache = _LEGACY_CACHE[value]
            elif key in ("xattr", "no_xattr") and not has_value:
                args.xattr = key == "xattr"
            elif key == "sandbox" and value in ("namespace", "chroot"):
                if hasattr(args, "sandbox"):
                    args.sandbox = value
            elif key == "log_level" and value in _LEGACY_LOG:
                args.log_level = _LEGACY_LOG[value]
            else:
                why = virtiofsd_options.apply_legacy(key, has_value, value, args)
                if why == "unknown":
                    p.error(f"-o {item}: not an option pyvirtiofsd understands")
                elif why is not None:
                    p.error(why)


def build_backend(args: argparse.Namespace, proc_self_fd: str = "/proc/self/fd"):
    """The object graph a daemon runs: passthrough file system, FUSE server, virtio-fs
    device, vhost-user back-end (:func:`pyvirtiofsd.api.build_backend`, which
    ``pyvirtiofsd.serve`` uses too)."""
    from .api import build_backend as build
    from .passthrough import PassthroughFs
    from .server import ServerOptions

    from .daemon import StartupError

    try:
        fs = PassthroughFs(args.shared_dir, readonly=args.readonly, xattr=args.xattr,
                           proc_self_fd=proc_self_fd, **virtiofsd_options.fs_options(args))
    except OSError as e:
        raise StartupError(f"cannot serve {args.shared_dir}: {e.strerror}") from None
    dax = None
    if args.cache_size:
        from .dax import DaxWindow

        dax = DaxWindow(fs, args.cache_size, page_size=args.test_host_page_size,
                        inode_policy=args.dax_inode)
    options = ServerOptions(guest_page_size=args.guest_page_size, readonly=args.readonly,
                            xattr=args.xattr, cache=args.cache,
                            map_alignment=dax.map_alignment if dax else None,
                            **virtiofsd_options.server_options(args))
    return build(fs, options, tag=args.tag, num_request_queues=args.num_request_queues,
                 thread_pool_size=args.thread_pool_size, ops_log=args.ops_log,
                 stats=(args.stats or args.stats_interval > 0 or args.metrics_address is not None
                        or args.metrics_file is not None), dax=dax,
                 shmem_bit_number=args.shmem_bit, dax_protocol=args.dax_protocol,
                 migration=virtiofsd_options.migration_options(args))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_capabilities:
        import json

        print(json.dumps(CAPABILITIES, indent=2))
        return 0
    from . import logs, startup

    args.syslog_fd = None
    stream = None
    if args.syslog:
        try:
            stream = virtiofsd_options.SyslogStream(
                os.environ.get("PYVIRTIOFSD_SYSLOG_SOCKET", "/dev/log"))   # tests: elsewhere
        except OSError as e:
            print(f"pyvirtiofsd: error: {e.strerror}", file=sys.stderr)
            return 1
        args.syslog_fd = stream.fileno()
    logs.configure(args.log_level, args.log_format, stream=stream)
    try:
        return _start(args)
    except startup.StartupError as e:
        print(f"pyvirtiofsd: error: {e}", file=sys.stderr)
        return 1


def _start(args: argparse.Namespace) -> int:
    """Bind the socket, confine the daemon, serve.  The order is the sandbox's: the socket
    lives outside the shared dir, so it is bound first; the supervisor fork needs a single
    thread, so it comes before anything starts one; the open-file limit and the sandbox
    need capabilities that are dropped next; the filter goes on last, before any front-end
    message is read.  See :mod:`pyvirtiofsd.sandbox`."""
    from . import logs, startup

    startup.hold_signals()
    listener = None
    if args.socket_path is not None:
        listener = startup.listen_unix(args.socket_path, args.socket_group)

    def remove_socket() -> None:
        if listener is not None:
            try:
                os.unlink(args.socket_path)
            except FileNotFoundError:
                pass

    metrics_sock = None
    try:
        # Listening: a VMM may start now (its front-end waits in the backlog) while the
        # rest of the daemon is imported.
        from . import api, caps, limits, sandbox, seccomp

        if args.metrics_address is not None:
            # Bound here, in the host's network namespace, before the sandbox gives the
            # daemon one of its own; the supervisor closes its copy.
            from .metrics import listen_tcp
            metrics_sock = listen_tcp(*args.metrics_address)
        limits.set_nofile(args.rlimit_nofile)
        child = sandbox.spawn(args.sandbox, args.seccomp, uid_map=args.ns_uid_map,
                              gid_map=args.ns_gid_map)
    except BaseException:
        remove_socket()
        raise
    if child:
        if listener is not None:
            listener.close()
        if metrics_sock is not None:
            metrics_sock.close()
        # The supervisor: a small C program from here on.
        return sandbox.supervise(child, args.seccomp,
                                 args.socket_path if listener is not None else None,
                                 args.syslog_fd)
    # The daemon (a child of the supervisor unless --sandbox none).  Only the supervisor
    # may remove the socket: after confinement its path means something else, or nothing.
    try:
        ops_fd = None
        if args.ops_log is not None and args.sandbox != "none":
            # Opened while its path still resolves; reopened through /proc/self/fd inside.
            try:
                ops_fd = os.open(args.ops_log,
                                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise startup.StartupError(f"cannot open the ops log {args.ops_log}: "
                                          f"{e.strerror}") from None
        metrics_dir_fd = metrics_name = None
        binds = {}
        if metrics_sock is not None or args.metrics_file is not None:
            from . import metrics as metrics_mod
            metrics_mod.load()          # imported while the import system still finds it
        if args.metrics_file is not None:
            metrics_dir = os.path.dirname(os.path.abspath(args.metrics_file))
            metrics_name = os.path.basename(args.metrics_file)
            if args.sandbox == "namespace":   # its directory, bind-mounted into the sandbox
                binds[sandbox.METRICS_DIR] = metrics_dir
            else:   # a directory fd: chroot confines less than a bind mount would, but a
                    # taken-over daemon can walk out of it anyway (see sandbox.py)
                try:
                    metrics_dir_fd = os.open(metrics_dir,
                                             os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    raise startup.StartupError(f"--metrics-file: {metrics_dir}: "
                                              f"{e.strerror}") from None
        fd = args.fd if listener is None else listener.fileno()
        args.shared_dir, proc_self_fd = sandbox.confine(
            args.sandbox, args.shared_dir, binds=binds,
            keep_fds=(fd, ops_fd, args.syslog_fd, metrics_dir_fd,
                      metrics_sock.fileno() if metrics_sock is not None else None))
        if binds:
            metrics_dir_fd = os.open(sandbox.METRICS_DIR,
                                     os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if ops_fd is not None:
            args.ops_log = os.path.join(proc_self_fd, str(ops_fd))
        modcaps = ":".join(m for m in (virtiofsd_options.extra_capabilities(args),
                                       args.modcaps) if m)
        kept = caps.apply(caps.wanted(modcaps or None))
        backend = build_backend(args, proc_self_fd)
        metrics = None
        if metrics_sock is not None or metrics_name is not None:
            metrics = metrics_mod.Metrics(backend, sock=metrics_sock, dir_fd=metrics_dir_fd,
                                          file_name=metrics_name, interval=args.stats_interval)
        # Calls only an option needs are off without it, even once scripts/gen-seccomp.py,
        # tracing the tests that use the option, has put them on the traced list.
        without = set()
        if (args.inode_file_handles == "never" and args.migration_mode != "file-handles"
                and not args.migration_verify_handles):
            without |= seccomp.FILE_HANDLE_CALLS     # migration's handles need them too
        if metrics_sock is None:
            without |= seccomp.METRICS_CALLS
        sandbox.release_startup_memory()
        seccomp.install(args.seccomp, allowed=seccomp.ALLOWED | seccomp.METRICS_CALLS,
                        without=without)
        logs.get_logger("pyvirtiofsd").info(
            "sandbox", mode=args.sandbox, seccomp=args.seccomp, caps=",".join(sorted(kept)))
        if metrics is not None:
            metrics.start()
        try:
            return api.run(backend, fd=fd, stats_interval=args.stats_interval,
                           on_listening=sandbox.ready)
        finally:
            if metrics is not None:
                metrics.stop()
    finally:
        if args.sandbox == "none":
            remove_socket()


if __name__ == "__main__":
    sys.exit(main())
