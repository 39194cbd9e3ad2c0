"""Constants, errors, the cache directory and the host-command helpers every part uses."""

from __future__ import annotations

import importlib.resources
import os
import shlex
import subprocess
import sys
from pathlib import Path


CACHE_ENV = "PYVIRTIOFSD_CACHE"
EXIT_NEEDS_ROOT = 77  # sysexits.h EX_NOPERM: the CLI's status when a step needs root
HOST_QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: no shared libraries needed in the initramfs

FLAVORS = ("bookworm", "sid")
FRONTENDS = ("qemu72", "qemu111")

# basic.cfg fixes RAM at 1 GiB (QEMU 7.2 cannot -set an [object]); both front-ends use the same.
GUEST_RAM = "1G"
# The kernel command line is at most 2048 bytes on x86; the command travels in it base64-encoded.
MAX_CMDLINE = 2048

START_MARKER = "PVFS-GUEST-START"
EXIT_MARKER = "PVFS-GUEST-EXIT"
ERROR_MARKER = "PVFS-GUEST-ERROR"

# What the guest needs beyond a Debian kernel's built-ins: the virtio PCI transport, virtio-fs (pulls
# fuse) and 9p over virtio (pulls 9pnet, netfs). Dependencies are added from each module's modinfo.
WANTED_MODULES = ("virtio_pci", "virtiofs", "9pnet_virtio", "9p")

SID_PACKAGES = "qemu-system-x86,virtiofsd,linux-image-amd64"
SID_MIRROR = "http://deb.debian.org/debian"
SID_COMPLETE = ".pyvirtiofsd-complete"


class GuestError(RuntimeError):
    """The guest did not run the command to the end. ``console`` holds everything QEMU printed."""

    def __init__(self, message: str, console: str = ""):
        tail = "\n".join(console.splitlines()[-40:])
        super().__init__(f"{message}\n--- console (last lines) ---\n{tail}" if console else message)
        self.console = console


class GuestTimeout(GuestError):
    """The guest ran past its timeout; QEMU was killed."""


class NeedsRoot(RuntimeError):
    """A preparation step needs root and we are not root: the message says what for and which
    command to run (this tool never runs ``sudo`` itself)."""


def cache_dir() -> Path:
    """Where prepared assets live, read at every call (so a test or script may set it late):
    ``$PYVIRTIOFSD_CACHE``, else ``$XDG_CACHE_HOME/pyvirtiofsd``, else ``~/.cache/pyvirtiofsd``
    (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec says)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "pyvirtiofsd"


def sid_dir() -> Path:
    return cache_dir() / "sid"


# The -readconfig file of the qemu72 front-end: package data (see :func:`basic_cfg`).
BASIC_CFG = importlib.resources.files(__package__) / "basic.cfg"


def basic_cfg() -> Path:
    """:data:`BASIC_CFG`, checked: QEMU needs a file it can open."""
    if not isinstance(BASIC_CFG, Path) or not BASIC_CFG.is_file():
        raise RuntimeError(f"{BASIC_CFG}: the package's basic.cfg is missing or not a plain file")
    return BASIC_CFG


def _require_root(what: str, why: str, command: list[str]) -> None:
    """Raise :class:`NeedsRoot` unless we are root."""
    if os.geteuid() != 0:
        raise NeedsRoot(f"{what} needs root ({why}); run as root:\n  {shlex.join(command)}\n"
                        "then run this again")


def _root_prepare_command(flavor: str) -> list[str]:
    """The command that runs ``prepare`` as root on the same cache (sudo resets HOME and the
    environment, so the cache directory travels explicitly)."""
    return ["sudo", "env", f"{CACHE_ENV}={cache_dir()}", sys.executable, "-m", "pyvirtiofsd.guest",
            "prepare", "--flavor", flavor]


def _log(msg: str) -> None:
    print(f"[guest] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a host command, failing loudly with its output (setup steps must not fail silently)."""
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({e.returncode}):\n{e.stdout}{e.stderr}") from e


