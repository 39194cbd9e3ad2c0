"""The sans-IO vhost-user codec on arbitrary bytes: it parses or raises CodecError, never
anything else, and what it accepts is exactly what the wire format allows."""
from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from fuzzstats import count_case
from pyvirtiofsd.vhost_user import codec
from pyvirtiofsd.vhost_user.protocol import HEADER_SIZE, MAX_PAYLOAD, FrontendReq

REQUESTS = st.one_of(st.sampled_from([int(r) for r in FrontendReq]), st.integers(0, 2**32 - 1))
FLAGS = st.one_of(st.sampled_from([1, 1 | 4, 1 | 8, 1 | 4 | 8]), st.integers(0, 2**32 - 1))


def header(request, flags, size):
    return struct.pack("<III", request, flags, size)


@st.composite
def streams(draw):
    """A byte stream of plausible messages mixed with garbage, cut into random chunks."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            body = draw(st.binary(max_size=300))
            size = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1)))
            parts.append(header(draw(REQUESTS), draw(FLAGS), size) + body)
        else:
            parts.append(draw(st.binary(max_size=64)))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


@given(streams())
def test_parser_takes_any_stream(chunks):
    count_case("codec_stream")
    p = codec.Parser()
    fed = 0
    for i, chunk in enumerate(chunks):
        p.feed(chunk, [1000 + i] if chunk else None)
        fed += len(chunk)
        while True:
            assert p.wanted() >= 0
            try:
                msg = p.next_message()
            except codec.CodecError:
                return  # the stream is broken: the caller ends the session
            if msg is None:
                break
            assert len(msg.payload) <= MAX_PAYLOAD
            assert msg.flags & 3 == 1 and not msg.flags & ~0xF
            try:
                codec.decode_body(msg)
            except codec.CodecError:
                pass


@given(REQUESTS, st.binary(max_size=2100))
def test_every_body_decodes_or_raises_codec_error(request, payload):
    count_case("codec_body")
    msg = codec.Message(request, 1, payload)
    msg.name()
    try:
        body = codec.decode_body(msg)
    except codec.CodecError:
        return
    if isinstance(body, codec.MemTable):
        assert len(body.regions) <= 8 and len(payload) >= 8 + 32 * len(body.regions)
    if isinstance(body, codec.Config):
        assert body.size <= 256 and len(body.data) == body.size


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_header_validation(raw):
    count_case("codec_header")
    request, flags, size = struct.unpack("<III", raw)
    try:
        assert codec.decode_header(raw) == (request, flags, size)
    except codec.CodecError:
        assert flags & 3 != 1 or flags & ~0xF or size > MAX_PAYLOAD
    else:
        assert flags & 3 == 1 and not flags & ~0xF and size <= MAX_PAYLOAD


U32, U64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)


@given(st.one_of(
    st.builds(codec.U64, U64), st.builds(codec.VringState, U32, U32),
    st.builds(codec.VringAddr, U32, U32, U64, U64, U64, U64),
    st.builds(codec.MemTable, st.lists(st.builds(codec.MemRegion, U64, U64, U64, U64), max_size=8)),
    st.builds(codec.SingleMemRegion, st.builds(codec.MemRegion, U64, U64, U64, U64)),
    st.builds(codec.VringFd, st.integers(0, 255), st.booleans()),
    st.builds(lambda o, d, f: codec.Config(o, len(d), f, d), U32, st.binary(max_size=256), U32),
    st.builds(codec.ShmemMap, st.integers(0, 255), U64, U64, U64, U64),
))
def test_bodies_round_trip(body):
    count_case("codec_roundtrip")
    assert type(body).unpack(body.pack()) == body
