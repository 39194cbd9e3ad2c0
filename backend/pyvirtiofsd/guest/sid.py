"""The Debian sid tree: QEMU 11.1, virtiofsd 1.14 and a 7.x kernel, run through sid's own loader."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .common import (
    SID_COMPLETE, SID_MIRROR, SID_PACKAGES, _log, _require_root, _root_prepare_command, _run, sid_dir,
)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def prepare_sid(directory: Path | None = None) -> Path:
    """Debootstrap Debian sid into ``directory`` (default :func:`sid_dir`) once (a marker file
    records completion).  Needs root, unless the tree is already there."""
    directory = directory or sid_dir()
    if (directory / SID_COMPLETE).exists():
        return directory
    if directory.exists():
        what = f"removing the half-prepared sid tree {directory} (no {SID_COMPLETE}) and redoing it"
    else:
        what = f"the Debian sid tree (debootstrap into {directory})"
    _require_root(what, "debootstrap chroots into the tree, mounts /proc there and makes device "
                  "nodes; a failed attempt leaves root's files and mounts behind",
                  _root_prepare_command("sid"))
    if directory.exists():  # a half-done earlier attempt: debootstrap may have left /proc mounted
        for point in _mounts_under(directory):
            _run(["umount", "-l", point])
        _run(["rm", "-rf", "--one-file-system", str(directory)])
    _log(f"debootstrap sid into {directory} (about a minute, ~800 MB)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _run(["debootstrap", "--variant=minbase", f"--include={SID_PACKAGES}", "sid", str(directory),
          SID_MIRROR])
    version = check_sid_qemu(directory)
    (directory / SID_COMPLETE).write_text(f"{version}\n")
    _log(f"sid tree ready in {time.monotonic() - t0:.0f} s: {version}")
    return directory


def sid_command(binary: str, directory: Path | None = None) -> list[str]:
    """argv prefix that runs a sid binary (e.g. ``usr/libexec/virtiofsd``) on this host via sid's loader."""
    directory = directory or sid_dir()
    libs = f"{directory}/lib/x86_64-linux-gnu:{directory}/usr/lib/x86_64-linux-gnu"
    return [f"{directory}/lib64/ld-linux-x86-64.so.2", "--library-path", libs, f"{directory}/{binary}"]


def sid_env(directory: Path | None = None) -> dict[str, str]:
    """Environment for sid's QEMU: load its own modules, never the host QEMU 7.2's (that aborts)."""
    directory = directory or sid_dir()
    return {**os.environ, "QEMU_MODULE_DIR": f"{directory}/usr/lib/x86_64-linux-gnu/qemu"}


def sid_qemu(directory: Path | None = None) -> list[str]:
    directory = directory or sid_dir()
    return [*sid_command("usr/bin/qemu-system-x86_64", directory),
            "-L", f"{directory}/usr/share/qemu", "-L", f"{directory}/usr/share/seabios"]


def check_sid_qemu(directory: Path | None = None) -> str:
    """Verify sid's QEMU runs here, is 11.1, and has the devices the qemu111 front-end uses."""
    qemu, env = sid_qemu(directory), sid_env(directory)
    version = _run([*qemu, "--version"], env=env).stdout.splitlines()[0]
    if "version 11.1" not in version:
        raise RuntimeError(f"sid QEMU is not 11.1: {version}")
    for device in ("vhost-user-test-device-pci", "virtio-9p-pci"):
        _run([*qemu, "-device", f"{device},help"], env=env)
    return version


