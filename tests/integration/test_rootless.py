"""An ordinary user runs the daemon with the default sandbox: a user namespace of its own
first, then the mount, pid and network namespaces as for root.  Driven by our front-end."""
from __future__ import annotations

import errno
import os

import pytest
from rootless import SUBIDS, UserDaemon, ensure_user, ids, owner, public_dir

from pyvirtiofsd.fuse import abi

ROOT = abi.FUSE_ROOT_ID


@pytest.fixture
def user():
    return ensure_user()


@pytest.fixture
def public():
    with public_dir() as path:
        yield path


@pytest.fixture
def user_share(public, user):
    share = public / "share"
    share.mkdir()
    os.chown(share, user.pw_uid, user.pw_gid)
    return share


@pytest.fixture
def run_as_user(public, user):
    started = []

    def start(shared_dir, *args):
        directory = public / f"daemon{len(started)}"
        directory.mkdir()
        d = UserDaemon(directory, shared_dir, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def namespace(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def guest_work(c) -> None:
    """What the e2e guest does too, as the guest's root: create, write, rename, chmod."""
    d, _ = c.mkdir(ROOT, b"dir", mode=0o777)
    e, _, o = c.create(d.nodeid, b"new", mode=0o600)
    assert c.write(e.nodeid, o.fh, 0, b"written by the guest") == 20
    c.release(e.nodeid, o.fh)
    c.rename(d.nodeid, b"new", d.nodeid, b"renamed")
    assert c.setattr(e.nodeid, valid=abi.FATTR_MODE, mode=0o640).mode & 0o777 == 0o640


def test_an_ordinary_user_serves_with_the_namespace_sandbox(user, user_share, run_as_user,
                                                            connect):
    daemon = run_as_user(user_share)
    supervisor, server = daemon.pids()
    # Both run as the user on the host; the server in its own user, pid, mount and network
    # namespaces.
    assert ids(supervisor) == ids(server) == (user.pw_uid, user.pw_gid)
    for kind in ("user", "pid", "mnt", "net"):
        assert namespace(server, kind) != namespace(os.getpid(), kind), kind
    c = connect(daemon)
    guest_work(c)
    # The guest's root is the user on the host.
    assert owner(user_share / "dir") == owner(user_share / "dir" / "renamed") == \
        (user.pw_uid, user.pw_gid)
    assert (user_share / "dir" / "renamed").read_bytes() == b"written by the guest"
    assert (user_share / "dir" / "renamed").stat().st_mode & 0o777 == 0o640
    # A guest user whose id has no mapping cannot create: the kernel will not switch to it.
    r = c.call(abi.Opcode.FUSE_MKDIR, ROOT, abi.fuse_mkdir_in.build(mode=0o755) + b"u\0",
               abi.FUSE_ENTRY_OUT_SIZE, uid=1000, gid=1000)
    assert r.error == -errno.EPERM
    assert not (user_share / "u").exists()


def test_an_id_map_through_newuidmap(user, public, run_as_user, connect):
    first, count = SUBIDS
    share = public / "mapped"
    share.mkdir()
    os.chown(share, first, first)          # the namespace's root owns the share
    daemon = run_as_user(share, f"--uid-map=:0:{first}:{count}:",
                         f"--gid-map=:0:{first}:{count}:")
    supervisor, server = daemon.pids()
    assert ids(supervisor) == (first, first)       # root of the namespace = the range's first
    c = connect(daemon)
    guest_work(c)
    assert owner(share / "dir" / "renamed") == (first, first)
    # A guest user is a mapped id too: its files belong to its id in the range.
    home = c.mkdir(ROOT, b"home", mode=0o777)[0].nodeid
    e, _, o = c.create(home, b"mine", uid=1000, gid=1000)
    c.release(e.nodeid, o.fh)
    assert owner(share / "home" / "mine") == (first + 1000, first + 1000)


def test_a_map_needs_the_namespace_sandbox(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(tmp_path / "s"),
                        "--shared-dir", str(tmp_path), "--sandbox", "none",
                        "--uid-map=:0:100000:65536:"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--sandbox namespace" in r.stderr


@pytest.mark.parametrize("bad", ["0:100000:65536", ":0:100000:0:", ":x:1:1:", ":0:4294967295:2:"])
def test_a_malformed_map_is_a_command_line_error(tmp_path, bad):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(tmp_path / "s"),
                        "--shared-dir", str(tmp_path), f"--uid-map={bad}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--uid-map" in r.stderr and r.stderr.count("\n") == 1
