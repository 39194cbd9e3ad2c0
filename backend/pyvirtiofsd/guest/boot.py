"""Booting a guest: the QEMU command line, the console and its markers."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .common import (
    ERROR_MARKER, EXIT_MARKER, FRONTENDS, GUEST_RAM, HOST_QEMU, MAX_CMDLINE, START_MARKER,
    GuestError, GuestTimeout, basic_cfg,
)
from .sid import prepare_sid, sid_env, sid_qemu
from .assets import Assets, prepare


def guest_path(host_path: str | os.PathLike) -> str:
    """Where a host path is seen by the guest's command: the host's / is its root, except that the
    guest has its own /tmp and /run (the host's /tmp is under /run/host-tmp)."""
    path = os.path.abspath(host_path)
    if path == "/tmp" or path.startswith("/tmp/"):
        return "/run/host-tmp" + path[len("/tmp"):]
    if path == "/run" or path.startswith("/run/"):
        raise ValueError(f"{path}: the host's /run is hidden in the guest")
    return path


def kernel_cmdline(command: str, tag: str, mount_point: str, mount_options: str) -> str:
    """The kernel command line carrying the init's parameters (see INIT_SCRIPT)."""
    if not command.strip():
        raise ValueError("an empty command would start an interactive shell; give a command")
    for name, value in (("tag", tag), ("mount_point", mount_point), ("mount_options", mount_options)):
        if re.search(r"\s", value):
            raise ValueError(f"{name} must not contain whitespace: {value!r}")
    parts = ["console=ttyS0", "quiet", "panic=-1", f"pvfs.tag={tag}", f"pvfs.mnt={mount_point}",
             f"pvfs.cmd={base64.b64encode(command.encode()).decode()}"]
    if mount_options:
        parts.append(f"pvfs.opts={mount_options}")
    line = " ".join(parts)
    if len(line) >= MAX_CMDLINE:
        raise ValueError(f"command too long for the kernel command line ({len(line)} bytes); "
                         "put it in a script on the host and run that")
    return line


def tcg_accel(smp: int) -> str:
    """Multi-threaded TCG, unless the guest has more vCPUs than the host has cores: then a vCPU
    thread preempted while the guest kernel patches its own text can run a stale int3 and panic
    the guest (seen with a 7.2 guest, -smp 4 on 2 cores); one thread runs the vCPUs in turn."""
    return "tcg,thread=single" if smp > (os.cpu_count() or 1) else "tcg,thread=multi"


def qemu_command(frontend: str, assets: Assets, socket: str | os.PathLike, tag: str, *,
                 mount_point: str = "/mnt", mount_options: str = "", command: str = "true",
                 smp: int = 2, queue_size: int | None = None) -> list[str]:
    """The full QEMU argv for ``frontend`` (see the module docstring); the console goes to stdout."""
    if frontend == "qemu72":
        argv = [HOST_QEMU, "-readconfig", str(basic_cfg()),
                "-set", f"chardev.char0.path={socket}", "-set", f"device.vhost-fs.tag={tag}"]
        if queue_size:
            argv += ["-set", f"device.vhost-fs.queue-size={queue_size}"]
    elif frontend == "qemu111":
        prepare_sid()
        device = "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=2,config_size=40"
        argv = [*sid_qemu(),
                "-object", f"memory-backend-memfd,id=mem,size={GUEST_RAM},share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=char0,path={socket}",
                "-device", device]
        if queue_size:
            raise ValueError("vhost-user-test-device-pci has no queue-size property")
    else:
        raise ValueError(f"unknown front-end {frontend!r} (expected one of {FRONTENDS})")
    return argv + [
        "-accel", tcg_accel(smp), "-cpu", "max", "-smp", str(smp), "-m", GUEST_RAM,
        "-nodefaults", "-display", "none", "-no-reboot",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-kernel", str(assets.boot_image), "-initrd", str(assets.initrd),
        "-append", kernel_cmdline(command, tag, mount_point, mount_options),
    ]


@dataclass
class GuestResult:
    """What a finished guest run left: the command's exit status and everything on the console."""

    exit_status: int
    console: str
    boot_seconds: float  # QEMU start → the command starts (kernel, modules, mounts)
    total_seconds: float  # QEMU start → QEMU exit

    @property
    def output(self) -> str:
        """The command's own output: the console between the start and exit markers."""
        lines = self.console.splitlines()
        start = next((i for i, l in enumerate(lines) if l.startswith(START_MARKER)), -1)
        end = next((i for i, l in enumerate(lines) if l.startswith(EXIT_MARKER)), len(lines))
        return "\n".join(lines[start + 1:end])

    def check(self) -> "GuestResult":
        if self.exit_status != 0:
            raise GuestError(f"guest command exited with status {self.exit_status}", self.console)
        return self


@dataclass
class Guest:
    """One QEMU guest that mounts ``tag`` from the back-end on ``socket`` and runs ``command``.

    ``command`` is a shell command line run by ``/bin/sh`` in the chroot of the host's root, with the
    share mounted at ``mount_point`` (also the working directory). Use :meth:`start` + :meth:`wait`,
    or :func:`boot` for both. ``echo`` copies the console to stderr live; ``console_path`` keeps a log.
    """

    command: str
    socket: str | os.PathLike
    tag: str = "share"
    frontend: str = "qemu72"
    flavor: str = "bookworm"
    mount_point: str = "/mnt"
    mount_options: str = ""
    smp: int = 2
    queue_size: int | None = None
    echo: bool = False
    console_path: str | os.PathLike | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _lines: list[str] = field(default_factory=list, repr=False)
    _started_at: float = 0.0
    _command_at: float | None = None

    def start(self) -> "Guest":
        assets = prepare(self.flavor)
        argv = qemu_command(self.frontend, assets, self.socket, self.tag, mount_point=self.mount_point,
                            mount_options=self.mount_options, command=self.command, smp=self.smp,
                            queue_size=self.queue_size)
        env = sid_env() if self.frontend == "qemu111" else None
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        return self

    def _read_console(self) -> None:
        log = open(self.console_path, "w") if self.console_path else None
        try:
            for raw in self._proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                if line.startswith(START_MARKER) and self._command_at is None:
                    self._command_at = time.monotonic()
                self._lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if self.echo:
                    print(line, file=sys.stderr, flush=True)
        finally:
            if log:
                log.close()

    @property
    def console(self) -> str:
        return "\n".join(self._lines)

    def kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def wait(self, timeout: float = 300) -> GuestResult:
        """Wait for QEMU to exit; kill it after ``timeout`` seconds and raise :class:`GuestTimeout`."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._reader.join(5)
            raise GuestTimeout(f"guest still running after {timeout} s; QEMU killed", self.console)
        self._reader.join(5)
        total = time.monotonic() - self._started_at
        console = self.console
        for line in self._lines:
            if line.startswith(ERROR_MARKER):
                raise GuestError(f"guest init failed: {line[len(ERROR_MARKER):].strip()}", console)
        exits = [l for l in self._lines if l.startswith(EXIT_MARKER)]
        if not exits:
            raise GuestError(f"guest ended without {EXIT_MARKER} (QEMU exit status "
                             f"{self._proc.returncode})", console)
        boot = (self._command_at or self._started_at) - self._started_at
        return GuestResult(int(exits[-1].split()[1]), console, boot, total)

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def boot(command: str, socket: str | os.PathLike, *, timeout: float = 300, **options) -> GuestResult:
    """Boot a guest, run ``command`` in it, and return its :class:`GuestResult` (see :class:`Guest`)."""
    with Guest(command, socket, **options) as guest:
        return guest.wait(timeout)


