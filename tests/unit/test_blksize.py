"""The headline bug: every fuse_attr and fuse_statx carries blksize == guest page size.

Guest kernels before 6.17 take i_blkbits from it, and DAX writeback fails with a WARN and
EIO whenever it differs from the guest PAGE_SIZE (PROTOCOLS.md §6).  The host here reports
something else on purpose: a tmpfs mounted huge=always says 2 MiB; the plain file system
says 4096, which differs from the 16 KiB and 64 KiB guest page sizes.
"""
import os
import stat
import subprocess

import pytest
from fusewire import Client, cstr, parse_direntplus, parse_entry
from memfs import MemFs

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import AttrPacker, Server, ServerOptions

PAGE_SIZES = [4096, 16384, 65536]


def _mount_huge_tmpfs(path) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=64m", "tmpfs",
                        str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture(params=["huge-tmpfs", "plain"])
def host_dir(request, tmp_path):
    """A share whose files report an st_blksize that is not the guest page size for at
    least some of the page sizes under test."""
    d = tmp_path / request.param
    d.mkdir()
    mounted = request.param == "huge-tmpfs" and _mount_huge_tmpfs(d)
    try:
        (d / "file").write_bytes(b"x" * 100)
        (d / "dir").mkdir()
        os.symlink("file", d / "link")
        yield d, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(d)], check=True)


def _host_blksize(d) -> int:
    return os.stat(d / "file").st_blksize


def test_the_host_really_reports_something_else(host_dir):
    d, mounted = host_dir
    if "huge" in d.name and os.geteuid() == 0:
        assert mounted, "root could not mount a huge=always tmpfs"
    if mounted:
        assert _host_blksize(d) == 2 << 20
    else:
        assert _host_blksize(d) not in (16384, 65536)


def attrs_from_every_op(c: Client, d) -> dict[str, int]:
    """Drive every attr-bearing opcode; return {op: blksize the guest saw}."""
    seen: dict[str, int] = {}
    file = c.lookup(1, "file")
    seen["LOOKUP"] = file.attr.blksize
    seen["LOOKUP dir"] = c.lookup(1, "dir").attr.blksize
    seen["LOOKUP symlink"] = c.lookup(1, "link").attr.blksize
    seen["GETATTR"] = c.getattr(file.nodeid).blksize
    seen["SETATTR"] = c.setattr(file.nodeid, valid=abi.FATTR_MODE, mode=0o100600).blksize
    fh, _ = c.open(file.nodeid, os.O_RDWR)
    seen["GETATTR fh"] = c.getattr(file.nodeid, fh=fh).blksize
    seen["SETATTR fh"] = c.setattr(file.nodeid, valid=abi.FATTR_SIZE | abi.FATTR_FH,
                                   size=50, fh=fh).blksize
    c.release(file.nodeid, fh)
    seen["CREATE"] = c.create(1, "created", 0o644, os.O_RDWR | os.O_CREAT)[0].attr.blksize
    seen["MKNOD"] = c.mknod(1, "fifo", stat.S_IFIFO | 0o644).attr.blksize
    seen["MKDIR"] = c.mkdir(1, "newdir").attr.blksize
    seen["SYMLINK"] = c.symlink(1, "sym", "file").attr.blksize
    seen["LINK"] = c.link(file.nodeid, 1, "hard").attr.blksize
    seen["TMPFILE"] = c.tmpfile(1)[0].attr.blksize
    seen["STATX"] = c.statx(file.nodeid).blksize
    seen["STATX dir"] = c.statx(1).blksize
    dfh = c.opendir(1)
    ents = parse_direntplus(c.readdir(1, dfh, plus=True))
    c.release(1, dfh, dir=True)
    names = set()
    for e, (_, _, _, name) in ents:
        seen[f"READDIRPLUS {name.decode()}"] = e.attr.blksize
        names.add(name)
    assert {b".", b"..", b"file", b"dir", b"link", b"created", b"fifo", b"newdir", b"sym",
            b"hard"} <= names
    return seen


