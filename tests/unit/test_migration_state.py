"""The migration state (pyvirtiofsd.migration.state) between two real servers on one real
directory: what is saved, what is loaded, and what a malformed or hostile state gets --
a clear refusal, never a crash, never a file outside the shared directory."""
import base64
import errno
import json
import os
import struct

import pytest
from fusewire import Client

from pyvirtiofsd.fuse.abi import FUSE_ROOT_ID as ROOT
from pyvirtiofsd.migration import MigrationError, MigrationOptions, load, save
from pyvirtiofsd.migration import state as st
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions


@pytest.fixture
def pair(share):
    """(source client, a fresh destination server) on the same directory."""
    made = []

    def server():
        fs = PassthroughFs(share)
        made.append(fs)
        return Server(fs, ServerOptions())

    src = Client(server())
    assert src.init().ok
    yield src, server
    for fs in made:
        fs.close()


def _b64(p: bytes) -> str:
    return base64.b64encode(p).decode()


def _state(src_server, **change) -> dict:
    """The decoded JSON of a real saved state, for tests to alter."""
    raw = save(src_server, MigrationOptions())
    body = json.loads(raw[st._HEAD.size:])
    body.update(change)
    return body


def test_save_then_load_keeps_nodeids_lookups_and_handles(pair, share):
    src, server = pair
    (share / "f").write_bytes(b"0123456789")
    (share / "d").mkdir()
    f = src.lookup(ROOT, "f")
    src.lookup(ROOT, "f")
    d = src.lookup(ROOT, "d")
    fh, _ = src.open(f.nodeid, os.O_RDWR)
    dfh = src.opendir(d.nodeid)
    data = save(src.server, MigrationOptions())

    dst = Client(server())
    load(dst.server, MigrationOptions(), data)
    fs = dst.server.fs
    assert fs.inodes.lookup_count(f.nodeid) == 2 and fs.inodes.lookup_count(d.nodeid) == 1
    assert dst.server.session.flags == src.server.session.flags
    assert dst.read(f.nodeid, fh, 2, 4) == b"2345"
    assert dst.write(f.nodeid, fh, 0, b"AB") == 2
    assert (share / "f").read_bytes() == b"AB23456789"
    assert b"." in dst.readdir(d.nodeid, dfh)
    # new numbers go on after the source's
    g = dst.lookup(ROOT, "d")        # known file: same nodeid
    assert g.nodeid == d.nodeid
    (share / "new").write_bytes(b"")
    assert dst.lookup(ROOT, "new").nodeid > max(f.nodeid, d.nodeid)
    fh2, _ = dst.open(f.nodeid, os.O_RDONLY)
    assert fh2 > max(fh, dfh)
    dst.release(f.nodeid, fh)
    assert dst.forget(f.nodeid, 2) is not None
    assert fs.inodes.lookup_count(f.nodeid) == 0


@pytest.mark.parametrize("mode", ["find-paths", "file-handles"])
def test_a_renamed_file_follows_only_by_handle(pair, share, mode):
    src, server = pair
    (share / "f").write_bytes(b"x")
    f = src.lookup(ROOT, "f")
    opts = MigrationOptions(mode=mode)
    try:
        data = save(src.server, opts)
    except MigrationError:
        pytest.skip("no file handles here")
    if mode == "file-handles" and b'"e"' in data:
        pytest.skip("cannot make file handles here")
    os.rename(share / "f", share / "g")
    dst = Client(server())
    if mode == "find-paths":
        with pytest.raises(MigrationError, match="inode"):
            load(dst.server, opts, data)
        assert dst.server.session is None       # nothing half-loaded is served
    else:
        try:
            load(dst.server, opts, data)
        except MigrationError as e:
            assert "CAP_DAC_READ_SEARCH" in str(e)
            return
        assert dst.getattr(f.nodeid).ino == os.stat(share / "g").st_ino


def test_guest_error_loads_the_rest_and_answers_eio(pair, share):
    src, server = pair
    for n in "ab":
        (share / n).write_bytes(n.encode())
    a, b = src.lookup(ROOT, "a"), src.lookup(ROOT, "b")
    afh, _ = src.open(a.nodeid, os.O_RDONLY)
    bfh, _ = src.open(b.nodeid, os.O_RDONLY)
    data = save(src.server, MigrationOptions())
    os.unlink(share / "a")
    dst = Client(server())
    load(dst.server, MigrationOptions(on_error="guest-error"), data)
    assert dst.read(b.nodeid, bfh, 0, 10) == b"b"
    r = dst.call(0x0f, a.nodeid, struct.pack("<QQIIII", afh, 0, 10, 0, 0, 0))   # READ
    assert r.error == -errno.EIO
    r = dst.call(0x03, a.nodeid, struct.pack("<IIQ", 0, 0, 0))                   # GETATTR
    assert r.error == -errno.EIO
    dst.release(a.nodeid, afh)                  # lost handles and inodes still go away
    dst.forget(a.nodeid, 1)
    assert dst.server.fs.inodes.lookup_count(a.nodeid) == 0
    assert len(dst.server.fs.handles) == 1


