"""The Rust virtiofsd's options that are not plain daemon plumbing: what the guest sees.

Why a module of its own: people start virtiofsd from libvirt, Kata, podman and kernel
test scripts; pointing those at pyvirtiofsd must change nothing else.  Every virtiofsd
option is either accepted here with virtiofsd's meaning or refused at once with a one-line
error naming it -- never parsed and silently ignored.  :mod:`pyvirtiofsd.cli` adds these
arguments to its parser and builds the file system and server from them
(:func:`fs_options`, :func:`server_options`); ``-o`` (the C virtiofsd's spelling) reaches
the same settings through :func:`apply_legacy`.
"""
from __future__ import annotations

import argparse
import os
import re
import socket

# The command line is parsed before the daemon's modules are imported (the socket listens
# first: see pyvirtiofsd.startup): what the options are checked against is imported only
# for an option given, and the two lists of names are spelled here (a test holds them equal
# to server.NEGOTIATION and passthrough.file_handle.MODES).
NEGOTIATION = ("never", "auto", "always")
FILE_HANDLE_MODES = ("never", "prefer", "mandatory")

FEATURES = ["migrate-precopy", "posix-acl-negotiation-mode", "security-label-negotiation-mode",
            "separate-options"]
"""What ``--print-capabilities`` announces (vhost-user.json ``features``): the two
negotiation modes say ``--posix-acl``/``--security-label`` take ``=never|auto|always``;
``migrate-precopy`` says a guest can be live-migrated (the device state moves with
DEVICE_STATE and the --migration-* options, guest memory with the dirty log), which
tests/e2e/test_migration_guest.py checks between two QEMU 11.1 instances."""

MIGRATION_MODES = ("find-paths", "file-handles")     # pyvirtiofsd.migration.state.MODES
MIGRATION_ON_ERROR = ("abort", "guest-error")

UNSUPPORTED: dict[str, str] = {}
_TAKES_NO_VALUE: set[str] = set()


