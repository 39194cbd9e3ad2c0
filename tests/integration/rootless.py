"""Running the daemon as an ordinary user, for the rootless tests.

The tests run as root (CI does), so they make the ordinary user themselves: ``pvfs-rootless``
with a subordinate id range for newuidmap/newgidmap.  That user cannot read the test run's
Python (a pyenv or venv under /root, say) or a checkout under a private directory, so the
daemon runs from a copy of what it needs -- the package with its built extension,
cffi's backend -- under the system's own ``/usr/bin/python3``, the same 3.11 the extension
was built for.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sysconfig
import tempfile
from contextlib import contextmanager
from pathlib import Path

import _cffi_backend

import pyvirtiofsd
from daemonproc import Daemon

USER = "pvfs-rootless"
SUBIDS = (200000, 65536)          # its /etc/subuid and /etc/subgid range
SYSTEM_PYTHON = "/usr/bin/python3"


def ensure_user() -> pwd.struct_passwd:
    """The ordinary user (made once, with its subordinate ids)."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        USER], check=True)
        pw = pwd.getpwnam(USER)
    first, count = SUBIDS
    span = f"{first}-{first + count - 1}"
    for kind in ("uid", "gid"):
        with open(f"/etc/sub{kind}") as f:
            listed = any(line.split(":")[0] == USER for line in f)
        if not listed:
            subprocess.run(["usermod", f"--add-sub{kind}s", span, USER], check=True)
    return pw


def runtime(directory: Path) -> Path:
    """A copy of the daemon's Python runtime that any user can read: PYTHONPATH for it."""
    tree = directory / "runtime"
    if not tree.exists():
        shutil.copytree(Path(pyvirtiofsd.__file__).parent, tree / "pyvirtiofsd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(_cffi_backend.__file__, tree)
        for p in [tree, *tree.rglob("*")]:   # the supervisor program stays executable
            p.chmod(0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
    return tree


def check_python() -> None:
    """The copied cffi backend is built for this interpreter's version: the system's must match."""
    mine = sysconfig.get_config_var("SOABI")
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import sysconfig; print(sysconfig.get_config_var('SOABI'))"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == mine, f"{SYSTEM_PYTHON} is {r.stdout.strip()}, the tests run {mine}"


class UserDaemon(Daemon):
    """The daemon started as :data:`USER` (through runuser), from :func:`runtime`'s copy under
    the system's Python.  ``directory``: the user's own directory for its socket, its log and
    the runtime."""

    def __init__(self, directory: Path, shared_dir: Path, *args: str):
        user = ensure_user()
        check_python()
        directory.chmod(0o755)
        os.chown(directory, user.pw_uid, user.pw_gid)
        launcher = ["runuser", "-u", USER, "--", "env", f"PYTHONPATH={runtime(directory)}",
                    SYSTEM_PYTHON]
        super().__init__(shared_dir, directory / "vfs.sock", *args, launcher=launcher)
        self.serving_pid()                      # wait until it listens

    def pids(self) -> tuple[int, int]:
        """(supervisor, daemon): runuser's child is the supervisor, whose child serves."""
        def children(pid: int) -> list[int]:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(c) for c in f.read().split()]
        supervisor = children(self.proc.pid)[0]
        return supervisor, children(supervisor)[0]

    def wait(self, timeout: float = 30) -> int:
        """Its exit status once it ends by itself (the front-end hung up)."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()


@contextmanager
def public_dir(prefix: str = "pvfs-rootless-"):
    """A directory the user can reach (pytest's tmp_path lies under a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def ids(pid: int) -> tuple[int, int]:
    """A process's real uid and gid as the host sees them."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])