@pytest.mark.parametrize("page", PAGE_SIZES)
def test_every_attr_bearing_op_reports_the_guest_page_size(host_dir, page):
    d, _ = host_dir
    fs = PassthroughFs(d)
    try:
        c = Client(Server(fs, ServerOptions(guest_page_size=page)))
        assert c.init().ok
        seen = attrs_from_every_op(c, d)
    finally:
        fs.close()
    assert len(seen) >= 25
    wrong = {op: b for op, b in seen.items() if b != page}
    assert not wrong, f"blksize != {page}: {wrong}"


@pytest.mark.parametrize("page", PAGE_SIZES)
def test_passthrough_attrs_carry_the_host_value_but_the_wire_does_not(host_dir, page):
    """The file system reports the host's st_blksize; only the server's packer clamps."""
    d, _ = host_dir
    fs = PassthroughFs(d)
    try:
        e = fs.lookup(None, 1, b"file")
        assert e.attr.blksize == _host_blksize(d)
        wire = AttrPacker(page).fuse_attr(e.attr)
        assert abi.fuse_attr.parse(wire).blksize == page
    finally:
        fs.close()


@pytest.mark.parametrize("page", PAGE_SIZES)
def test_custom_filesystem_blksize_is_overridden(page):
    """A custom file system saying 2 MiB (MemFs does) is clamped on every path too,
    including STATX derived from getattr and READDIRPLUS built from lookup."""
    fs = MemFs({b"a": b"1"}, blksize=2 << 20)
    c = Client(Server(fs, ServerOptions(guest_page_size=page)))
    assert c.init().ok
    e = c.lookup(1, "a")
    assert e.attr.blksize == page
    assert c.getattr(e.nodeid).blksize == page
    assert c.statx(e.nodeid).blksize == page
    for ent, _ in parse_direntplus(c.readdir(1, 0, plus=True)):
        assert ent.attr.blksize == page


@pytest.mark.parametrize("page", [4096, 16384, 65536])
def test_blksize_is_exact_not_min(page):
    """A smaller host value is raised to the page size: i_blkbits != PAGE_SHIFT breaks
    DAX writeback in both directions."""
    packer = AttrPacker(page)
    from pyvirtiofsd.filesystem import Attr, Statx
    for host in (0, 512, 1024, 4096, 16384, 65536, 2 << 20, 128 * 1024, 3000):
        assert abi.fuse_attr.parse(packer.fuse_attr(Attr(ino=1, blksize=host))).blksize == page
        sx = Statx(mask=0x7FF, ino=1, mode=0o100644, blksize=host)
        assert abi.fuse_statx.parse(packer.fuse_statx(sx)).blksize == page


def test_statx_reply_layout_puts_blksize_at_byte_36(share, passthrough):
    (share / "f").write_bytes(b"")
    c = Client(Server(passthrough, ServerOptions(guest_page_size=16384)))
    assert c.init().ok
    n = c.lookup(1, "f").nodeid
    body = c.ok(Opcode.FUSE_STATX, n, abi.fuse_statx_in.build(sx_mask=0x7FF))
    assert len(body) == abi.FUSE_STATX_OUT_SIZE
    assert int.from_bytes(body[36:40], "little") == 16384


def test_entry_reply_layout_puts_blksize_at_byte_120(share, passthrough):
    (share / "f").write_bytes(b"")
    c = Client(Server(passthrough, ServerOptions(guest_page_size=65536)))
    assert c.init().ok
    body = c.ok(Opcode.FUSE_LOOKUP, 1, cstr("f"))
    assert int.from_bytes(body[120:124], "little") == 65536
    body = c.ok(Opcode.FUSE_GETATTR, parse_entry(body).nodeid, bytes(16))
    assert int.from_bytes(body[96:100], "little") == 65536


def test_guest_page_size_must_be_a_power_of_two():
    for bad in (0, 1000, 4095, 12288, 1 << 22):
        with pytest.raises(ValueError):
            ServerOptions(guest_page_size=bad)
