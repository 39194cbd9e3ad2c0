"""What a device tells the device-agnostic vhost-user back-end (the role rust-vmm's
``VhostUserBackend`` trait plays): its features, config space, shared-memory regions,
and what to do with a started queue."""
from __future__ import annotations

from .protocol import ProtocolFeature, VirtioFeature
from .vring import Handler


class VhostUserDevice:
    """Subclass and override; the defaults describe a device with no config space."""

    #: Total number of virtqueues (GET_QUEUE_NUM and the valid queue indices).
    num_queues: int = 1
    #: Virtio feature bits offered (VHOST_USER_F_PROTOCOL_FEATURES is added by the back-end).
    features: int = int(VirtioFeature.VIRTIO_F_VERSION_1 | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
                        | VirtioFeature.VIRTIO_RING_F_EVENT_IDX)
    #: Protocol feature bits offered on top of the ones the back-end always offers.
    protocol_features: int = 0

    def acked_features(self, features: int) -> None:
        """SET_FEATURES: what the driver accepted."""

    def acked_protocol_features(self, features: int) -> None:
        """SET_PROTOCOL_FEATURES: what the front-end accepted."""

    def handler(self, queue_index: int) -> Handler:
        """The function that serves requests popped from this queue.  Called on the queue's
        own thread; may hand the request to a worker pool and return at once."""
        raise NotImplementedError

    def queue_stopped(self, queue_index: int) -> None:
        """The queue stopped (GET_VRING_BASE or reset)."""

    def get_config(self, offset: int, size: int) -> bytes:
        """GET_CONFIG: ``size`` bytes of config space from ``offset``."""
        raise ValueError("this device has no config space")

    def set_config(self, offset: int, data: bytes) -> None:
        raise ValueError("config space is read-only")

    def shmem_sizes(self) -> list[int]:
        """GET_SHMEM_CONFIG: the size of each shared-memory region, indexed by shmid."""
        return []

    def set_backend_channel(self, channel) -> None:
        """SET_BACKEND_REQ_FD: a channel for back-end → front-end requests (or None)."""

    def memory_changed(self, memory) -> None:
        """The guest memory table changed (the new one is ``memory.table``)."""

    def reset(self) -> None:
        """RESET_DEVICE / RESET_OWNER / disconnect: forget the session (all queues are
        stopped before this is called)."""


# Protocol features every device gets from the back-end.
# LOG_SHMFD: the back-end keeps the dirty log for every device (cext/dirtylog.h).
BASE_PROTOCOL_FEATURES = int(ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                             | ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.RESET_DEVICE
                             | ProtocolFeature.LOG_SHMFD)