class _Unsupported(argparse.Action):
    """An option virtiofsd has and pyvirtiofsd does not: refuse it by name."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported: {UNSUPPORTED[option_string]}")


def _negotiation(text: str) -> str:
    if text not in NEGOTIATION:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(NEGOTIATION)}")
    return text


def _id_mapping(text: str):
    from .userns import IdMapping

    try:
        return IdMapping.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _one_of(choices: tuple[str, ...]):
    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}")
        return text
    return check


def _file_handles(text: str) -> str:
    text = "prefer" if text == "fallback" else text   # virtiofsd's deprecated alias
    if text not in FILE_HANDLE_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(FILE_HANDLE_MODES)}")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("virtiofsd compatibility (same names and meanings)")
    g.add_argument("--socket", dest="socket_path", metavar="PATH",
                   help="deprecated spelling of --socket-path")
    g.add_argument("--posix-acl", nargs="?", const="always", default="never",
                   type=_negotiation, metavar="never|auto|always",
                   help="POSIX ACLs enforced by the guest, stored as system.posix_acl_* "
                        "(implies --xattr); auto: if the guest can, always (the bare "
                        "option): a guest that cannot does not mount")
    g.add_argument("--security-label", nargs="?", const="always", default="never",
                   type=_negotiation, metavar="never|auto|always",
                   help="store the security label a guest sends with each create "
                        "(FUSE_SECURITY_CTX; implies --xattr)")
    g.add_argument("--xattrmap", metavar="RULES",
                   help="rename xattrs between guest and host, e.g. :map::user.virtiofs.: "
                        "(virtiofsd's rule syntax; implies --xattr)")
    g.add_argument("--announce-submounts", dest="announce_submounts", action="store_true",
                   default=True, help="tell the guest which directories are mount points, "
                                      "so they get their own st_dev (default)")
    g.add_argument("--no-announce-submounts", dest="announce_submounts",
                   action="store_false", help="do not")
    g.add_argument("--inode-file-handles", type=_file_handles, default="prefer",
                   metavar="never|prefer|mandatory",
                   help="keep file handles instead of an O_PATH fd per inode the guest "
                        "knows (keeps CAP_DAC_READ_SEARCH); default prefer, as virtiofsd: "
                        "handles where the capability and the file system allow, else fds")
    g.add_argument("--allow-mmap", action="store_true",
                   help="with --cache=never|metadata, still allow shared mmap in the guest")
    g.add_argument("--no-readdirplus", dest="readdirplus", action="store_false",
                   default=None, help="disable READDIRPLUS")
    g.add_argument("--writeback", action="store_true", help="enable the guest's writeback cache")
    g.add_argument("--allow-direct-io", action="store_true",
                   help="honour O_DIRECT from guest applications (dropped by default)")
    g.add_argument("--killpriv-v2", dest="killpriv_v2", action="store_true", default=False,
                   help="let the guest leave clearing setuid/setgid on write, truncate and "
                        "chown to the daemon (HANDLE_KILLPRIV_V2)")
    g.add_argument("--no-killpriv-v2", dest="killpriv_v2", action="store_false",
                   help="do not (default)")
    g.add_argument("--translate-uid", action="append", default=[], metavar="TYPE:...",
                   help="translate uids: guest|host|map|squash-guest|squash-host:FROM:TO:"
                        "COUNT or forbid-guest:FROM:COUNT (repeatable)")
    g.add_argument("--translate-gid", action="append", default=[], metavar="TYPE:...",
                   help="the same for gids")
    for kind in ("uid", "gid"):
        g.add_argument(f"--{kind}-map", dest=f"ns_{kind}_map", type=_id_mapping,
                       metavar=":namespace_id:host_id:count:",
                       help=f"the {kind}s of the sandbox's user namespace (--sandbox "
                            f"namespace; default: the caller's own {kind} as 0 when not "
                            f"root). Other ids than the caller's own go through new{kind}map "
                            f"and /etc/sub{kind}")
    g.add_argument("--preserve-noatime", action="store_true",
                   help="pass O_NOATIME through (dropped by default)")
    g.add_argument("--syslog", action="store_true",
                   help="log to syslog (/dev/log, facility daemon) instead of stderr")
    g.add_argument("--migration-mode", type=_one_of(MIGRATION_MODES), default="find-paths",
                   metavar="find-paths|file-handles",
                   help="live migration: how the destination finds the guest's files again -- "
                        "by their paths in the shared directory (default) or by file handles "
                        "(the destination needs CAP_DAC_READ_SEARCH)")
    g.add_argument("--migration-on-error", type=_one_of(MIGRATION_ON_ERROR), default="abort",
                   metavar="abort|guest-error",
                   help="live migration, on the destination: a file that cannot be found "
                        "again fails the migration (abort, default) or answers the guest EIO "
                        "(guest-error)")
    g.add_argument("--migration-verify-handles", action="store_true",
                   help="live migration with find-paths: also send file handles, and check "
                        "the destination opened the same files")
    g.add_argument("--migration-confirm-paths", action="store_true",
                   help="live migration with find-paths: the source checks each path still "
                        "leads to the same file before sending it")
    g.add_argument("-f", dest="legacy_foreground", action="store_true",
                   help=argparse.SUPPRESS)   # virtiofsd: "compatibility option, no effect"
    for name, why in UNSUPPORTED.items():
        g.add_argument(name, action=_Unsupported,
                       nargs=0 if name in _TAKES_NO_VALUE else None, help=argparse.SUPPRESS)


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check and complete what the options ask for (``p.error`` on a bad combination)."""
    if args.posix_acl != "never" or args.security_label != "never" or args.xattrmap:
        args.xattr = True          # as virtiofsd: these imply --xattr
    args.xattrmap_obj = None
    if args.xattrmap is not None:
        from .passthrough.xattrmap import XattrMap, XattrMapError

        try:
            args.xattrmap_obj = XattrMap(args.xattrmap)
        except XattrMapError as e:
            p.error(f"--xattrmap: {e}")
    args.uid_map = args.gid_map = None
    if args.translate_uid or args.translate_gid:
        from .passthrough.idmap import IdMap, IdMapError

        try:
            args.uid_map = IdMap(args.translate_uid, "uid") if args.translate_uid else None
            args.gid_map = IdMap(args.translate_gid, "gid") if args.translate_gid else None
        except IdMapError as e:
            p.error(f"--translate-uid/--translate-gid: {e}")
    if (args.ns_uid_map or args.ns_gid_map) and args.sandbox != "namespace":
        p.error("--uid-map/--gid-map map the ids of the sandbox's user namespace: they need "
                "--sandbox namespace")
    if args.posix_acl != "never" and (args.uid_map or args.gid_map):
        p.error("--posix-acl cannot be combined with --translate-uid/--translate-gid "
                "(ids inside ACLs would not be translated)")


def extra_capabilities(args: argparse.Namespace) -> str:
    """``--modcaps`` additions the options need: opening file handles needs
    CAP_DAC_READ_SEARCH (virtiofsd keeps it for the same reason)."""
    handles = args.inode_file_handles != "never" or args.migration_mode == "file-handles"
    return "+dac_read_search" if handles else ""


