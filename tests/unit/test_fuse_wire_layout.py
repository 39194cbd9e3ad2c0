"""cext/fusewire.h, the C side of the FUSE wire layout, against pyvirtiofsd.fuse.abi, the
reference: every struct's size, every field's offset, size and signedness, every opcode and
flag -- in both extensions that carry the header (the daemon's _cext and the test kit's
_testkit), since each compiles it on its own.

The expected offsets are not written down here: they come from abi.py's struct format
strings and field names, so a field moved on either side fails this test.
"""
import re
import struct

import pytest

from pyvirtiofsd import _cext, _testkit
from pyvirtiofsd.fuse import abi

EXTENSIONS = {"_cext": _cext, "_testkit": _testkit}

# Every WireStruct abi.py defines under its own name (fuse_statfs_out is an alias of
# fuse_kstatfs).  The *_head ones are the fixed first part of a reply whose C struct holds
# the rest too: they are checked through COMPOSITES.
WIRE = {name: ws for name, ws in vars(abi).items()
        if isinstance(ws, abi.WireStruct) and ws.name == name}
HEADS = {name for name in WIRE if name.endswith("_head")}

# C structs that abi.py spells as parts laid end to end: (a WireStruct whose fields are the
# C struct's own, or (C member, a WireStruct or the name of another composite) for a nested
# struct).  The total must equal abi.py's size constant where it has one.
COMPOSITES = {
    "fuse_entry_out": ([abi.fuse_entry_out_head, ("attr", abi.fuse_attr)], abi.FUSE_ENTRY_OUT_SIZE),
    "fuse_attr_out": ([abi.fuse_attr_out_head, ("attr", abi.fuse_attr)], abi.FUSE_ATTR_OUT_SIZE),
    "fuse_statx_out": ([abi.fuse_statx_out_head, ("stat", abi.fuse_statx)], abi.FUSE_STATX_OUT_SIZE),
    "fuse_statfs_out": ([("st", abi.fuse_statfs_out)], abi.fuse_statfs_out.size),
    "fuse_direntplus": ([("entry_out", "fuse_entry_out"), ("dirent", abi.fuse_dirent)],
                        abi.direntplus_size(0)),
}

# abi.py flattens fuse_statx's four struct fuse_sx_time members into named fields.
ALIASES = {("fuse_statx", f"{t}_{part}"): (t, member)
           for t in ("atime", "btime", "ctime", "mtime")
           for part, member in (("sec", "tv_sec"), ("nsec", "tv_nsec"), ("reserved", "reserved"))}

# abi.py constants whose C spelling is a sizeof, not a #define.
SIZEOF_CONSTANTS = {"FUSE_ENTRY_OUT_SIZE": "fuse_entry_out", "FUSE_ATTR_OUT_SIZE": "fuse_attr_out",
                    "FUSE_STATX_OUT_SIZE": "fuse_statx_out"}

_CODE = re.compile(r"(\d*)([xbBhHiIqQ])")


def layout(ws: abi.WireStruct) -> list[tuple[str, int, int, bool]]:
    """(field, offset, size, signed) for each named field, from the struct's format string
    ("<" layouts: no implicit padding, an "x" is a padding byte no field names)."""
    fmt = ws.format.removeprefix("<")
    codes = _CODE.findall(fmt)
    assert "".join(n + c for n, c in codes) == fmt, f"{ws.name}: format {fmt!r} not understood"
    names = iter(ws.fields)
    out, pos = [], 0
    for count, code in codes:
        n = int(count or 1)
        size = struct.calcsize("<" + code)
        if code == "x":
            pos += n
            continue
        for _ in range(n):
            out.append((next(names), pos, size, code.islower()))
            pos += size
    assert next(names, None) is None and pos == ws.size, ws.name
    return out


def c_path(t, abi_struct: str, field: str) -> tuple:
    """The member path (for ffi.offsetof) in C struct type ``t`` of abi.py's ``field``: the
    same name, an ``ALIASES`` entry, or ``name3`` for element 3 of the C array ``name``."""
    if (abi_struct, field) in ALIASES:
        return ALIASES[abi_struct, field]
    members = dict(t.fields)
    if field in members:
        return (field,)
    m = re.fullmatch(r"(\D+?)(\d+)", field)
    if m and m[1] in members and members[m[1]].type.kind == "array":
        return (m[1], int(m[2]))
    raise AssertionError(f"{t.cname} has no member for {abi_struct}.{field}")


