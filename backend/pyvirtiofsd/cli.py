"""Command line: virtiofsd's option names where virtiofsd has the option."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__

CAPABILITIES = {"type": "fs", "features": ["separate-options"]}


class _Parser(argparse.ArgumentParser):
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
    fs.add_argument("--cache", choices=("auto", "always", "never"), default="auto",
                    help="guest caching policy (default auto)")
    fs.add_argument("--readonly", action="store_true", help="refuse every modification")
    fs.add_argument("--xattr", action="store_true", help="serve extended attributes")
    fs.add_argument("--guest-page-size", type=_page_size, default=4096, metavar="BYTES",
                    help="the guest's page size; every st_blksize the guest sees equals it "
                         "(power of two, 4096-65536, default 4096)")
    dev = p.add_argument_group("device")
    dev.add_argument("--thread-pool-size", type=_nonneg, default=8, metavar="N",
                     help="worker threads for FUSE requests (0: serve on the queue thread)")
    dev.add_argument("--num-request-queues", type=_positive, default=1, metavar="N",
                     help="number of request queues (default 1)")
    out = p.add_argument_group("logging")
    out.add_argument("--log-level", choices=("error", "warn", "info", "debug", "off"), default="info")
    out.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user capabilities JSON and exit")
    p.add_argument("-V", "--version", action="version", version=f"pyvirtiofsd {__version__}")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.print_capabilities:
        return args
    if (args.socket_path is None) == (args.fd is None):
        p.error("exactly one of --socket-path and --fd is required")
    if args.shared_dir is None:
        p.error("--shared-dir is required")
    if not os.path.isdir(args.shared_dir):
        p.error(f"shared directory {args.shared_dir!r} does not exist or is not a directory")
    if args.tag is not None and not 1 <= len(args.tag.encode()) <= 36:
        p.error("--tag must be 1 to 36 bytes")
    return args


def build_backend(args: argparse.Namespace):
    """The object graph a daemon runs: passthrough file system, FUSE server, virtio-fs
    device, vhost-user back-end."""
    from .passthrough import PassthroughFs
    from .server import Server, ServerOptions
    from .vhost_user.backend import Backend
    from .virtiofs import VirtioFsDevice

    options = ServerOptions(guest_page_size=args.guest_page_size, readonly=args.readonly,
                            xattr=args.xattr, cache=args.cache)
    fs = PassthroughFs(args.shared_dir, readonly=args.readonly, xattr=args.xattr)
    server = Server(fs, options)
    device = VirtioFsDevice(server, tag=args.tag, num_request_queues=args.num_request_queues,
                            thread_pool_size=args.thread_pool_size)
    return Backend(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES))
        return 0
    from . import daemon, logs

    logs.configure(args.log_level, args.log_format)
    try:
        backend = build_backend(args)
        return daemon.run(backend, socket_path=args.socket_path, listen_fd=args.fd,
                          socket_group=args.socket_group)
    except daemon.StartupError as e:
        print(f"pyvirtiofsd: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
