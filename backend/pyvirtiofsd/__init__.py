"""pyvirtiofsd: a virtio-fs vhost-user device backend.

Serve a host directory: ``python -m pyvirtiofsd --socket-path S --shared-dir D``.

Serve your own file system from Python: subclass :class:`FileSystem` (one method per FUSE
operation; see :mod:`pyvirtiofsd.filesystem`) and hand it to :func:`serve`::

    import pyvirtiofsd
    pyvirtiofsd.serve(MyFs(), "/tmp/vfs.sock", tag="myfs", readonly=True)

``examples/memfs.py`` (in-memory, read-write) and ``examples/archivefs.py`` (a zip or tar
archive, read-only) are complete file systems to start from.
"""
__version__ = "0.1.0"

# Loaded on first use: importing the package stays cheap (no C extension, no threads, not
# even the value types) for ``pyvirtiofsd --version`` and for the daemon's command line,
# which listens on its socket before it imports the rest of the daemon.
_FILESYSTEM = ("Attr", "Context", "DirEntry", "Entry", "FileRange", "FileSystem", "Opened",
               "SetAttr", "StatFs", "Statx", "WriteData", "dirent_type")
_LAZY = {
    **{name: ("filesystem", name) for name in _FILESYSTEM},
    "serve": ("api", "serve"),
    "build_backend": ("api", "build_backend"),
    "Server": ("server", "Server"),
    "ServerOptions": ("server", "ServerOptions"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Attr", "Context", "DirEntry", "Entry", "FileRange", "FileSystem", "Opened", "SetAttr",
    "StatFs", "Statx", "WriteData", "dirent_type", "serve", "build_backend", "Server",
    "ServerOptions", "__version__",
]