def fs_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for :class:`~pyvirtiofsd.passthrough.PassthroughFs`.  With file
    handles, the fds kept open for the inodes used last are at most an eighth of the
    open-file limit (set by now) and at most 1024, so they never crowd out the fds that
    requests need."""
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    idle = 1024 if soft == resource.RLIM_INFINITY else min(1024, soft // 8)
    return dict(allow_direct_io=args.allow_direct_io, xattrmap=args.xattrmap_obj,
                inode_file_handles=args.inode_file_handles, handle_fd_cache=idle,
                preserve_noatime=args.preserve_noatime)


def migration_options(args: argparse.Namespace) -> dict:
    """The device's ``migration`` (pyvirtiofsd.migration.MigrationOptions' fields)."""
    return dict(mode=args.migration_mode, on_error=args.migration_on_error,
                verify_handles=args.migration_verify_handles,
                confirm_paths=args.migration_confirm_paths)


def server_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for :class:`~pyvirtiofsd.server.ServerOptions`."""
    return dict(writeback=args.writeback, readdirplus=args.readdirplus,
                allow_mmap=args.allow_mmap, posix_acl=args.posix_acl,
                security_label=args.security_label,
                announce_submounts=args.announce_submounts, killpriv_v2=args.killpriv_v2,
                uid_map=args.uid_map, gid_map=args.gid_map)


class SyslogStream:
    """A write-only stream that sends each log line to syslog as one datagram.

    Why not :mod:`syslog` or ``logging.handlers.SysLogHandler``: both reconnect with a new
    socket() after an error, a call the daemon's seccomp filter kills it for.  This one
    connects once, before the sandbox (keep :meth:`fileno` open across it), and drops a
    line it cannot send.  Severity comes from the rendered line's level."""

    FACILITY_DAEMON = 3
    _SEVERITY = {"critical": 2, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}
    _LEVEL = re.compile(r'\[(\w+)\s*\]|"level": "(\w+)"')

    def __init__(self, path: str = "/dev/log", ident: str = "pyvirtiofsd"):
        self.ident = ident
        self._buf = ""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise OSError(e.errno, f"--syslog: cannot reach {path}: {e.strerror}") from None

    def fileno(self) -> int:
        return self._sock.fileno()

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line:
                self._send(line)
        return len(text)

    def flush(self) -> None:
        pass

    def _send(self, line: str) -> None:
        m = self._LEVEL.search(line)
        level = (m.group(1) or m.group(2)).lower() if m else "info"
        pri = self.FACILITY_DAEMON * 8 + self._SEVERITY.get(level, 6)
        try:
            self._sock.send(f"<{pri}>{self.ident}[{os.getpid()}]: {line}".encode(
                errors="replace")[:8192])
        except OSError:
            pass     # syslog gone or full: never block or kill the daemon over a log line


_LEGACY_SWITCHES = {
    # -o NAME / -o no_NAME (the C virtiofsd) → attribute, value when on, value when off
    "writeback": ("writeback", True, False),
    "readdirplus": ("readdirplus", None, False),
    "posix_acl": ("posix_acl", "always", "never"),
    "security_label": ("security_label", "always", "never"),
    "killpriv_v2": ("killpriv_v2", True, False),
    "announce_submounts": ("announce_submounts", True, False),
    "allow_direct_io": ("allow_direct_io", True, False),
}
_LEGACY_LOCKS = {"flock": "flock", "posix_lock": "POSIX"}


def apply_legacy(key: str, has_value: bool, value: str, args: argparse.Namespace) -> str | None:
    """One ``-o`` item beyond the basics cli.py handles.  Returns None when applied, an
    error message when refused, ``"unknown"`` when it is not an option we know."""
    base = key[3:] if key.startswith("no_") else key
    if base in _LEGACY_SWITCHES and not has_value:
        attr, on, off = _LEGACY_SWITCHES[base]
        setattr(args, attr, off if key.startswith("no_") else on)
        return None
    if base in _LEGACY_LOCKS and not has_value:
        if key.startswith("no_"):
            return None              # what we do anyway: locks stay inside the guest
        return (f"-o {key}: remote {_LEGACY_LOCKS[base]} locks are not supported (the "
                "guest's locks are local to it; drop the option or use no_" + key + ")")
    if key == "xattrmap" and has_value:
        args.xattrmap = value
        return None
    if key == "modcaps" and has_value:
        args.modcaps = value
        return None
    if key == "debug" and not has_value:
        args.log_level = "debug"
        return None
    return "unknown"


__all__ = ["FEATURES", "add_arguments", "apply_legacy", "extra_capabilities", "fs_options",
           "server_options", "validate"]
