"""An in-memory, read-write file system served to a VM.

    python examples/memfs.py --socket-path /tmp/memfs.sock --tag memfs
    # then start QEMU with -device vhost-user-fs-pci,chardev=...,tag=memfs and in the guest:
    mount -t virtiofs memfs /mnt

Files, directories, symlinks and hard links live in a dict of :class:`Node` objects and
vanish when the daemon exits.  It shows what a read-write :class:`pyvirtiofsd.FileSystem`
has to do:

* hand out inode numbers (``nodeid``) and count *lookups*: every :class:`Entry` returned
  is one more reference the guest holds until it sends ``forget``; an unlinked file lives
  on until its last reference is forgotten;
* raise ``OSError(errno)`` for every failure -- the guest sees exactly that errno;
* give readdir stable cookies (``DirEntry.offset``) so a directory listed while it
  changes neither repeats nor skips names.

It leaves ``open``/``opendir`` alone, so the server tells the guest not to send OPEN at all
(FUSE_NO_OPEN_SUPPORT) and every handle is 0.  Permission checks are the guest kernel's
(virtio-fs mounts use ``default_permissions``); the umask is already applied to ``mode``.
"""
from __future__ import annotations

import argparse
import errno
import itertools
import os
import stat
import sys
import threading
import time

import pyvirtiofsd
from pyvirtiofsd import Attr, Context, DirEntry, Entry, FileSystem, Opened, SetAttr, StatFs

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _now() -> tuple[int, int]:
    return divmod(time.time_ns(), 1_000_000_000)


class Node:
    """One inode: a directory (``children``: name → (ino, readdir cookie)), a regular file
    (``data``) or a symlink (``target``)."""

    def __init__(self, ino: int, mode: int, uid: int, gid: int, rdev: int = 0):
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.data = bytearray()
        self.children: dict[bytes, tuple[int, int]] = {}
        self.target = b""
        self.nlink = 0          # names pointing here (directories: see MemFs._attr)
        self.lookups = 0        # references the guest holds
        self.atime = self.mtime = self.ctime = _now()


