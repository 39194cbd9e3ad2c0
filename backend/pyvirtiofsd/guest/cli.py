"""``pyvirtiofsd-guest``: prepare assets, or boot a guest that runs one command."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from .common import (
    CACHE_ENV, EXIT_NEEDS_ROOT, FLAVORS, FRONTENDS, GuestError, NeedsRoot, _log, cache_dir,
)
from .sid import check_sid_qemu
from .assets import prepare
from .backends import BACKENDS, Backend, backend_command
from .boot import GuestResult, boot


def main(argv: list[str] | None = None, prog: str = "pyvirtiofsd-guest") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=sys.modules[__package__].__doc__.split("\n\n")[0],
        epilog=f"Assets are cached in {cache_dir()} (${CACHE_ENV}, else $XDG_CACHE_HOME/pyvirtiofsd, "
               f"else ~/.cache/pyvirtiofsd).  Nothing runs sudo: a step that needs root stops with "
               f"exit status {EXIT_NEEDS_ROOT} and the command to run as root.")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="download/build the guest assets (idempotent)")
    p.add_argument("--flavor", choices=[*FLAVORS, "all"], default="all")
    r = sub.add_parser("run", help="boot a guest against a back-end and run a command in it",
                       description="Either connect to a running back-end (--socket) or start one "
                                   "(--backend with --shared-dir) for this one guest.")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--socket", help="the vhost-user socket of a running back-end")
    which.add_argument("--backend", choices=BACKENDS, help="start this back-end for the guest")
    r.add_argument("--shared-dir", help="with --backend: the directory to serve")
    r.add_argument("--tag", default="share")
    r.add_argument("--frontend", choices=FRONTENDS, default="qemu72")
    r.add_argument("--flavor", choices=FLAVORS, default="bookworm")
    r.add_argument("--mount-point", default="/mnt", help="an existing directory of the host's / ")
    r.add_argument("--mount-options", default="", help="virtiofs mount options, e.g. dax=always")
    r.add_argument("--smp", type=int, default=2)
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument("command", nargs="+", help="the command (after --) run in the guest by /bin/sh")
    args = parser.parse_args(argv)

    if args.action == "prepare":
        try:
            for flavor in FLAVORS if args.flavor == "all" else (args.flavor,):
                t0 = time.monotonic()
                assets = prepare(flavor)
                print(f"{flavor}: kernel {assets.kernel.version} ({assets.boot_image}), "
                      f"initrd {assets.initrd} [{time.monotonic() - t0:.1f} s]")
            if args.flavor in ("all", "sid"):
                print(f"sid: {check_sid_qemu()}")
        except NeedsRoot as e:
            print(f"[guest] {e}", file=sys.stderr)
            return EXIT_NEEDS_ROOT
        return 0

    if args.backend and not args.shared_dir:
        parser.error("--backend needs --shared-dir")
    command = args.command[0] if len(args.command) == 1 else shlex.join(args.command)
    options = dict(tag=args.tag, frontend=args.frontend, flavor=args.flavor, mount_point=args.mount_point,
                   mount_options=args.mount_options, smp=args.smp, timeout=args.timeout, echo=True)
    try:
        if args.socket:
            result = boot(command, args.socket, **options)
        else:
            result = _run_with_backend(command, args.backend, args.shared_dir, options)
    except NeedsRoot as e:
        print(f"[guest] {e}", file=sys.stderr)
        return EXIT_NEEDS_ROOT
    except (GuestError, RuntimeError) as e:
        print(f"[guest] {e}" if not isinstance(e, GuestError) else f"[guest] {str(e).splitlines()[0]}",
              file=sys.stderr)
        return 125
    print(f"[guest] exit status {result.exit_status}; boot {result.boot_seconds:.1f} s, "
          f"total {result.total_seconds:.1f} s", file=sys.stderr)
    return result.exit_status


def _run_with_backend(command: str, kind: str, shared_dir: str, options: dict) -> GuestResult:
    """``run --backend``: a back-end in a temporary directory, for one guest, then stopped."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pyvirtiofsd-run-") as tmp:
        socket = os.path.join(tmp, "vhost-user.sock")
        tag = options["tag"] if options.get("frontend", "qemu72") == "qemu111" else None
        argv = backend_command(kind, socket, os.path.abspath(shared_dir), tag)
        _log(f"back-end: {shlex.join(argv)}")
        backend = Backend(argv, socket, os.path.join(tmp, "backend.log"))
        with backend:
            result = boot(command, socket, **options)
        status = backend.proc.returncode
        _log(f"back-end stopped (exit status {status}); the end of its log:")
        print("\n".join(backend.log.splitlines()[-8:]), file=sys.stderr)
        return result