def test_paths_follow_renames_and_a_removed_name_is_not_sent(pair, share):
    src, server = pair
    (share / "f").write_bytes(b"x")
    (share / "h").write_bytes(b"y")
    f = src.lookup(ROOT, "f")
    h = src.lookup(ROOT, "h")
    os.rename(share / "f", share / "old")          # /proc/self/fd follows the rename
    os.link(share / "h", share / "h2")
    os.unlink(share / "h")                         # the name it was reached by is gone
    for confirm in (False, True):
        body = json.loads(save(src.server, MigrationOptions(confirm_paths=confirm))[st._HEAD.size:])
        by_id = {i["n"]: i for i in body["inodes"]}
        assert base64.b64decode(by_id[f.nodeid]["p"]) == b"old"
        assert "p" not in by_id[h.nodeid] and "e" in by_id[h.nodeid]   # never "h (deleted)"
    # a file really called "... (deleted)" is a path like any other
    (share / "g (deleted)").write_bytes(b"z")
    g = src.lookup(ROOT, "g (deleted)")
    body = _state(src.server)
    assert [base64.b64decode(i["p"]) for i in body["inodes"] if i["n"] == g.nodeid] == \
        [b"g (deleted)"]
    dst = Client(server())
    load(dst.server, MigrationOptions(on_error="guest-error"), st.encode(body))
    assert dst.getattr(g.nodeid).ino == os.stat(share / "g (deleted)").st_ino
    assert dst.getattr(f.nodeid).ino == os.stat(share / "old").st_ino
    assert dst.call(0x03, h.nodeid, struct.pack("<IIQ", 0, 0, 0)).error == -errno.EIO


def test_a_lost_handle_stays_lost_through_a_second_migration(pair, share):
    src, server = pair
    (share / "a").write_bytes(b"a")
    a = src.lookup(ROOT, "a")
    fh, _ = src.open(a.nodeid, os.O_RDONLY)
    data = save(src.server, MigrationOptions())
    os.unlink(share / "a")
    mid = Client(server())
    load(mid.server, MigrationOptions(on_error="guest-error"), data)
    again = save(mid.server, MigrationOptions())
    dst = Client(server())
    with pytest.raises(MigrationError):
        load(dst.server, MigrationOptions(), again)
    load(dst.server, MigrationOptions(on_error="guest-error"), again)
    r = dst.call(0x0f, a.nodeid, struct.pack("<QQIIII", fh, 0, 10, 0, 0, 0))
    assert r.error == -errno.EIO


def _load_crafted(server, body: dict, **opts):
    data = st.encode(body)
    dst = Client(server())
    with pytest.raises(MigrationError) as e:
        load(dst.server, MigrationOptions(**opts), data)
    assert dst.server.session is None
    assert len(dst.server.fs.inodes) == 1 and len(dst.server.fs.handles) == 0
    return str(e.value)


@pytest.mark.parametrize("path,why", [
    (b"../outside", "'..'"),
    (b"a/../../outside", "'..'"),
    (b"/etc/passwd", "relative"),
    (b"", "relative"),
    (b"a//b", "empty"),
    (b"x\0y", "relative"),
])
def test_crafted_paths_are_refused(pair, share, path, why):
    src, server = pair
    (share / "f").write_bytes(b"x")
    src.lookup(ROOT, "f")
    body = _state(src.server)
    body["inodes"][0]["p"] = _b64(path)
    assert why in _load_crafted(server, body)


def test_a_symlink_escaping_the_share_is_not_followed(pair, share, tmp_path):
    src, server = pair
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "s").write_bytes(b"secret")
    (share / "f").write_bytes(b"x")
    os.symlink(tmp_path / "secret", share / "link")
    os.symlink("../secret", share / "rel")
    src.lookup(ROOT, "f")
    for p in (b"link/s", b"rel/s"):
        body = _state(src.server)
        body["inodes"][0]["p"] = _b64(p)
        # guest-error too: the inode is lost, never the outside file opened
        dst = Client(server())
        load(dst.server, MigrationOptions(on_error="guest-error"), st.encode(body))
        nodeid = body["inodes"][0]["n"]
        assert dst.call(0x03, nodeid, struct.pack("<IIQ", 0, 0, 0)).error == -errno.EIO
        assert "inode" in _load_crafted(server, body)


