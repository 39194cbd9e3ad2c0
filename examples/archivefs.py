"""A zip or tar archive served to a VM as a read-only file system.

    python examples/archivefs.py backup.tar.gz --socket-path /tmp/archive.sock --tag archive
    # in the guest:  mount -t virtiofs archive /mnt   (writes fail with EROFS)

The archive is indexed once at start; a member's bytes are decompressed when the guest
first opens or reads it and kept in a small cache.  It shows the read-only side of
:class:`pyvirtiofsd.FileSystem`:

* inode numbers are fixed at start, so ``forget`` has nothing to do;
* nothing ever changes, so entries and attributes carry a long cache timeout and opened
  files ``FOPEN_KEEP_CACHE`` -- the guest keeps its page cache across opens;
* it is served with ``readonly=True``: the server answers every modifying request (and any
  open for writing) with EROFS before the file system sees it.

Member names are cleaned: a leading ``/`` or ``./`` is dropped and names with ``..``
components are skipped, so nothing points outside the tree.  Directories the archive
only implies (``a/b/c.txt`` without ``a/``) are made up with mode 0755.
"""
from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import tarfile
import threading
import time
import zipfile
from collections import OrderedDict

import pyvirtiofsd
from pyvirtiofsd import Attr, DirEntry, Entry, FileSystem, Opened, StatFs
from pyvirtiofsd.fuse.abi import FOPEN_KEEP_CACHE

TIMEOUT = 3600.0            # seconds the guest may cache names and attributes
CACHED_MEMBERS = 16         # decompressed members kept in memory


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Node:
    def __init__(self, ino: int, mode: int, size: int = 0, mtime: int = 0, uid: int = 0,
                 gid: int = 0, member=None, target: bytes = b""):
        self.ino, self.mode, self.size, self.mtime = ino, mode, size, mtime
        self.uid, self.gid, self.member, self.target = uid, gid, member, target
        self.children: dict[bytes, int] = {}


def _clean(name: str) -> list[str] | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return None if ".." in parts else parts


