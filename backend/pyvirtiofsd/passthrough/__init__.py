"""Serve a host directory: :class:`PassthroughFs` and the tables behind it.

``fs.py`` the file system · ``inodes.py`` nodeid → O_PATH fd · ``handles.py`` fh → fd ·
``credentials.py`` acting as the guest user · ``syscalls.py`` what :mod:`os` lacks.
"""
from pyvirtiofsd.passthrough.fs import PassthroughFs

__all__ = ["PassthroughFs"]