class MemFs(FileSystem):
    def __init__(self, uid: int = 0, gid: int = 0):
        self._lock = threading.RLock()
        self._inos = itertools.count(2)
        self._cookies = itertools.count(3)       # 1 and 2 are "." and ".."
        root = Node(1, stat.S_IFDIR | 0o755, uid, gid)
        root.nlink = 1
        self._nodes: dict[int, Node] = {1: root}
        self._parent: dict[int, int] = {1: 1}    # directory → its parent

    # --- helpers ------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if not stat.S_ISDIR(node.mode):
            raise _err(errno.ENOTDIR)
        return node

    def _child(self, parent: Node, name: bytes) -> Node:
        if name not in parent.children:
            raise _err(errno.ENOENT)
        return self._nodes[parent.children[name][0]]

    def _attr(self, n: Node) -> Attr:
        size = len(n.target) if stat.S_ISLNK(n.mode) else len(n.data)
        nlink = n.nlink
        if stat.S_ISDIR(n.mode):
            nlink = 2 + sum(stat.S_ISDIR(self._nodes[i].mode) for i, _ in n.children.values())
        return Attr(ino=n.ino, size=size, blocks=(size + 511) // 512, mode=n.mode, nlink=nlink,
                    uid=n.uid, gid=n.gid, rdev=n.rdev, atime=n.atime[0], atimensec=n.atime[1],
                    mtime=n.mtime[0], mtimensec=n.mtime[1], ctime=n.ctime[0],
                    ctimensec=n.ctime[1])

    def _entry(self, n: Node) -> Entry:
        n.lookups += 1
        return Entry(n.ino, 0, self._attr(n))

    def _link(self, parent: Node, name: bytes, node: Node) -> None:
        parent.children[name] = (node.ino, next(self._cookies))
        node.nlink += 1
        if stat.S_ISDIR(node.mode):
            self._parent[node.ino] = parent.ino
        parent.mtime = parent.ctime = node.ctime = _now()

    def _unlink(self, parent: Node, name: bytes) -> None:
        node = self._nodes[parent.children.pop(name)[0]]
        node.nlink -= 1
        parent.mtime = parent.ctime = node.ctime = _now()
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.nlink <= 0 and node.lookups <= 0 and node.ino != 1:
            del self._nodes[node.ino]
            self._parent.pop(node.ino, None)

    def _create(self, ctx: Context, parent_ino: int, name: bytes, mode: int,
                rdev: int = 0) -> Node:
        parent = self._dir(parent_ino)
        if name in parent.children:
            raise _err(errno.EEXIST)
        if not stat.S_IFMT(mode):
            mode |= stat.S_IFREG
        node = Node(next(self._inos), mode, ctx.uid, ctx.gid, rdev)
        self._nodes[node.ino] = node
        self._link(parent, name, node)
        return node

    # --- names --------------------------------------------------------------------------

    def lookup(self, ctx, parent, name):
        with self._lock:
            p = self._dir(parent)
            if name in (b".", b".."):
                return self._entry(self._nodes[parent if name == b"." else self._parent[parent]])
            return self._entry(self._child(p, name))

    def forget(self, ctx, inode, nlookup):
        with self._lock:
            node = self._nodes.get(inode)
            if node is not None:
                node.lookups -= nlookup
                self._maybe_drop(node)

    def getattr(self, ctx, inode, fh):
        with self._lock:
            return self._attr(self._node(inode))

    def setattr(self, ctx, inode, changes: SetAttr, fh):
        with self._lock:
            n = self._node(inode)
            now = _now()
            if changes.mode is not None:
                n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(changes.mode)
            if changes.uid is not None:
                n.uid = changes.uid
            if changes.gid is not None:
                n.gid = changes.gid
            if changes.size is not None:
                if stat.S_ISDIR(n.mode):
                    raise _err(errno.EISDIR)
                del n.data[changes.size:]
                n.data.extend(bytes(changes.size - len(n.data)))
                n.mtime = now
            if changes.atime_now or changes.atime:
                n.atime = now if changes.atime_now else changes.atime
            if changes.mtime_now or changes.mtime:
                n.mtime = now if changes.mtime_now else changes.mtime
            n.ctime = now
            return self._attr(n)

    def readlink(self, ctx, inode):
        with self._lock:
            n = self._node(inode)
            if not stat.S_ISLNK(n.mode):
                raise _err(errno.EINVAL)
            return bytes(n.target)

    def mknod(self, ctx, parent, name, mode, rdev):
        with self._lock:
            return self._entry(self._create(ctx, parent, name, mode, rdev))

    def mkdir(self, ctx, parent, name, mode):
        with self._lock:
            return self._entry(self._create(ctx, parent, name, stat.S_IFDIR | mode))

    def symlink(self, ctx, linkname, parent, name):
        with self._lock:
            node = self._create(ctx, parent, name, stat.S_IFLNK | 0o777)
            node.target = bytes(linkname)
            return self._entry(node)

    def link(self, ctx, inode, newparent, newname):
        with self._lock:
            node, parent = self._node(inode), self._dir(newparent)
            if stat.S_ISDIR(node.mode):
                raise _err(errno.EPERM)
            if newname in parent.children:
                raise _err(errno.EEXIST)
            self._link(parent, newname, node)
            return self._entry(node)

    def unlink(self, ctx, parent, name):
        with self._lock:
            p = self._dir(parent)
            if stat.S_ISDIR(self._child(p, name).mode):
                raise _err(errno.EISDIR)
            self._unlink(p, name)

    def rmdir(self, ctx, parent, name):
        with self._lock:
            p = self._dir(parent)
            node = self._child(p, name)
            if not stat.S_ISDIR(node.mode):
                raise _err(errno.ENOTDIR)
            if node.children:
                raise _err(errno.ENOTEMPTY)
            self._unlink(p, name)

    def rename(self, ctx, olddir, oldname, newdir, newname, flags):
        with self._lock:
            src_dir, dst_dir = self._dir(olddir), self._dir(newdir)
            node = self._child(src_dir, oldname)
            if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == 3:
                raise _err(errno.EINVAL)
            if stat.S_ISDIR(node.mode):          # no directory inside itself
                d = newdir
                while d != 1:
                    if d == node.ino:
                        raise _err(errno.EINVAL)
                    d = self._parent[d]
            other = dst_dir.children.get(newname)
            if flags & RENAME_EXCHANGE:
                if other is None:
                    raise _err(errno.ENOENT)
                a, b = src_dir.children[oldname], dst_dir.children[newname]
                src_dir.children[oldname], dst_dir.children[newname] = b, a
                for ino, parent in ((a[0], dst_dir), (b[0], src_dir)):
                    if stat.S_ISDIR(self._nodes[ino].mode):
                        self._parent[ino] = parent.ino
                return
            if other is not None:
                if other[0] == node.ino:
                    return                        # same inode: rename(2) does nothing
                if flags & RENAME_NOREPLACE:
                    raise _err(errno.EEXIST)
                target = self._nodes[other[0]]
                if stat.S_ISDIR(target.mode) and not stat.S_ISDIR(node.mode):
                    raise _err(errno.EISDIR)
                if stat.S_ISDIR(node.mode) and not stat.S_ISDIR(target.mode):
                    raise _err(errno.ENOTDIR)
                if target.children:
                    raise _err(errno.ENOTEMPTY)
                self._unlink(dst_dir, newname)
            del src_dir.children[oldname]
            node.nlink -= 1
            self._link(dst_dir, newname, node)

    # --- files --------------------------------------------------------------------------

    def create(self, ctx, parent, name, mode, flags):
        with self._lock:
            return self._entry(self._create(ctx, parent, name, mode)), Opened(fh=0)

    def read(self, ctx, inode, fh, offset, size, flags):
        with self._lock:
            n = self._node(inode)
            if stat.S_ISDIR(n.mode):
                raise _err(errno.EISDIR)
            return bytes(n.data[offset:offset + size])

    def write(self, ctx, inode, fh, offset, data, flags, kill_priv):
        payload = data.read()
        with self._lock:
            n = self._node(inode)
            if len(n.data) < offset:
                n.data.extend(bytes(offset - len(n.data)))
            n.data[offset:offset + len(payload)] = payload
            n.mtime = n.ctime = _now()
            if kill_priv:
                n.mode &= ~(stat.S_ISUID | stat.S_ISGID)
            return len(payload)

    def release(self, ctx, inode, fh, flags, flush, lock_owner):
        pass                                      # handles carry no state here

    def flush(self, ctx, inode, fh, lock_owner):
        pass

    def fsync(self, ctx, inode, fh, datasync):
        pass                                      # nothing is more durable than memory here

    # --- directories ----------------------------------------------------------------------

    def readdir(self, ctx, inode, fh, offset):
        with self._lock:
            d = self._dir(inode)
            listing = [(b".", inode, 1), (b"..", self._parent[inode], 2)] + sorted(
                ((name, ino, cookie) for name, (ino, cookie) in d.children.items()),
                key=lambda e: e[2])
            entries = [DirEntry(ino, cookie, stat.S_IFMT(self._nodes[ino].mode) >> 12, name)
                       for name, ino, cookie in listing if cookie > offset]
        yield from entries

    def releasedir(self, ctx, inode, fh, flags):
        pass

    def statfs(self, ctx, inode):
        with self._lock:
            used = sum(len(n.data) for n in self._nodes.values()) // 4096 + 1
            files = len(self._nodes)
        total = max(1 << 18, used * 2)            # claim 1 GiB, or twice what is used
        return StatFs(blocks=total, bfree=total - used, bavail=total - used,
                      files=files + 1_000_000, ffree=1_000_000, bsize=4096, namelen=255,
                      frsize=4096)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve an empty in-memory file system to a VM.")
    p.add_argument("--socket-path", required=True, help="vhost-user socket to listen on")
    p.add_argument("--tag", default="memfs", help="tag for front-ends that ask the back-end")
    p.add_argument("--guest-page-size", type=int, default=4096)
    p.add_argument("--ops-log", help="append one JSON line per request to this file")
    args = p.parse_args(argv)
    return pyvirtiofsd.serve(MemFs(os.getuid(), os.getgid()), args.socket_path, tag=args.tag,
                             guest_page_size=args.guest_page_size, ops_log=args.ops_log)


if __name__ == "__main__":
    sys.exit(main())
