"""A user namespace for the sandbox: how an ordinary user gets a ``--sandbox namespace``.

Mount, pid and network namespaces need CAP_SYS_ADMIN.  An ordinary user has it only inside
a user namespace of its own, so the supervisor enters one first (:func:`enter`) and the
rest of the sandbox is built as for root.  Inside, the daemon is root of that namespace;
on the host it is still the user who started it.

Which ids exist inside is the id map, in virtiofsd's syntax
``--uid-map=:namespace_uid:host_uid:count:`` (``--gid-map`` alike).  Without one, the
caller's own uid and gid become 0 inside, as with virtiofsd: the guest's root then creates
files owned by that user on the host, and a guest user whose id has no mapping cannot
create anything (the kernel refuses to switch to an unmapped id).  A map of other host ids
than the caller's own needs the set-user-ID helpers ``newuidmap``/``newgidmap`` (Debian's
``uidmap``) and ranges for the user in ``/etc/subuid``/``/etc/subgid``.

The maps are written by a helper process forked *before* the namespace is entered: a
process inside a new namespace cannot write a map of more than its own id, and a
set-user-ID helper run from inside has no privilege there.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ._cext import lib
from .daemon import StartupError

_SYNTAX = re.compile(r"^:(\d+):(\d+):(\d+):$")


class UserNamespaceError(StartupError):
    """The user namespace cannot be set up (the message says why and what to do)."""


@dataclass(frozen=True)
class IdMapping:
    """One ``:namespace_id:host_id:count:`` range."""

    inside: int
    outside: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "IdMapping":
        m = _SYNTAX.match(text)
        if not m:
            raise ValueError(f"{text!r} is not :namespace_id:host_id:count:")
        inside, outside, count = (int(g) for g in m.groups())
        if count < 1 or max(inside, outside) + count > 1 << 32:
            raise ValueError(f"{text!r}: the range must hold 1 to 2^32 ids")
        return cls(inside, outside, count)

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}\n"

    def holds(self, inside: int) -> bool:
        return self.inside <= inside < self.inside + self.count

    def only(self, host_id: int) -> bool:
        """Maps just ``host_id``: a user may write that map without help."""
        return self.count == 1 and self.outside == host_id


def needed(uid_map: IdMapping | None, gid_map: IdMapping | None) -> bool:
    """A user namespace comes first when we are not root, or when a map asks for one."""
    return os.geteuid() != 0 or uid_map is not None or gid_map is not None


def enter(uid_map: IdMapping | None, gid_map: IdMapping | None) -> None:
    """Move the calling (single-threaded) process into a new user namespace with the given
    maps -- by default the caller's own uid and gid as 0 -- and become its root."""
    maps = {"uid": uid_map or IdMapping(0, os.geteuid(), 1),
            "gid": gid_map or IdMapping(0, os.getegid(), 1)}
    tools = {kind: _tool(kind, mapping) for kind, mapping in maps.items()}
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    parent = os.getpid()
    helper = os.fork()
    if helper == 0:                                    # the helper, still outside
        os.close(go_w)
        os.close(done_r)
        if not os.read(go_r, 1):
            os._exit(1)                                # the parent could not enter one
        try:
            _write_maps(parent, maps, tools)
            os.write(done_w, b"ok")
        except Exception as e:                          # noqa: BLE001 - reported by the parent
            os.write(done_w, str(e).encode()[:4000])
        os._exit(0)
    os.close(go_r)
    os.close(done_w)
    try:
        rc = lib.pvfs_sb_unshare(lib.PVFS_SB_CLONE_NEWUSER)
        if rc < 0:
            raise UserNamespaceError(
                f"unshare(CLONE_NEWUSER): {os.strerror(-rc)} (unprivileged user namespaces "
                "disabled? see sysctl user.max_user_namespaces); else use --sandbox none")
        os.write(go_w, b"g")
        answer = os.read(done_r, 4096).decode(errors="replace")
    finally:
        os.close(go_w)
        os.close(done_r)
        os.waitpid(helper, 0)
    if answer != "ok":
        raise UserNamespaceError(f"cannot write the user namespace's id maps: {answer}")
    # Root of the namespace where 0 is mapped (the caller keeps its own ids otherwise).
    if maps["gid"].holds(0):
        os.setresgid(0, 0, 0)
    if maps["uid"].holds(0):
        os.setresuid(0, 0, 0)


def _tool(kind: str, mapping: IdMapping) -> str | None:
    """``newuidmap``/``newgidmap`` where an unprivileged caller maps more than its own id."""
    own = os.geteuid() if kind == "uid" else os.getegid()
    if os.geteuid() == 0 or mapping.only(own):
        return None
    import shutil   # only for an unprivileged caller's wider maps: not in every daemon

    path = shutil.which(f"new{kind}map")
    if path is None:
        raise UserNamespaceError(
            f"--{kind}-map maps other ids than the caller's own: that needs new{kind}map "
            f"(Debian package uidmap) and a range for the user in /etc/sub{kind}")
    return path


def _write_maps(pid: int, maps: dict[str, IdMapping], tools: dict[str, str | None]) -> None:
    """In the helper: the maps of ``pid``, through newuidmap/newgidmap where needed."""
    for kind, mapping in maps.items():
        tool = tools[kind]
        if tool is not None:
            import subprocess   # as shutil in _tool

            r = subprocess.run([tool, str(pid), str(mapping.inside), str(mapping.outside),
                                str(mapping.count)], capture_output=True, text=True)
            if r.returncode != 0:
                raise UserNamespaceError(f"{os.path.basename(tool)}: {r.stderr.strip()}")
            continue
        if kind == "gid" and os.geteuid() != 0:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")                       # required before an unprivileged gid map
        with open(f"/proc/{pid}/{kind}_map", "w") as f:
            f.write(mapping.line())