class ArchiveFs(FileSystem):
    def __init__(self, path: str):
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        mtime = int(os.stat(path).st_mtime)
        self._nodes = {1: Node(1, stat.S_IFDIR | 0o755, mtime=mtime)}
        if zipfile.is_zipfile(path):
            self._zip, self._tar = zipfile.ZipFile(path), None
            for info in self._zip.infolist():
                self._add_zip(info)
        else:
            self._zip, self._tar = None, tarfile.open(path)   # any compression tarfile reads
            for member in self._tar.getmembers():
                self._add_tar(member)

    # --- indexing -----------------------------------------------------------------------

    def _add(self, name: str, mode: int, **fields) -> None:
        parts = _clean(name)
        if not parts:
            return
        parent = self._nodes[1]
        for part in parts[:-1]:
            ino = parent.children.get(part.encode())
            if ino is None or not stat.S_ISDIR(self._nodes[ino].mode):
                ino = self._new(parent, part, stat.S_IFDIR | 0o755, mtime=parent.mtime)
            parent = self._nodes[ino]
        existing = parent.children.get(parts[-1].encode())
        if existing is not None and stat.S_ISDIR(mode) and stat.S_ISDIR(self._nodes[existing].mode):
            node = self._nodes[existing]          # an explicit entry for an implied directory
            node.mode, node.mtime = mode, fields.get("mtime", node.mtime)
            return
        self._new(parent, parts[-1], mode, **fields)

    def _new(self, parent: Node, name: str, mode: int, **fields) -> int:
        ino = len(self._nodes) + 1
        self._nodes[ino] = Node(ino, mode, **fields)
        parent.children[name.encode()] = ino
        return ino

    def _add_zip(self, info: zipfile.ZipInfo) -> None:
        mode = info.external_attr >> 16
        if not stat.S_IFMT(mode):                  # made on a system without unix modes
            mode = (stat.S_IFDIR | 0o755) if info.is_dir() else (stat.S_IFREG | 0o644)
        mtime = int(time.mktime(info.date_time + (0, 0, -1)))
        if stat.S_ISLNK(mode):
            self._add(info.filename, mode, mtime=mtime, target=self._zip.read(info))
        elif stat.S_ISDIR(mode):
            self._add(info.filename, mode, mtime=mtime)
        elif stat.S_ISREG(mode):
            self._add(info.filename, mode, size=info.file_size, mtime=mtime, member=info)

    def _add_tar(self, m: tarfile.TarInfo) -> None:
        common = dict(mtime=int(m.mtime), uid=m.uid, gid=m.gid)
        if m.isdir():
            self._add(m.name, stat.S_IFDIR | m.mode, **common)
        elif m.issym():
            self._add(m.name, stat.S_IFLNK | 0o777, target=os.fsencode(m.linkname), **common)
        elif m.isfile() or m.islnk():             # a hard link reads as its target's bytes
            try:
                size = m.size if m.isfile() else self._tar.getmember(m.linkname).size
            except KeyError:                      # a link to a member that is not there
                return
            self._add(m.name, stat.S_IFREG | m.mode, size=size, member=m, **common)

    # --- helpers ------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def _attr(self, n: Node) -> Attr:
        size = len(n.target) if stat.S_ISLNK(n.mode) else n.size
        return Attr(ino=n.ino, size=size, blocks=(size + 511) // 512, mode=n.mode,
                    nlink=2 if stat.S_ISDIR(n.mode) else 1, uid=n.uid, gid=n.gid,
                    atime=n.mtime, mtime=n.mtime, ctime=n.mtime)

    def _content(self, n: Node) -> bytes:
        with self._lock:
            data = self._cache.get(n.ino)
            if data is None:
                if self._zip is not None:
                    data = self._zip.read(n.member)
                else:
                    data = self._tar.extractfile(n.member).read()
                self._cache[n.ino] = data
                if len(self._cache) > CACHED_MEMBERS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(n.ino)
            return data

    # --- the FileSystem -----------------------------------------------------------------

    def lookup(self, ctx, parent, name):
        p = self._node(parent)
        if not stat.S_ISDIR(p.mode):
            raise _err(errno.ENOTDIR)
        if name not in p.children:
            raise _err(errno.ENOENT)
        n = self._nodes[p.children[name]]
        return Entry(n.ino, 0, self._attr(n), entry_timeout=TIMEOUT, attr_timeout=TIMEOUT)

    def getattr(self, ctx, inode, fh):
        return self._attr(self._node(inode)), TIMEOUT

    def readlink(self, ctx, inode):
        n = self._node(inode)
        if not stat.S_ISLNK(n.mode):
            raise _err(errno.EINVAL)
        return n.target

    def open(self, ctx, inode, flags):
        n = self._node(inode)
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            raise _err(errno.EROFS)
        if stat.S_ISDIR(n.mode):
            raise _err(errno.EISDIR)
        self._content(n)                        # decompress now: reads should not fail
        return Opened(fh=inode, open_flags=FOPEN_KEEP_CACHE)

    def read(self, ctx, inode, fh, offset, size, flags):
        n = self._node(inode)
        if n.member is None:
            raise _err(errno.EISDIR if stat.S_ISDIR(n.mode) else errno.EINVAL)
        return self._content(n)[offset:offset + size]

    def release(self, ctx, inode, fh, flags, flush, lock_owner):
        pass

    def readdir(self, ctx, inode, fh, offset):
        d = self._node(inode)
        if not stat.S_ISDIR(d.mode):
            raise _err(errno.ENOTDIR)
        names = [(b".", inode), (b"..", inode)] + list(d.children.items())
        for i, (name, ino) in enumerate(names[offset:], offset + 1):
            yield DirEntry(ino, i, stat.S_IFMT(self._nodes[ino].mode) >> 12, name)

    def statfs(self, ctx, inode):
        blocks = sum(n.size for n in self._nodes.values()) // 4096 + 1
        return StatFs(blocks=blocks, bfree=0, bavail=0, files=len(self._nodes), ffree=0,
                      bsize=4096, namelen=255, frsize=4096)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a zip or tar archive to a VM, read-only.")
    p.add_argument("archive", help="a .zip, .tar, .tar.gz, .tar.xz or .tar.bz2 file")
    p.add_argument("--socket-path", required=True, help="vhost-user socket to listen on")
    p.add_argument("--tag", default="archive", help="tag for front-ends that ask the back-end")
    p.add_argument("--guest-page-size", type=int, default=4096)
    args = p.parse_args(argv)
    try:
        fs = ArchiveFs(args.archive)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        p.error(f"cannot read {args.archive}: {e}")
    return pyvirtiofsd.serve(fs, args.socket_path, tag=args.tag, readonly=True,
                             guest_page_size=args.guest_page_size)


if __name__ == "__main__":
    sys.exit(main())
