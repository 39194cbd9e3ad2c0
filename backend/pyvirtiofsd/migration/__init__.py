"""Live migration of the device state (vhost-user DEVICE_STATE): what a destination daemon
needs to go on serving the guest's FUSE session with the same nodeids and file handles.

Imported only when a transfer happens (SET_DEVICE_STATE_FD): the daemon loads only the
daemon.  The format and both halves (save on the source, load on the destination) are in
:mod:`.state`.
"""
from .state import MigrationError, MigrationOptions, load, save

__all__ = ["MigrationError", "MigrationOptions", "load", "save"]