def member_type(ffi, ctype, path):
    t = ffi.typeof(ctype)
    for step in path:
        t = t.item if isinstance(step, int) else dict(t.fields)[step].type
    return t


def check_fields(ffi, ctype, ws: abi.WireStruct, prefix=(), base=0):
    """Every field of ``ws`` at its offset (from ``base``, under member path ``prefix``)."""
    for field, offset, size, signed in layout(ws):
        path = (*prefix, *c_path(member_type(ffi, ctype, prefix), ws.name, field))
        where = f"{ctype}.{'.'.join(map(str, path))} ({ws.name}.{field})"
        assert ffi.offsetof(ctype, *path) == base + offset, where
        t = member_type(ffi, ctype, path)
        assert t.kind == "primitive" and ffi.sizeof(t) == size, where
        assert (not t.cname.startswith("u")) == signed, f"{where}: {t.cname}"


def check_composite(ffi, ctype, name, prefix=(), base=0) -> int:
    parts, total = COMPOSITES[name]
    pos = 0
    for part in parts:
        if isinstance(part, abi.WireStruct):
            check_fields(ffi, ctype, part, prefix, base + pos)
            pos += part.size
            continue
        member, inner = part
        path = (*prefix, member)
        assert ffi.offsetof(ctype, *path) == base + pos, f"{ctype}.{'.'.join(path)}"
        if isinstance(inner, str):
            size = check_composite(ffi, ctype, inner, path, base + pos)
        else:
            check_fields(ffi, ctype, inner, path, base + pos)
            size = inner.size
        assert ffi.sizeof(member_type(ffi, ctype, path)) == size, f"{ctype}.{member}"
        pos += size
    assert pos == total, name
    return pos


@pytest.fixture(params=sorted(EXTENSIONS))
def ext(request):
    return EXTENSIONS[request.param]


def test_the_layouts_come_from_the_format_strings():
    """The parser above against a few numbers the uapi header fixes, so that it cannot
    silently agree with a wrong C header by being wrong itself."""
    init_out = {f: off for f, off, _, _ in layout(abi.fuse_init_out)}
    assert init_out["max_background"] == 16 and init_out["request_timeout"] == 40
    assert init_out["unused0"] == 44          # after 2 bytes of padding
    attr = {f: off for f, off, _, _ in layout(abi.fuse_attr)}
    assert attr["mode"] == 60 and attr["flags"] == 84
    assert [s for f, _, _, s in layout(abi.fuse_out_header) if f == "error"] == [True]


@pytest.mark.parametrize("name", sorted(set(WIRE) - HEADS))
def test_struct_layout(ext, name):
    ws = WIRE[name]
    ctype = f"struct pvfs_{name}"
    assert ext.ffi.sizeof(ctype) == ws.size
    check_fields(ext.ffi, ctype, ws)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_layout(ext, name):
    ctype = f"struct pvfs_{name}"
    assert ext.ffi.sizeof(ctype) == check_composite(ext.ffi, ctype, name)


def test_every_head_is_part_of_a_composite():
    used = {p.name for parts, _ in COMPOSITES.values() for p in parts if isinstance(p, abi.WireStruct)}
    assert HEADS <= used


def test_opcodes(ext):
    for op in abi.Opcode:
        assert getattr(ext.lib, f"PVFS_{op.name}") == op.value, op.name


def test_constants(ext):
    names = [n for n, v in vars(abi).items()
             if n.startswith(("FUSE_", "FATTR_", "FOPEN_", "CUSE_")) and type(v) is int]
    assert len(names) > 80
    for n in names:
        value = getattr(abi, n)
        if n in SIZEOF_CONSTANTS:
            assert ext.ffi.sizeof(f"struct pvfs_{SIZEOF_CONSTANTS[n]}") == value, n
        else:
            assert getattr(ext.lib, f"PVFS_{n}") == value, n


def test_both_extensions_agree():
    """The same header compiled twice: sizes and offsets identical (checked above against
    abi.py each; here directly, member by member, for every struct either one has)."""
    a, b = _cext.ffi, _testkit.ffi
    for name in sorted({*(set(WIRE) - HEADS), *COMPOSITES}):
        ctype = f"struct pvfs_{name}"
        assert a.sizeof(ctype) == b.sizeof(ctype), ctype
        for member, _ in a.typeof(ctype).fields:
            assert a.offsetof(ctype, member) == b.offsetof(ctype, member), (ctype, member)
