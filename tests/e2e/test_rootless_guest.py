"""An ordinary user serves a share to a real QEMU 7.2 guest: both the daemon (default
``--sandbox namespace``, so a user namespace of its own) and QEMU run as that user.  The
guest creates, writes, renames and chmods; the host sees the files owned by the user, or
by the mapped ids with ``--uid-map``/``--gid-map``."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyvirtiofsd import guest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from rootless import SUBIDS, USER, UserDaemon, ensure_user, owner, public_dir  # noqa: E402

pytestmark = pytest.mark.e2e

WORK = ("mkdir d && echo 'written by the guest' > d/new && mv d/new d/renamed && "
        "chmod 640 d/renamed && ls -ln d && cat d/renamed")


@pytest.fixture
def public():
    with public_dir("pvfs-rootless-e2e-") as path:
        yield path


def boot_as_user(public: Path, socket: str) -> str:
    """QEMU 7.2 as the user, from copies of the guest assets it can read; the console."""
    assets = guest.prepare("bookworm")
    mine = public / "assets"
    mine.mkdir()
    copies = {}
    for p in (assets.boot_image, assets.initrd, guest.BASIC_CFG):
        copies[str(p)] = str(shutil.copy(p, mine / p.name))
    os.chmod(mine, 0o755)
    for c in copies.values():
        os.chmod(c, 0o644)
    assets = dataclasses.replace(assets, boot_image=Path(copies[str(assets.boot_image)]),
                                 initrd=Path(copies[str(assets.initrd)]))
    argv = guest.qemu_command("qemu72", assets, socket, "share", command=WORK)
    argv = ["runuser", "-u", USER, "--", *(copies.get(a, a) for a in argv)]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=300)
    console = r.stdout + r.stderr
    exits = [line for line in console.splitlines() if line.startswith(guest.EXIT_MARKER)]
    assert exits and exits[-1].split()[1] == "0", console
    return console


def test_a_user_serves_a_guest_with_the_default_sandbox(public):
    user = ensure_user()
    share = public / "share"
    share.mkdir()
    os.chown(share, user.pw_uid, user.pw_gid)
    (public / "daemon").mkdir()
    daemon = UserDaemon(public / "daemon", share)
    try:
        console = boot_as_user(public, daemon.socket_path)
    finally:
        assert daemon.wait() == 0, daemon.log()       # it ends with QEMU's connection
    assert "written by the guest" in console
    f = share / "d" / "renamed"
    assert f.read_text() == "written by the guest\n"
    assert f.stat().st_mode & 0o777 == 0o640
    assert owner(f) == owner(share / "d") == (user.pw_uid, user.pw_gid)
    assert "sandbox" in daemon.log() and "mode=namespace" in daemon.log()


def test_a_user_serves_a_guest_with_an_id_map(public):
    ensure_user()
    first, count = SUBIDS
    share = public / "share"
    share.mkdir()
    os.chown(share, first, first)
    (public / "daemon").mkdir()
    daemon = UserDaemon(public / "daemon", share, f"--uid-map=:0:{first}:{count}:",
                        f"--gid-map=:0:{first}:{count}:")
    try:
        boot_as_user(public, daemon.socket_path)
    finally:
        assert daemon.wait() == 0, daemon.log()
    f = share / "d" / "renamed"
    assert f.read_text() == "written by the guest\n"
    assert owner(f) == owner(share / "d") == (first, first)
