"""The file-system interface a virtio-fs guest talks to, and its value types.

:class:`pyvirtiofsd.server.Server` decodes FUSE requests and calls one :class:`FileSystem`
method per operation; the method's return value becomes the reply.  To serve your own file
system to a VM (in memory, from a zip archive, synthesised), subclass :class:`FileSystem`
and override the operations you support.  Everything you leave alone answers ``ENOSYS``,
which the guest kernel understands as "not implemented" (for several operations it then
stops asking, e.g. FLUSH, FSYNC, xattrs).  :class:`pyvirtiofsd.passthrough.PassthroughFs`
is the implementation that serves a host directory.

Conventions, modelled on the Rust virtiofsd ``FileSystem`` trait:

* Inodes are the ``nodeid`` numbers the guest knows; ``1`` (``FUSE_ROOT_ID``) is the root.
  Every :class:`Entry` you return from ``lookup``/``mkdir``/``create``/... counts as one
  *lookup* of that inode; the guest gives them back through ``forget``/``batch_forget``.
* Handles (``fh``) are numbers you hand out from ``open``/``opendir``/``create``; the guest
  passes them back to ``read``/``write``/``release``... ``0`` is a fine handle for a
  stateless file system.
* Names, link targets and xattr names/values are ``bytes``: FUSE carries no encoding.
* Errors are ``OSError(errno)``; the errno goes to the guest as ``-errno``.  Any other
  exception is a bug in the file system: the server logs it and answers ``EIO``.
* Methods are called concurrently from several worker threads.

The server, not the file system, owns protocol policy: the ``st_blksize`` the guest sees
(always the guest page size, whatever :attr:`Attr.blksize` says), cache timeouts when an
:class:`Entry` leaves them ``None``, read-only mode, and whether xattrs are enabled.

A complete file system, served to a VM (``pyvirtiofsd.serve`` builds the daemon around it;
mount it in the guest with ``mount -t virtiofs hello /mnt``)::

    import errno, stat
    import pyvirtiofsd
    from pyvirtiofsd import Attr, DirEntry, Entry, FileSystem

    class Hello(FileSystem):
        TEXT = b"hello\\n"

        def getattr(self, ctx, inode, fh):
            if inode == 1:
                return Attr(ino=1, mode=stat.S_IFDIR | 0o755, nlink=2)
            return Attr(ino=2, mode=stat.S_IFREG | 0o444, size=len(self.TEXT))

        def lookup(self, ctx, parent, name):
            if parent != 1 or name != b"hello.txt":
                raise OSError(errno.ENOENT, "no such file")
            return Entry(2, 0, self.getattr(ctx, 2, None))

        def readdir(self, ctx, inode, fh, offset):
            entries = [(1, stat.S_IFDIR, b"."), (1, stat.S_IFDIR, b".."),
                       (2, stat.S_IFREG, b"hello.txt")]
            for i, (ino, mode, name) in enumerate(entries[offset:], offset + 1):
                yield DirEntry(ino, i, mode >> 12, name)

        def read(self, ctx, inode, fh, offset, size, flags):
            return self.TEXT[offset:offset + size]

    pyvirtiofsd.serve(Hello(), "/tmp/hello.sock", tag="hello", readonly=True)

What to implement:

* to be mounted and listed: ``getattr`` (at least of inode 1), ``lookup``, ``readdir``;
* to be read: ``read`` -- ``open``/``opendir`` only if you need per-open state (without
  them the guest is told not to send OPEN/OPENDIR and every handle is 0), ``readlink``
  for symlinks, ``statfs`` for ``df``;
* to be written: ``create``, ``write``, ``setattr`` (truncate, chmod, utimes), ``mkdir``,
  ``unlink``, ``rmdir``, ``rename``, and whatever else the guest's programs call;
* ``forget`` if inodes can go away: an inode the guest has looked up must keep answering
  to its ``nodeid`` until its lookups are forgotten (an unlinked file stays open-able).

``examples/memfs.py`` (read-write, in memory) and ``examples/archivefs.py`` (a zip or tar
archive, read-only) in the source tree are complete, tested file systems to start from.
"""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Iterable

