"""End-to-end fixtures: a real back-end process, a real QEMU guest, guest_checks.py inside it.

One guest boots per front-end per session and runs every check once (booting is the slow part);
the tests then assert on its parsed results and on what the guest left on the host.

Environment:
  PYVIRTIOFSD_CACHE         the guest runner's cache (default: the repository's .cache)
  PYVIRTIOFSD_E2E_BACKEND   ours (default) | c-virtiofsd | rust-virtiofsd
  PYVIRTIOFSD_E2E_BACKEND_ARGS  extra back-end options, e.g. "--cache never" (ours, Rust) or
                            "-o cache=none" (C); the back-end always gets its xattr switch
  PYVIRTIOFSD_E2E_FRONTENDS comma list, default every front-end the back-end can serve
                            (qemu72,qemu111; the C virtiofsd cannot answer GET_CONFIG: qemu72 only)
  PYVIRTIOFSD_E2E_TIMEOUT   seconds per guest run (default 900)

Nothing here skips: a missing kernel, initramfs or sid tree is prepared on first use (minutes the
first time), and anything that cannot be prepared fails the tests with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyvirtiofsd import guest

from guest_harness import parse_lines

HERE = Path(__file__).resolve().parent
# The guest runner's assets: the repository's .cache, which scripts/setup.sh prepares (and CI
# keeps), unless the caller points PYVIRTIOFSD_CACHE elsewhere.  The runner reads it at every
# call, and the back-ends and launchers the tests start inherit it.
os.environ.setdefault(guest.CACHE_ENV, str(HERE.parents[1] / ".cache"))
CHECKS_SCRIPT = HERE / "guest_checks.py"
GUEST_PYTHON = "/usr/bin/python3"  # the host's Debian python3, run by the guest through 9p
TAG = "share"
MOUNT_POINT = "/mnt"
# The guest kernel each front-end boots: both Debian kernels get covered.
FLAVOR = {"qemu72": "bookworm", "qemu111": "sid"}
HUGE_TMPFS_BLKSIZE = 2 * 1024 * 1024


def _load_checks_module():
    spec = importlib.util.spec_from_file_location("guest_checks", CHECKS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guest_checks = _load_checks_module()
CHECK_NAMES = [fn.__name__ for fn in guest_checks.CHECKS]


def backend_kind() -> str:
    kind = os.environ.get("PYVIRTIOFSD_E2E_BACKEND", "ours")
    if kind not in guest.BACKENDS:
        raise pytest.UsageError(f"PYVIRTIOFSD_E2E_BACKEND={kind!r}: expected one of {guest.BACKENDS}")
    return kind


def frontends() -> list[str]:
    default = "qemu72" if backend_kind() == "c-virtiofsd" else ",".join(guest.FRONTENDS)
    chosen = os.environ.get("PYVIRTIOFSD_E2E_FRONTENDS", default).split(",")
    unknown = set(chosen) - set(guest.FRONTENDS)
    if unknown:
        raise pytest.UsageError(f"PYVIRTIOFSD_E2E_FRONTENDS: unknown {sorted(unknown)}")
    return chosen


def pytest_generate_tests(metafunc):
    # Session scope: one guest per front-end, shared by every test of that front-end.
    if "frontend" in metafunc.fixturenames:
        metafunc.parametrize("frontend", frontends(), scope="session")
    if "check" in metafunc.fixturenames:  # one test per check of guest_checks.py
        metafunc.parametrize("check", CHECK_NAMES)


@dataclass
class GuestRun:
    """A finished guest run: its console, its parsed result lines, and the host directory it used."""

    share: Path
    result: guest.GuestResult = field(repr=False)
    lines: dict[str, list[dict]] = field(repr=False)  # marker → parsed JSON objects, in console order
    backend_log: str = field(repr=False)
    backend_argv: list[str] = field(default_factory=list, repr=False)
    host_file: bytes = b""  # what the host wrote into the share before boot

    def checks(self) -> dict[str, dict]:
        return {r["name"]: r for r in self.lines.get("PVFS-CHECK", [])}

    def describe(self) -> str:
        return (f"guest exit {self.result.exit_status}; back-end log tail:\n"
                + "\n".join(self.backend_log.splitlines()[-15:]))


def run_guest(frontend: str, share: Path, workdir: Path, command: str) -> GuestRun:
    """Start the back-end on ``share``, boot one guest that runs ``command``, stop the back-end."""
    socket = workdir / "vhost-user.sock"
    # Extended attributes on: guest_checks.py tests them (without it: ENOTSUP from every daemon).
    argv = guest.backend_command(backend_kind(), socket, share,
                                 TAG if frontend == "qemu111" else None, xattr=True)
    argv += shlex.split(os.environ.get("PYVIRTIOFSD_E2E_BACKEND_ARGS", ""))
    timeout = float(os.environ.get("PYVIRTIOFSD_E2E_TIMEOUT", "900"))
    backend = guest.Backend(argv, socket, workdir / "backend.log")
    with backend:
        result = guest.boot(command, socket, tag=TAG, frontend=frontend, flavor=FLAVOR[frontend],
                            mount_point=MOUNT_POINT, timeout=timeout,
                            console_path=workdir / "console.log")
    print(f"\n[e2e] {frontend}/{FLAVOR[frontend]} with {backend_kind()}: boot {result.boot_seconds:.1f} s, "
          f"total {result.total_seconds:.1f} s; console in {workdir / 'console.log'}")
    return GuestRun(share, result, parse_lines(result.console), backend.log, argv)


@pytest.fixture(scope="session")
def checks_run(frontend, tmp_path_factory) -> GuestRun:
    """The one guest of this front-end that ran every check in guest_checks.py."""
    workdir = tmp_path_factory.mktemp(f"e2e-{frontend}")
    share = workdir / "share"
    share.mkdir()
    host_file = guest_checks.HOST_FILE_PREFIX + f" for the {frontend} guest\n".encode()
    (share / guest_checks.HOST_FILE).write_bytes(host_file)
    script = guest.guest_path(CHECKS_SCRIPT)
    run = run_guest(frontend, share, workdir, f"{GUEST_PYTHON} {script} {MOUNT_POINT}")
    run.host_file = host_file
    return run


@pytest.fixture(scope="session")
def huge_tmpfs_run(frontend, tmp_path_factory) -> GuestRun:
    """A guest that lists st_blksize of every file on a host tmpfs mounted with huge=always."""
    workdir = tmp_path_factory.mktemp(f"e2e-huge-{frontend}")
    share = workdir / "share"
    share.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=64M", "tmpfs", str(share)], check=True)
    try:
        (share / "small.txt").write_bytes(b"small\n")
        (share / "big.bin").write_bytes(os.urandom(3 << 20))
        (share / "dir" / "sub").mkdir(parents=True)
        (share / "dir" / "sub" / "nested.txt").write_bytes(b"nested\n")
        host = os.stat(share / "big.bin").st_blksize
        assert host == HUGE_TMPFS_BLKSIZE, f"host tmpfs huge=always reports st_blksize {host}"
        script = guest.guest_path(CHECKS_SCRIPT)
        return run_guest(frontend, share, workdir, f"{GUEST_PYTHON} {script} --blksize {MOUNT_POINT}")
    finally:
        subprocess.run(["umount", "-l", str(share)], check=True)