@pytest.mark.parametrize("change,why", [
    (dict(inodes=[{"n": 1, "l": 1, "t": 0o100000, "p": _b64(b"f")}]), "nodeid"),
    (dict(inodes=[{"n": 5, "l": 0, "t": 0o100000, "p": _b64(b"f")}]), "lookups"),
    (dict(inodes=[{"n": 5, "l": 1, "t": 0o100000}]), "neither path nor handle"),
    (dict(inodes=[{"n": 5, "l": 1, "t": 0o100644, "p": _b64(b"f")}]), "file type"),
    (dict(inodes=[{"n": 2 ** 64, "l": 1, "t": 0o100000, "p": _b64(b"f")}]), "nodeid"),
    (dict(inodes=[{"n": 5, "l": 1, "t": 0o100000, "p": _b64(b"f")}] * 2), "twice"),
    (dict(inodes=[{"n": 5, "l": 1, "t": 0o100000, "p": "!!notbase64"}]), "base64"),
    (dict(inodes=[{"n": 5, "l": 1, "t": 0o100000, "p": _b64(b"a" * 5000)}]), "bytes"),
    (dict(inodes=[{"n": 5, "l": 1, "t": 0o40000, "p": _b64(b"f")}]), "file type"),
    (dict(handles=[{"f": 0, "n": 2, "o": 0}]), "fh"),
    (dict(handles=[{"f": 3, "n": 2, "o": "rw"}]), "flags"),
    (dict(next_nodeid=2 ** 63), "next_nodeid"),
    (dict(inodes={"n": 5}), "lists"),
    (dict(session="yes"), "session"),
    (dict(session={"minor": 38, "flags": 1 << 60, "max_write": 1 << 20, "max_read": 1 << 20}),
     "flags"),
])
def test_crafted_fields_are_refused(pair, share, change, why):
    src, server = pair
    (share / "f").write_bytes(b"x")
    src.lookup(ROOT, "f")
    body = _state(src.server)
    body.update(change)
    assert why in _load_crafted(server, body)


def test_two_nodeids_for_one_file_are_refused(pair, share):
    src, server = pair
    (share / "f").write_bytes(b"x")
    src.lookup(ROOT, "f")
    body = _state(src.server)
    body["inodes"].append(dict(body["inodes"][0], n=99))
    assert "twice" in _load_crafted(server, body)


def test_handle_on_an_unknown_inode_is_refused(pair, share):
    src, server = pair
    body = _state(src.server, handles=[{"f": 7, "n": 12345, "o": 0}])
    assert "handle 7" in _load_crafted(server, body)


@pytest.mark.parametrize("data,why", [
    (b"", "too short"),
    (b"PVFSMIG\0" + b"\0" * 16, "version"),
    (b"NOTMAGIC" + struct.pack("<IIQ", 1, 0, 2) + b"{}", "magic"),
    (st._HEAD.pack(st.MAGIC, 1, 0, 2 ** 62) + b"{}", "claims"),     # a huge claimed length
    (st._HEAD.pack(st.MAGIC, 1, 0, 5) + b"{}", "claims"),
    (st._HEAD.pack(st.MAGIC, 1, 0, 4) + b"[[[[", "JSON"),
    (st._HEAD.pack(st.MAGIC, 1, 0, 2) + b"[]", "not an object"),
    (st._HEAD.pack(st.MAGIC, 1, 0, 3) + b"\xff\xfe{", "JSON"),
])
def test_malformed_streams_are_refused(pair, data, why):
    _, server = pair
    dst = Client(server())
    with pytest.raises(MigrationError, match=why):
        load(dst.server, MigrationOptions(), data)


def test_deep_nesting_and_huge_counts_are_refused(pair):
    _, server = pair
    dst = Client(server())
    deep = b"[" * 100000 + b"]" * 100000
    with pytest.raises(MigrationError):
        load(dst.server, MigrationOptions(), st._HEAD.pack(st.MAGIC, 1, 0, len(deep)) + deep)
    body = {"session": None, "next_nodeid": 2, "next_fh": 1, "inodes": [0] * (st.MAX_ENTRIES + 1),
            "handles": []}
    with pytest.raises(MigrationError, match="more than"):
        load(dst.server, MigrationOptions(), st.encode(body))


def test_the_stream_is_read_with_a_cap(tmp_path):
    r, w = os.pipe()
    os.write(w, b"x" * 5000)
    os.close(w)
    with pytest.raises(MigrationError, match="larger than"):
        st.read_stream(r, limit=4096)
    os.close(r)


def test_a_destination_with_a_session_refuses(pair, share):
    src, server = pair
    data = save(src.server, MigrationOptions())
    (share / "f").write_bytes(b"x")
    src.lookup(ROOT, "f")
    with pytest.raises(MigrationError, match="already"):
        load(src.server, MigrationOptions(), data)


def test_the_command_line_names_the_modes_this_module_reads():
    from pyvirtiofsd import virtiofsd_options
    assert virtiofsd_options.MIGRATION_MODES == st.MODES
    assert virtiofsd_options.MIGRATION_ON_ERROR == st.ON_ERROR