from pyvirtiofsd.fstypes import (  # noqa: F401 - dirent_type: importable from here too
    Attr, Context, DirEntry, Entry, FileRange, Opened, SetAttr, StatFs, Statx, WriteData,
    dirent_type,
)

if TYPE_CHECKING:
    from pyvirtiofsd.offload import Offload, ReplyPolicy

__all__ = [
    "Attr", "Context", "DirEntry", "Entry", "FileRange", "FileSystem", "Opened", "SetAttr",
    "StatFs", "Statx", "WriteData",
]


def _enosys() -> OSError:
    return OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))


DIRPLUS_END, DIRPLUS_FULL, DIRPLUS_PYTHON = 0, 1, 2
"""Why :meth:`FileSystem.readdirplus_records` stopped."""


class FileSystem:
    """Base class: one method per FUSE operation, each answering ``ENOSYS``.

    Exceptions to "everything is ENOSYS": :meth:`init` accepts what the server proposes,
    :meth:`destroy`/:meth:`forget` do nothing, :meth:`batch_forget` calls :meth:`forget`,
    and :meth:`statx` is derived from :meth:`getattr` by the server when left alone.
    Two optional capabilities answer "not supported" by default: :meth:`lookup_count`
    (``None``) and :meth:`readdirplus_records` (nothing packed).
    If :meth:`open` (or :meth:`opendir`) is not overridden the server offers the guest
    ``FUSE_NO_OPEN_SUPPORT`` (``FUSE_NO_OPENDIR_SUPPORT``), so a stateless file system
    needs neither.
    """

    # --- lifecycle ------------------------------------------------------------------------

    def init(self, flags: int) -> int:
        """A guest mounted us.  ``flags`` are the FUSE_INIT flags (64-bit, ``FUSE_*`` in
        :mod:`pyvirtiofsd.fuse.abi`) the server is about to enable; return the subset to keep.
        Note e.g. ``FUSE_WRITEBACK_CACHE``: with it the guest may READ files opened
        write-only and computes O_APPEND offsets itself."""
        return flags

    def destroy(self) -> None:
        """The session ended (FUSE_DESTROY, or a new INIT): drop every inode and handle."""

    def offload(self, policy: "ReplyPolicy") -> "Offload | None":
        """Optional: which requests the C hot path may serve for this file system, and from
        which C store (see :mod:`pyvirtiofsd.offload`).  The default, ``None``: all of them
        come to these methods."""
        return None

    # --- names and inodes ---------------------------------------------------------------

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        """Resolve ``name`` in directory ``parent``; one lookup count on the result."""
        raise _enosys()

    def forget(self, ctx: Context, inode: int, nlookup: int) -> None:
        """The guest dropped ``nlookup`` lookups of ``inode`` (no reply is sent)."""

    def batch_forget(self, ctx: Context, requests: list[tuple[int, int]]) -> None:
        """Several forgets: ``(inode, nlookup)`` pairs."""
        for inode, nlookup in requests:
            self.forget(ctx, inode, nlookup)

    def lookup_count(self, inode: int) -> int | None:
        """Optional: how many lookups of ``inode`` the guest still holds (0: it forgot it
        all).  The server asks after FORGET/BATCH_FORGET, so that a DAX window drops the
        mappings of an inode the guest can no longer reach.  The default, ``None``, means
        "not counted": the inode is taken as still known and its mappings stay until
        REMOVEMAPPING, DESTROY or a reset."""
        return None

    def getattr(self, ctx: Context, inode: int, fh: int | None) -> Attr | tuple[Attr, float]:
        """Attributes of ``inode`` (``fh`` when the guest asked through an open file).
        Return an :class:`Attr`, or ``(attr, timeout_seconds)`` to override cache policy."""
        raise _enosys()

    def setattr(self, ctx: Context, inode: int, changes: SetAttr,
                fh: int | None) -> Attr | tuple[Attr, float]:
        """Apply ``changes``; return the new attributes."""
        raise _enosys()

    def statx(self, ctx: Context, inode: int, fh: int | None, flags: int,
              mask: int) -> Statx | tuple[Statx, float]:
        """Extended attributes (btime...) for ``statx(2)`` in the guest.  ``flags`` are the
        ``AT_STATX_*`` sync bits, ``mask`` the ``STATX_*`` fields wanted.  Optional: when
        this answers ENOSYS the server answers from :meth:`getattr`."""
        raise _enosys()

    def readlink(self, ctx: Context, inode: int) -> bytes:
        """The target of symlink ``inode``."""
        raise _enosys()

    def symlink(self, ctx: Context, linkname: bytes, parent: int, name: bytes) -> Entry:
        """Create symlink ``name`` in ``parent`` pointing at ``linkname``."""
        raise _enosys()

    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        """Create a file node (regular, FIFO, socket, device); ``rdev`` is a host dev_t.
        ``mode`` already has the guest's umask applied (``ctx.umask`` is informational)."""
        raise _enosys()

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int) -> Entry:
        """Create directory ``name`` in ``parent``."""
        raise _enosys()

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        raise _enosys()

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        raise _enosys()

    def rename(self, ctx: Context, olddir: int, oldname: bytes, newdir: int, newname: bytes,
               flags: int) -> None:
        """``renameat2``: ``flags`` may hold ``RENAME_NOREPLACE`` (1), ``RENAME_EXCHANGE``
        (2), ``RENAME_WHITEOUT`` (4)."""
        raise _enosys()

    def link(self, ctx: Context, inode: int, newparent: int, newname: bytes) -> Entry:
        """Hard-link ``inode`` as ``newname`` in ``newparent``."""
        raise _enosys()

    # --- files ----------------------------------------------------------------------------

    def open(self, ctx: Context, inode: int, flags: int) -> Opened:
        """Open ``inode`` with ``open(2)`` ``flags``; return a handle."""
        raise _enosys()

    def create(self, ctx: Context, parent: int, name: bytes, mode: int,
               flags: int) -> tuple[Entry, Opened]:
        """Create and open ``name`` in ``parent`` (atomic ``open(O_CREAT)``)."""
        raise _enosys()

    def tmpfile(self, ctx: Context, parent: int, mode: int, flags: int) -> tuple[Entry, Opened]:
        """An unnamed file in directory ``parent`` (``O_TMPFILE``)."""
        raise _enosys()

    def read(self, ctx: Context, inode: int, fh: int, offset: int, size: int,
             flags: int) -> bytes | FileRange:
        """Up to ``size`` bytes at ``offset``.  Return bytes (short at end of file), or a
        :class:`FileRange` to have the server read them from a file descriptor."""
        raise _enosys()

    def write(self, ctx: Context, inode: int, fh: int, offset: int, data: WriteData,
              flags: int, kill_priv: bool) -> int:
        """Write ``data`` at ``offset``; return bytes written.  ``kill_priv`` asks to drop
        suid/sgid (only sent when HANDLE_KILLPRIV is negotiated)."""
        raise _enosys()

    def flush(self, ctx: Context, inode: int, fh: int, lock_owner: int) -> None:
        """A descriptor of the open file was closed in the guest (``close(2)``)."""
        raise _enosys()

    def fsync(self, ctx: Context, inode: int, fh: int, datasync: bool) -> None:
        raise _enosys()

    def release(self, ctx: Context, inode: int, fh: int, flags: int, flush: bool,
                lock_owner: int) -> None:
        """The last reference to the open file went away: forget handle ``fh``."""
        raise _enosys()

    def fallocate(self, ctx: Context, inode: int, fh: int, mode: int, offset: int,
                  length: int) -> None:
        raise _enosys()

    def lseek(self, ctx: Context, inode: int, fh: int, offset: int, whence: int) -> int:
        """``SEEK_DATA``/``SEEK_HOLE`` (the guest handles SET/CUR/END itself)."""
        raise _enosys()

    def copy_file_range(self, ctx: Context, inode_in: int, fh_in: int, off_in: int,
                        inode_out: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        """Copy within the file system; return bytes copied."""
        raise _enosys()

    # --- directories ------------------------------------------------------------------------

    def opendir(self, ctx: Context, inode: int, flags: int) -> Opened:
        raise _enosys()

    def readdir(self, ctx: Context, inode: int, fh: int, offset: int) -> Iterable[DirEntry]:
        """Entries of the directory after cookie ``offset`` (0: from the start).

        Return an iterable (a generator is ideal): the server takes entries until the
        guest's buffer is full and then closes the generator, so produce them lazily and
        release resources in a ``finally``.  Each entry's ``offset`` must let a later call
        continue right after it.  For READDIRPLUS the server calls :meth:`lookup` on each
        entry it sends (not on ``.`` and ``..``), unless the file system packs the records
        itself (:meth:`readdirplus_records`).
        """
        raise _enosys()

    def readdirplus_records(self, ctx: Context, inode: int, fh: int, offset: int, room: int,
                            blksize: int, timeout: float) -> tuple[bytes, int, int]:
        """Optional: READDIRPLUS records packed by the file system itself, for one that can
        build them faster than the server's :meth:`readdir` + :meth:`lookup` (PassthroughFs:
        in C).  Returns ``(records, next_offset, why)``: whole ``fuse_direntplus`` records
        from ``offset`` on, at most ``room`` bytes, every attribute with ``blksize`` and
        ``timeout``, each lookup counted as :meth:`lookup` would; ``why`` is
        ``DIRPLUS_END`` (end of directory), ``DIRPLUS_FULL`` (the next record does not fit
        ``room``) or ``DIRPLUS_PYTHON`` (the server continues from ``next_offset`` with
        :meth:`readdir` and :meth:`lookup`).

        The default packs nothing (``DIRPLUS_PYTHON`` from ``offset``): not supported.  The
        server checks once, when it is built, whether a file system overrides this, and
        uses it only where its own packing would add nothing (no DAX attribute flag, no
        uid/gid translation)."""
        return b"", offset, DIRPLUS_PYTHON

    def releasedir(self, ctx: Context, inode: int, fh: int, flags: int) -> None:
        raise _enosys()

    def fsyncdir(self, ctx: Context, inode: int, fh: int, datasync: bool) -> None:
        raise _enosys()

    # --- DAX ------------------------------------------------------------------------------

    def open_for_mapping(self, ctx: Context, inode: int, fh: int | None,
                         writable: bool) -> tuple[int, bool]:
        """An fd the DAX window may ask the VMM to mmap (FUSE_SETUPMAPPING): a new fd the
        caller owns, and whether it is open for writing.  ``fh`` is the handle the guest
        named, or ``None`` (Linux sends fh = -1 and means the inode).  A ``writable``
        mapping needs a handle (when named) and an fd that allow writing.  Open read-write
        whenever you may: QEMU maps every fd writable, even for read-only mappings.  Only a
        file system whose files are host files can support DAX."""
        raise _enosys()

    # --- the file system as a whole ----------------------------------------------------

    def statfs(self, ctx: Context, inode: int) -> StatFs:
        raise _enosys()

    def syncfs(self, ctx: Context, inode: int) -> None:
        raise _enosys()

    def access(self, ctx: Context, inode: int, mask: int) -> None:
        """Check ``access(2)`` ``mask`` for the caller in ``ctx``; raise EACCES if denied."""
        raise _enosys()

    # --- extended attributes -----------------------------------------------------------

    def getxattr(self, ctx: Context, inode: int, name: bytes) -> bytes:
        """The whole value (the server deals with the guest's size probing and ERANGE)."""
        raise _enosys()

    def listxattr(self, ctx: Context, inode: int) -> list[bytes]:
        """The names (the server joins them with NULs)."""
        raise _enosys()

    def setxattr(self, ctx: Context, inode: int, name: bytes, value: bytes, flags: int) -> None:
        """``flags``: ``XATTR_CREATE``/``XATTR_REPLACE``."""
        raise _enosys()

    def removexattr(self, ctx: Context, inode: int, name: bytes) -> None:
        raise _enosys()
