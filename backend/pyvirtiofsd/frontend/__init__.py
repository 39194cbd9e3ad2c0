"""The other side of the socket: a vhost-user front-end with guest RAM, virtqueues and a
FUSE client, so any vhost-user-fs back-end can be driven without a VM (tests, fuzzing,
benchmarks)."""
from .fuse_client import FuseClient, Reply
from .memory import Allocator, GuestRAM
from .vhost import BackendError, VhostUserFrontend, connect_unix
from .virtqueue import DriverQueue

__all__ = ["Allocator", "BackendError", "DriverQueue", "FuseClient", "GuestRAM", "Reply",
           "VhostUserFrontend", "connect_unix"]
