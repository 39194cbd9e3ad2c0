"""The sans-IO vhost-user codec: header rules, every body layout, incremental parsing."""
import struct

import pytest

from pyvirtiofsd.vhost_user import codec
from pyvirtiofsd.vhost_user.codec import CodecError, Message, Parser
from pyvirtiofsd.vhost_user.protocol import FLAG_NEED_REPLY, FrontendReq as R, VERSION


def test_reply_flags_are_exactly_version_and_reply():
    data = codec.encode_reply(R.GET_FEATURES, codec.U64(5).pack())
    assert struct.unpack_from("<III", data) == (R.GET_FEATURES, 0x5, 8)


@pytest.mark.parametrize("flags", [0x0, 0x2, 0x3, 0x10 | VERSION, 0x100 | VERSION])
def test_bad_header_flags_are_refused(flags):
    with pytest.raises(CodecError):
        codec.decode_header(struct.pack("<III", 1, flags, 0))


def test_oversized_payload_is_refused():
    with pytest.raises(CodecError):
        codec.decode_header(struct.pack("<III", 1, VERSION, 1 << 20))


def test_parser_assembles_messages_fed_byte_by_byte_and_keeps_fds_with_their_header():
    a = codec.encode(R.SET_VRING_KICK, codec.VringFd(1, False).pack(), VERSION)
    b = codec.encode(R.GET_FEATURES)
    p = Parser()
    p.feed(a[:1], [7])
    for byte in a[1:]:
        assert p.next_message() is None
        p.feed(bytes([byte]))
    m1 = p.next_message()
    p.feed(b, [9])
    m2 = p.next_message()
    assert (m1.request, m1.fds, codec.decode_body(m1)) == (R.SET_VRING_KICK, [7], codec.VringFd(1, False))
    assert (m2.request, m2.fds, m2.payload) == (R.GET_FEATURES, [9], b"")
    assert p.next_message() is None


def test_parser_wanted_asks_for_exactly_one_message():
    p = Parser()
    assert p.wanted() == 12
    p.feed(codec.encode(R.SET_FEATURES, codec.U64(1).pack())[:12])
    assert p.next_message() is None and p.wanted() == 8


@pytest.mark.parametrize("body", [
    codec.U64(0xDEADBEEF),
    codec.VringState(3, 256),
    codec.VringAddr(1, 0, 0x1000, 0x2000, 0x3000, 0),
    codec.MemTable([codec.MemRegion(0, 0xA0000, 0x7F0000000000, 0),
                    codec.MemRegion(0xC0000, 0xFF40000, 0x7F00000C0000, 0xC0000)]),
    codec.SingleMemRegion(codec.MemRegion(0x100000, 0x1000, 0x7000, 0x2000)),
    codec.VringFd(2, True),
    codec.Config(0, 4, 0, b"abcd"),
    codec.ShmemMap(0, 0x200000, 0x400000, 0x200000, 1),
    codec.ShmemConfig([1 << 30]),
])
def test_bodies_round_trip(body):
    assert type(body).unpack(body.pack()) == body


def test_shmem_config_layout():
    raw = codec.ShmemConfig([0, 1 << 21]).pack()
    assert len(raw) == 2056
    assert struct.unpack_from("<IIQQ", raw) == (1, 0, 0, 1 << 21)


def test_memory_table_sent_with_only_its_regions_is_accepted():
    # QEMU sends 8 + 32*n bytes (observed: 72 for two regions), not the full 8 slots.
    table = codec.MemTable([codec.MemRegion(0, 0x1000, 0, 0)] * 2)
    assert len(table.pack()) == 72
    assert codec.MemTable.unpack(table.pack()) == table


@pytest.mark.parametrize("payload", [
    b"",                                         # no header
    struct.pack("<II", 9, 0) + bytes(32 * 9),    # more than 8 regions
    struct.pack("<II", 2, 0) + bytes(32),        # fewer regions than it claims
])
def test_malformed_memory_tables(payload):
    with pytest.raises(CodecError):
        codec.MemTable.unpack(payload)


@pytest.mark.parametrize("request_id,payload", [
    (R.SET_FEATURES, b"\0" * 4),
    (R.SET_VRING_ADDR, b"\0" * 39),
    (R.SET_VRING_KICK, codec.U64(0x200).pack()),      # unknown bit
    (R.GET_CONFIG, struct.pack("<III", 0, 300, 0)),   # size past the limit
    (R.GET_CONFIG, struct.pack("<III", 0, 8, 0) + b"1234"),  # shorter than its size
    (R.ADD_MEM_REG, bytes(39)),
])
def test_truncated_or_inconsistent_bodies_raise(request_id, payload):
    with pytest.raises(CodecError):
        codec.decode_body(Message(request_id, VERSION, payload))


def test_message_flags():
    m = Message(R.SET_MEM_TABLE, VERSION | FLAG_NEED_REPLY)
    assert m.need_reply and not m.is_reply and m.name() == "SET_MEM_TABLE"
    assert Message(999).name() == "UNKNOWN_999"
