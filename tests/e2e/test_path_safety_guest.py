"""Path safety from inside a real guest: a guest user tries every way it has to reach a
canary file next to the share (host-planted symlinks, its own symlinks, dot-dot walks,
cross-mount links, long names, a directory/symlink swap race).  The guest must never read
the canary through the mount, and the host watches the canary with inotify: the daemon
must never even open it, and nothing may appear beside the share."""
from __future__ import annotations

import ctypes
import json
import os
import re
import select
import struct
from pathlib import Path

import pytest

from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
SCRIPT = guest.guest_path(HERE / "path_safety_guest.py")
GUEST_PYTHON = "/usr/bin/python3"

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_OPEN = 0x1, 0x2, 0x4, 0x20
IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_DELETE_SELF, IN_MOVE_SELF = 0x8, 0x10, 0x400, 0x800
WATCH = (IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
         | IN_DELETE_SELF | IN_MOVE_SELF)


class Inotify:
    def __init__(self, path: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(path).encode(), WATCH) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def events(self) -> list[int]:
        out = []
        while select.select([self.fd], [], [], 0)[0]:
            buf = os.read(self.fd, 65536)
            pos = 0
            while pos < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, pos)
                out.append(mask)
                pos += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("front,flavor", [("qemu72", "bookworm"), ("qemu111", "sid")])
def test_a_guest_cannot_reach_outside_the_share(tmp_path, front, flavor):
    share = tmp_path / "share"
    share.mkdir()
    canary = tmp_path / "canary"
    secret = os.urandom(16)
    canary.write_bytes(b"CANARY" + secret)
    os.chmod(share, 0o777)
    (share / "rel-up").symlink_to("../canary")
    (share / "abs").symlink_to(canary)
    (share / "chain").symlink_to("rel-up")
    (share / "dir-up").symlink_to("..")
    (share / "proc-root").symlink_to("/proc/self/root")
    beside = sorted(os.listdir(tmp_path))
    watch = Inotify(canary)
    try:
        socket = tmp_path / "vfs.sock"
        argv = guest.backend_command("ours", socket, share, "share")
        with guest.Backend(argv, socket, tmp_path / "backend.log"):
            result = guest.boot(f"{GUEST_PYTHON} {SCRIPT} /mnt {(b'CANARY' + secret).hex()}", socket,
                                frontend=front, flavor=flavor, timeout=600,
                                console_path=tmp_path / "console.log")
        events = watch.events()
    finally:
        watch.close()
    assert "PVFS-ESCAPE-DONE" in result.console, result.console[-3000:]
    attempts = [json.loads(p) for p in re.findall(r"PVFS-ESCAPE (\{.*\})\s*$", result.console, re.M)]
    names = {a["name"] for a in attempts}
    assert {"host-symlink-rel-up", "host-symlink-abs", "guest-symlink-0", "dotdot-deep",
            "hardlink-in", "name-too-long", "swap-race"} <= names, names
    leaks = [a for a in attempts if a["leaked"]]
    assert leaks == [], leaks
    assert events == [], f"the canary was touched on the host: inotify masks {events}"
    harness = {"vfs.sock", "backend.log", "console.log"}
    assert set(os.listdir(tmp_path)) - harness == set(beside), "something appeared beside the share"
    by = {a["name"]: a for a in attempts}
    assert by["name-too-long"]["detail"] == "ENAMETOOLONG"
    assert by["hardlink-in"]["detail"] == "EXDEV"
    assert canary.read_bytes() == b"CANARY" + secret
