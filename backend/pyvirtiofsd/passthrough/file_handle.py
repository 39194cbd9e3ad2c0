"""Inodes kept as file handles instead of open ``O_PATH`` fds (``--inode-file-handles``).

Why: every inode the guest has looked up normally costs the daemon one open fd.  A guest
that walks a big tree holds hundreds of thousands of lookups -- fd limits, and on NFS an
open fd keeps a deleted file "silly-renamed" on the server.  A file handle
(``name_to_handle_at``) names a file without keeping it open; the daemon reopens it with
``open_by_handle_at`` for the length of one operation.  That needs CAP_DAC_READ_SEARCH
(the daemon keeps it when handles are on) and a file system that can make handles (most
local ones and NFS can; some pseudo file systems cannot).

Modes, as virtiofsd: ``never`` (fds only), ``prefer`` (handles where the file system makes
them, fds elsewhere), ``mandatory`` (a file without a handle cannot be looked up).

The inode store (cext/store.h, "File handles") makes, keeps and opens the handles of the
inodes the guest knows, for the C hot path and Python alike; ``open_by_handle_at`` needs an
fd on the same mount as the file, and the store keeps one per mount the guest has reached.
This module is for what happens outside the store: the start-up probe and migration.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

MAX_HANDLE_SZ = 128
AT_EMPTY_PATH = 0x1000
MODES = ("never", "prefer", "mandatory")


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc = ctypes.CDLL(None, use_errno=True)
_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                               ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_name_to_handle_at.restype = ctypes.c_int
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
_open_by_handle_at.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class FileHandle:
    mount_id: int
    type: int
    data: bytes


def _oserror() -> OSError:
    e = ctypes.get_errno()
    return OSError(e, os.strerror(e))


def handle_of(fd: int) -> FileHandle:
    """The file handle of the file ``fd`` refers to (O_PATH fds work)."""
    fh = _FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    if _name_to_handle_at(fd, b"", ctypes.byref(fh), ctypes.byref(mount_id), AT_EMPTY_PATH) < 0:
        raise _oserror()
    return FileHandle(mount_id.value, fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]))


def open_handle(mount_fd: int, handle: FileHandle, flags: int) -> int:
    """Open the file ``handle`` names; ESTALE once it is gone."""
    fh = _FileHandle()
    fh.handle_bytes = len(handle.data)
    fh.handle_type = handle.type
    ctypes.memmove(fh.f_handle, handle.data, len(handle.data))
    fd = _open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        raise _oserror()
    return fd


def probe(fd: int) -> str | None:
    """Why this process cannot use file handles on ``fd``'s file system, or None if it can
    (make one and open it again: CAP_DAC_READ_SEARCH and file-system support both)."""
    try:
        h = handle_of(fd)
    except OSError as e:
        return f"the file system cannot make file handles ({e.strerror})"
    mount_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        os.close(open_handle(mount_fd, h, os.O_PATH | os.O_CLOEXEC))
    except OSError as e:
        if e.errno == errno.EPERM:
            return "opening file handles needs CAP_DAC_READ_SEARCH"
        return f"cannot open a file handle ({e.strerror})"
    finally:
        os.close(mount_fd)
    return None


__all__ = ["FileHandle", "MODES", "handle_of", "open_handle", "probe"]
