"""Serve a host directory: :class:`PassthroughFs` and the tables behind it.

``fs.py`` the file system, put together from its operation groups: ``names.py`` (lookup,
attributes, creating and removing names) · ``files.py`` (open files, I/O, DAX fds) ·
``dirs.py`` (listing) · ``xattrs.py`` · ``common.py`` (what they share).  What is behind
them: ``store.py`` the C store of inodes and open handles · ``offload.py`` what the C hot
path may serve · ``file_handle.py`` inodes kept as file handles · ``credentials.py`` acting as the guest
user · ``idmap.py`` uid/gid translation · ``xattrmap.py`` xattr renaming ·
``syscalls.py`` what :mod:`os` lacks.
"""
from pyvirtiofsd.passthrough.fs import PassthroughFs

__all__ = ["PassthroughFs"]
