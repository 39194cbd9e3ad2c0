"""vhost-user numbers: message ids, header flags, feature bits (names from the spec,
docs/interop/vhost-user.rst in QEMU, with the old SLAVE_* names spelled BACKEND_*)."""
from __future__ import annotations

import enum


class FrontendReq(enum.IntEnum):
    """Messages a front-end (the VMM) sends on the main socket."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43
    GET_SHMEM_CONFIG = 44


class BackendReq(enum.IntEnum):
    """Messages a back-end sends on the backend channel (SET_BACKEND_REQ_FD)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8
    SHMEM_MAP = 9
    SHMEM_UNMAP = 10


# Header flags.
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

HEADER_SIZE = 12
MAX_PAYLOAD = 4096   # the largest message we accept (SHMEM config is 2056 bytes)
MAX_FDS = 8          # fds per message (VHOST_MEMORY_BASELINE_NREGIONS)
MAX_MEM_REGIONS = 8  # regions in one SET_MEM_TABLE
MAX_MEM_SLOTS = 509  # what we answer to GET_MAX_MEM_SLOTS (ADD_MEM_REG variant)

# SET_VRING_ADDR flags: log used-ring writes at the message's `log` address.
VHOST_VRING_F_LOG = 0x1

# Bits of SET_VRING_KICK/CALL/ERR payloads.
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100


class VirtioFeature(enum.IntFlag):
    """Device feature bits (GET/SET_FEATURES) that a vhost-user-fs back-end deals with."""

    VIRTIO_FS_F_NOTIFICATION = 1 << 0
    VIRTIO_F_NOTIFY_ON_EMPTY = 1 << 24
    VHOST_F_LOG_ALL = 1 << 26
    VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
    VIRTIO_RING_F_EVENT_IDX = 1 << 29
    VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
    VIRTIO_F_VERSION_1 = 1 << 32
    VIRTIO_F_ACCESS_PLATFORM = 1 << 33
    VIRTIO_F_RING_PACKED = 1 << 34


class ProtocolFeature(enum.IntFlag):
    """Protocol feature bits (GET/SET_PROTOCOL_FEATURES).  SHMEM's bit is contested
    (22 upstream, 21 in alioth and old rust-vmm), so it is not a member: see
    :func:`shmem_bit`."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16
    XEN_MMAP = 1 << 17
    SHARED_OBJECT = 1 << 18
    DEVICE_STATE = 1 << 19
    GET_VRING_BASE_INFLIGHT = 1 << 20
    GPA_ADDRESSES = 1 << 21


SHMEM_BIT_DEFAULT = 22


def shmem_bit(bit: int = SHMEM_BIT_DEFAULT) -> int:
    """The protocol feature mask for VHOST_USER_PROTOCOL_F_SHMEM at ``bit``."""
    if bit not in (20, 21, 22):
        raise ValueError("the SHMEM protocol bit is 20, 21 or 22")
    return 1 << bit


# Virtio device status bits (SET/GET_STATUS).
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128

# Flags of VhostUserMMap (SHMEM_MAP).
SHMEM_MAP_RW = 1
