"""Back-ends for one guest (ours, or a reference daemon): they exit when QEMU hangs up."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .sid import sid_command


BACKENDS = ("ours", "c-virtiofsd", "rust-virtiofsd")
C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # QEMU 7.2's C virtiofsd (Debian 12 qemu-system-common)


def backend_command(kind: str, socket: str | os.PathLike, shared_dir: str | os.PathLike,
                    tag: str | None = "share", *, xattr: bool = False) -> list[str]:
    """argv of a back-end serving ``shared_dir`` on ``socket``, each with equivalent options.

    ``tag``: the tag the back-end itself announces (GET_CONFIG), which only qemu111's generic
    device asks for; ``None`` for qemu72, whose ``vhost-user-fs-pci`` has its own (given a
    tag, our daemon offers PROTOCOL_F_CONFIG, and QEMU 7.2 warns that it does not support it).
    ``xattr`` turns on extended attributes, which all three daemons leave off by default. The C
    virtiofsd has no ``--tag`` (it cannot answer GET_CONFIG), so it only works with qemu72.
    """
    tagged = [] if tag is None else [tag]
    if kind == "ours":
        return [sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(socket),
                "--shared-dir", str(shared_dir), *(f"--tag={t}" for t in tagged),
                *(["--xattr"] if xattr else [])]
    if kind == "c-virtiofsd":
        return [C_VIRTIOFSD, f"--socket-path={socket}", "-o", f"source={shared_dir}", "-o", "cache=auto",
                *(["-o", "xattr"] if xattr else [])]
    if kind == "rust-virtiofsd":
        return [*sid_command("usr/libexec/virtiofsd"), f"--socket-path={socket}",
                f"--shared-dir={shared_dir}", *(f"--tag={t}" for t in tagged), "--sandbox=none",
                *(["--xattr"] if xattr else [])]
    raise ValueError(f"unknown back-end {kind!r} (expected one of {BACKENDS})")


def _listening(path: str) -> bool:
    """Is a unix socket listening on ``path``? (/proc/net/unix: flag __SO_ACCEPTCON = 0x10000)"""
    with open("/proc/net/unix") as f:
        next(f)
        return any(len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000
                   for fields in map(str.split, f))


class Backend:
    """A back-end process started from ``argv``; :meth:`start` returns once its socket listens.

    Waiting for the listening state (not just the socket file) avoids QEMU's "connection refused"
    between bind() and listen(); probing with connect() would use up the daemon's only client.
    """

    def __init__(self, argv: list[str], socket: str | os.PathLike, log_path: str | os.PathLike):
        self.argv, self.socket, self.log_path = argv, os.path.abspath(socket), Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "Backend":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _listening(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"back-end exited with {self.proc.returncode} before listening on "
                                   f"{self.socket}: {shlex.join(self.argv)}\n{self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"back-end not listening on {self.socket} after {timeout} s\n{self.log}")
            time.sleep(0.005)   # fine enough for the bench's start-to-listening figure
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> "Backend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


