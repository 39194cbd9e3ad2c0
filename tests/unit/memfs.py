"""A small in-memory FileSystem: proves the interface serves a custom file system, and lets
server tests count exactly which methods were called."""
from __future__ import annotations

import errno
import stat
import threading
from collections import Counter

from pyvirtiofsd.filesystem import Attr, DirEntry, Entry, FileSystem, dirent_type


class MemFs(FileSystem):
    def __init__(self, files: dict[bytes, bytes] | None = None, blksize: int = 2 << 20):
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.lookups: Counter[int] = Counter()
        self.blksize = blksize
        self.names: dict[bytes, int] = {}
        self.data: dict[int, bytearray] = {}
        self.modes: dict[int, int] = {1: stat.S_IFDIR | 0o755}
        for name, content in (files or {}).items():
            self._add(name, bytes(content), stat.S_IFREG | 0o644)
        self.destroyed = 0

    def _add(self, name: bytes, content: bytes, mode: int) -> int:
        ino = len(self.modes) + 1
        self.names[name] = ino
        self.data[ino] = bytearray(content)
        self.modes[ino] = mode
        return ino

    def _attr(self, ino: int) -> Attr:
        return Attr(ino=ino, size=len(self.data.get(ino, b"")), mode=self.modes[ino],
                    nlink=1, blksize=self.blksize)

    def destroy(self) -> None:
        self.destroyed += 1

    def lookup(self, ctx, parent, name):
        self.calls["lookup"] += 1
        if parent != 1 or name not in self.names:
            raise OSError(errno.ENOENT, "no such entry")
        ino = self.names[name]
        with self.lock:
            self.lookups[ino] += 1
        return Entry(ino, 0, self._attr(ino))

    def forget(self, ctx, inode, nlookup):
        with self.lock:
            self.lookups[inode] -= nlookup

    def getattr(self, ctx, inode, fh):
        self.calls["getattr"] += 1
        if inode not in self.modes:
            raise OSError(errno.ENOENT, "no such inode")
        return self._attr(inode)

    def readdir(self, ctx, inode, fh, offset):
        entries = [(b".", 1, stat.S_IFDIR), (b"..", 1, stat.S_IFDIR)] + [
            (name, ino, self.modes[ino]) for name, ino in sorted(self.names.items())]
        for i, (name, ino, mode) in enumerate(entries):
            if i >= offset:
                yield DirEntry(ino, i + 1, dirent_type(mode), name)

    def read(self, ctx, inode, fh, offset, size, flags):
        return bytes(self.data[inode][offset:offset + size])

    def write(self, ctx, inode, fh, offset, data, flags, kill_priv):
        buf = self.data[inode]
        payload = data.read()
        buf[offset:offset + len(payload)] = payload
        return len(payload)

    def getxattr(self, ctx, inode, name):
        self.calls["getxattr"] += 1
        return b"value"

    def listxattr(self, ctx, inode):
        self.calls["listxattr"] += 1
        return [b"user.a", b"user.bb"]

    def setxattr(self, ctx, inode, name, value, flags):
        self.calls["setxattr"] += 1

    def removexattr(self, ctx, inode, name):
        self.calls["removexattr"] += 1
