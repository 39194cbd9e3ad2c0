"""READDIRPLUS records packed in C (PassthroughFs.readdirplus_records), for inodes the guest
holds and for new ones: byte for byte what the Python path (readdir + lookup + AttrPacker)
sends, and every lookup they carry counted exactly once."""
import errno
import os
import struct

import pytest
from fusewire import Client

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions

ROOT = abi.FUSE_ROOT_ID


def listing(c, nodeid=ROOT, size=4096):
    """Every READDIRPLUS reply of one pass over the directory, and the (name, nodeid) pairs."""
    fh = c.opendir(nodeid)
    replies, names, off = [], [], 0
    while True:
        body = c.readdir(nodeid, fh, off, size, plus=True)
        if not body:
            return replies, names
        replies.append(body)
        p = 0
        while p < len(body):
            node = struct.unpack_from("<Q", body, p)[0]
            _, off, namelen, _ = struct.unpack_from("<QQII", body, p + 128)
            names.append((body[p + 152:p + 152 + namelen], node))
            p += abi.direntplus_size(namelen)


def populate(d, n=300):
    for i in range(n):
        (d / f"file{i:04d}").write_bytes(b"x" * i)
    (d / "sub").mkdir()
    os.symlink("file0001", d / "link")
    os.mkfifo(d / "fifo")
    os.link(d / "file0002", d / "hardlink")


@pytest.fixture
def pair(share):
    populate(share)
    fs = PassthroughFs(share)
    fast = Client(Server(fs, ServerOptions()))
    assert fast.init().ok
    yield fs, fast
    fs.close()


def test_second_listing_is_served_held_and_identical(pair):
    fs, c = pair
    first, names = listing(c)                # every inode new: opened and registered in C
    assert fs.inodes.lookup_count(names[-1][1]) == 1
    second, names2 = listing(c)              # every inode held
    assert second == first and names2 == names
    nodes = {node for name, node in names if name not in (b".", b"..")}
    hard = dict(names)
    assert hard[b"hardlink"] == hard[b"file0002"]
    for name, node in names:
        if name in (b".", b".."):
            assert node == 0
        elif name in (b"hardlink", b"file0002"):
            assert fs.inodes.lookup_count(node) == 4
        else:
            assert fs.inodes.lookup_count(node) == 2, name
    assert len(nodes) == len(names) - 3     # dots and one hard link


def test_held_records_equal_the_python_path(share):
    """The same held inodes listed by the Python path (readdir + lookup + AttrPacker) and
    by the C path give the same bytes, reply for reply."""
    populate(share, 50)
    fs = PassthroughFs(share)
    try:
        server = Server(fs, ServerOptions())
        c = Client(server)
        c.init()
        listing(c)
        fast = server._dirplus
        assert fast is not None
        server._dirplus = None
        python_made, _ = listing(c)
        server._dirplus = fast
        held, _ = listing(c)
        assert held == python_made
    finally:
        fs.close()


def test_new_inodes_equal_the_python_path(share):
    """A first listing (every inode new) packed in C is what the Python path sends for it,
    nodeids included (both number new inodes in listing order)."""
    populate(share, 80)
    made = []
    for c_path in (False, True):
        fs = PassthroughFs(share)
        try:
            server = Server(fs, ServerOptions())
            if not c_path:
                server._dirplus = None
            c = Client(server)
            c.init()
            made.append(listing(c)[0])
            assert len(fs.inodes) == 80 + 4 + 1 - 1       # files, sub, link, fifo, root; 1 hard link
        finally:
            fs.close()
    assert made[0] == made[1]


def test_no_c_path_with_id_translation(share):
    from pyvirtiofsd.passthrough.idmap import IdMap
    fs = PassthroughFs(share)
    try:
        assert Server(fs, ServerOptions(uid_map=IdMap(["map:0:1000:1"], "uid")))._dirplus is None
    finally:
        fs.close()


def test_new_entries_among_held_ones(pair, share):
    fs, c = pair
    _, names = listing(c)
    for i in range(0, 300, 7):
        (share / f"new{i:04d}").write_bytes(b"")
    (share / "file0005").unlink()
    _, names2 = listing(c)
    assert sorted(n for n, _ in names2) == sorted(
        [n for n, _ in names if n != b"file0005"] + [f"new{i:04d}".encode() for i in range(0, 300, 7)])
    old = dict(names)
    for name, node in names2:
        if name in old:
            assert node == old[name]
        else:
            assert fs.inodes.lookup_count(node) == 1
    # forgetting what the guest was given brings every count back to zero
    for name, node in names + names2:
        if node:
            c.call(Opcode.FUSE_FORGET, node, abi.fuse_forget_in.pack(1))
    assert len(fs.inodes) == 1


def test_a_buffer_too_small_for_one_entry_is_einval(pair):
    _, c = pair
    listing(c)
    fh = c.opendir(ROOT)
    r = c.call(Opcode.FUSE_READDIRPLUS, ROOT, abi.fuse_read_in.build(fh=fh, size=100))
    assert r.error == -errno.EINVAL


def test_unknown_handle_and_huge_offset(pair):
    _, c = pair
    listing(c)
    r = c.call(Opcode.FUSE_READDIRPLUS, ROOT, abi.fuse_read_in.build(fh=999, size=4096))
    assert r.error == -errno.EBADF
    fh = c.opendir(ROOT)
    r = c.call(Opcode.FUSE_READDIRPLUS, ROOT, abi.fuse_read_in.build(fh=fh, offset=1 << 63,
                                                                       size=4096))
    assert r.error == -errno.EINVAL
