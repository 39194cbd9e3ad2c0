"""Memory per inode the guest holds (``pyvirtiofsd-bench --memory-per-inode N``).

A guest keeps every inode it looked up until it forgets it: a guest that walks a big tree
(``find``, a backup, ``git status``) holds them in its dentry cache for as long as memory
allows, and the back-end holds its own record of each (a descriptor or file handle, the
nodeid table, counts).  Each back-end is started afresh, connected to and given FUSE_INIT;
its memory (every process of it: :func:`pyvirtiofsd.bench.peers.memory_kib`) is read, then
our front-end LOOKUPs N distinct files and sends no FORGET, and the memory is read again.
The growth divided by N is the cost of one inode: RSS, and PSS without guest RAM.
"""
from __future__ import annotations

import os
import time

from ..fuse import abi
from . import peers as peers_mod

DIRECTORY = "inodes-{n}"


def names(count: int) -> list[bytes]:
    return [f"f{i:07d}".encode() for i in range(count)]


def prepare(share: str, count: int) -> str:
    """A directory of ``count`` empty files in ``share`` (kept when already complete):
    its name in the share."""
    name = DIRECTORY.format(n=count)
    path = os.path.join(share, name)
    os.makedirs(path, exist_ok=True)
    if len(os.listdir(path)) != count:
        for n in names(count):
            os.close(os.open(os.path.join(path, n.decode()),
                             os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    return name


def measure(peer: peers_mod.Peer, share: str, workdir: str, directory: str,
            count: int) -> dict:
    """Start ``peer`` afresh, LOOKUP ``count`` files of ``directory`` (no FORGET), and
    return its memory before and after and the growth per inode in bytes."""
    session = peers_mod.Session(peer, share, workdir).start()
    try:
        client = session.client
        parent = client.lookup(abi.FUSE_ROOT_ID, directory.encode())[0].nodeid
        before = peers_mod.memory_kib(session.pid)
        t0 = time.monotonic()
        seen = set()
        for name in names(count):
            seen.add(client.lookup(parent, name)[0].nodeid)
        elapsed = time.monotonic() - t0
        if len(seen) != count:
            raise RuntimeError(f"{peer.name}: {count} LOOKUPs gave {len(seen)} distinct nodeids")
        time.sleep(0.2)     # let the back-end's threads settle, as for the idle figure
        after = peers_mod.memory_kib(session.pid)
    finally:
        session.close()
    return {
        "inodes": count, "before_kib": before, "after_kib": after,
        "lookups_per_s": round(count / elapsed),
        "rss_bytes_per_inode": round((after["rss"] - before["rss"]) * 1024 / count, 1),
        "pss_bytes_per_inode": round((after["pss_private"] - before["pss_private"]) * 1024
                                     / count, 1),
    }


def line(results: dict[str, dict], count: int) -> str:
    """One line for the report: per back-end, RSS and PSS growth per inode."""
    def cell(name: str, r: dict) -> str:
        if "error" in r:
            return f"{name} FAILED ({r['error']})"
        return (f"{name} {r['rss_bytes_per_inode']:.0f}/{r['pss_bytes_per_inode']:.0f} B "
                f"({r['after_kib']['rss'] / 1024:.1f} MiB RSS at the end)")
    return (f"memory per inode the guest holds ({count:,} LOOKUPs, no FORGET; growth per inode, "
            f"RSS/PSS without guest RAM): " + "; ".join(cell(n, r) for n, r in results.items()))
