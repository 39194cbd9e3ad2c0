"""Capabilities: keep only what serving files needs (virtiofsd's ``--modcaps``).

A daemon running as root would otherwise hold every capability -- CAP_SYS_ADMIN (mount,
namespaces), CAP_SYS_MODULE, CAP_SYS_PTRACE... -- all useless for serving files and all a
gift to whoever takes the daemon over.  The default set is virtiofsd's, and each member is
used by the passthrough file system:

* ``chown``: SETATTR uid/gid, and files a guest user creates owned by that user;
* ``dac_override``: act for the guest's root on files the host mode bits would refuse;
* ``fowner``: chmod/utimes/xattrs on files the daemon does not own;
* ``fsetid``: keep set-group-ID bits through chmod and writes, as the guest asked;
* ``setuid``, ``setgid``: setfsuid/setfsgid to create files as the guest's caller;
* ``mknod``: MKNOD of device nodes;
* ``setfcap``: writing ``security.capability`` xattrs.

``--modcaps=+sys_admin:-mknod`` adds or removes names from that set (``cap_`` prefixes and
upper case are accepted).  Capabilities are per thread: :func:`apply` must run while the
process has a single thread, so every thread started afterwards inherits the reduced set.
"""
from __future__ import annotations

import os
import threading

from pyvirtiofsd import logs

from ._cext import ffi, lib
from .daemon import StartupError

log = logs.get_logger("pyvirtiofsd.caps")

# Capability numbers are the index in this tuple (<linux/capability.h>).
NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin",
    "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
    "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
    "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore",
)
NUMBERS = {name: number for number, name in enumerate(NAMES)}

DEFAULT = frozenset({"chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod",
                     "setfcap"})


class CapsError(StartupError):
    """The capability set cannot be applied (the message says why)."""


def _name(text: str) -> str:
    name = text.strip().lower()
    if name.startswith("cap_"):
        name = name[4:]
    if name not in NUMBERS:
        raise ValueError(f"unknown capability {text!r}")
    return name


def parse_modcaps(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """``+a:-b:+c`` -> (added, removed).  ValueError on anything else."""
    added: set[str] = set()
    removed: set[str] = set()
    for item in text.split(":"):
        if len(item) < 2 or item[0] not in "+-":
            raise ValueError(f"expected +name or -name, got {item!r}")
        (added if item[0] == "+" else removed).add(_name(item[1:]))
    both = added & removed
    if both:
        raise ValueError(f"both added and removed: {', '.join(sorted(both))}")
    return frozenset(added), frozenset(removed)


def wanted(modcaps: str | None) -> frozenset[str]:
    """The capability set ``--modcaps`` asks for (the default set when None)."""
    if not modcaps:
        return DEFAULT
    try:
        added, removed = parse_modcaps(modcaps)
    except ValueError as e:
        raise CapsError(f"--modcaps: {e}") from None
    return (DEFAULT | added) - removed


def mask(names) -> int:
    return sum(1 << NUMBERS[n] for n in names)


def names_of(bits: int) -> frozenset[str]:
    return frozenset(n for i, n in enumerate(NAMES) if bits >> i & 1)


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(NAMES) - 1


def current() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread, as bit masks."""
    out = ffi.new("uint64_t[3]")
    rc = lib.pvfs_sb_capget(out, out + 1, out + 2)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc), "capget")
    return out[0], out[1], out[2]


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # a chroot without /proc
        return threading.active_count()


def apply(keep: frozenset[str]) -> frozenset[str]:
    """Reduce the process to ``keep``: effective = permitted = ``keep``, inheritable and
    ambient empty, and the bounding set cut down too, so nothing exec'd later regains more.
    Returns the set now held (``keep`` minus what the process never had, which is only
    allowed for the default set: a non-root daemon has nothing to drop)."""
    if _threads() != 1:
        raise CapsError("capabilities must be dropped before any thread starts "
                        f"({_threads()} threads running)")
    _eff, perm, _inh = current()
    missing = keep - names_of(perm)
    if missing and keep != DEFAULT:
        raise CapsError(f"cannot keep {', '.join('CAP_' + m.upper() for m in sorted(missing))}: "
                        "the daemon does not have it")
    held = mask(keep) & perm
    setpcap = bool(perm >> NUMBERS["setpcap"] & 1)
    for cap in range(last_cap() + 1):
        if held >> cap & 1 or lib.pvfs_sb_capbset_read(cap) != 1:
            continue
        rc = lib.pvfs_sb_capbset_drop(cap)
        if rc < 0 and setpcap:  # without CAP_SETPCAP the bounding set cannot shrink
            raise CapsError(f"cannot drop capability {cap} from the bounding set: "
                            f"{os.strerror(-rc)}")
    rc = lib.pvfs_sb_ambient_clear()
    if rc < 0:
        raise CapsError(f"cannot clear the ambient capabilities: {os.strerror(-rc)}")
    rc = lib.pvfs_sb_capset(held, held, 0)
    if rc < 0:
        raise CapsError(f"capset: {os.strerror(-rc)}")
    now = names_of(held)
    log.debug("capabilities", kept=sorted(now))
    return now
