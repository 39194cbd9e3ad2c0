"""The Python API for custom file systems: examples/memfs.py and examples/archivefs.py run as
their own daemons (their ``__main__`` -> ``pyvirtiofsd.serve``) and driven through our
front-end, and ``pyvirtiofsd.serve`` called in-process."""
from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import pyvirtiofsd
from pyvirtiofsd import guest
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def serve_example(tmp_path):
    """Start ``examples/NAME.py ARGS --socket-path S``; return a connected FuseClient."""
    started, opened = [], []

    def start(name: str, *args: str) -> FuseClient:
        sock = tmp_path / f"{name}.sock"
        argv = [sys.executable, str(EXAMPLES / f"{name}.py"), *args, "--socket-path", str(sock)]
        backend = guest.Backend(argv, sock, tmp_path / f"{name}.log").start(timeout=30)
        started.append(backend)
        fe = VhostUserFrontend(str(sock)).connect()
        opened.append(fe)
        client = FuseClient(fe)
        client.init()
        client.backend = backend
        return client

    yield start
    for fe in opened:
        fe.close()
    for b in started:   # like the daemon, an example serves one front-end and then exits 0
        try:
            status = b.proc.wait(timeout=15)
        finally:
            b.stop()
        assert status == 0, b.log


def names(client, nodeid=1):
    """The directory's names, read with READDIR and handle 0: neither example implements
    opendir (the guest is told not to send OPENDIR)."""
    out, offset = [], 0
    while chunk := client.readdir(nodeid, 0, offset):
        out += [e[3] for e in chunk]
        offset = chunk[-1][1]
    return sorted(n for n in out if n not in (b".", b".."))


def errno_of(fn, *args, **kw):
    with pytest.raises(OSError) as info:
        fn(*args, **kw)
    return info.value.errno


# --- memfs --------------------------------------------------------------------------------

def test_memfs_files_directories_and_links(serve_example):
    c = serve_example("memfs")
    assert names(c) == []
    entry, attr, opened = c.create(1, b"hello.txt", mode=stat.S_IFREG | 0o640)
    f = entry.nodeid
    assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o640
    assert attr.blksize == 4096
    assert c.write(f, opened.fh, 0, b"hello, ") == 7
    assert c.write(f, opened.fh, 7, b"world\n") == 6
    assert c.write(f, opened.fh, 20, b"!") == 1            # a hole reads as zeros
    assert c.read(f, opened.fh, 0, 100) == b"hello, world\n" + bytes(7) + b"!"
    assert c.getattr(f).size == 21
    assert c.setattr(f, valid=abi.FATTR_SIZE, size=5).size == 5
    assert c.read(f, 0, 0, 100) == b"hello"

    d, dattr = c.mkdir(1, b"dir", 0o755)
    assert stat.S_ISDIR(dattr.mode) and dattr.nlink == 2
    sub, _ = c.mkdir(d.nodeid, b"sub", 0o700)
    assert c.getattr(d.nodeid).nlink == 3
    c.rename(1, b"hello.txt", d.nodeid, b"moved.txt")
    assert names(c) == [b"dir"] and names(c, d.nodeid) == [b"moved.txt", b"sub"]
    lnk, lattr = c.symlink(d.nodeid, b"link", b"moved.txt")
    assert stat.S_ISLNK(lattr.mode) and c.readlink(lnk.nodeid) == b"moved.txt"
    hard, hattr = c.link(f, 1, b"hard")
    assert hard.nodeid == f and hattr.nlink == 2
    assert errno_of(c.mkdir, 1, b"dir") == errno.EEXIST
    assert errno_of(c.rmdir, 1, b"dir") == errno.ENOTEMPTY
    assert errno_of(c.unlink, 1, b"dir") == errno.EISDIR
    assert errno_of(c.rename, 1, b"dir", sub.nodeid, b"x") == errno.EINVAL  # into itself
    assert errno_of(c.rename, d.nodeid, b"link", 1, b"hard", flags=1) == errno.EEXIST
    assert errno_of(c.lookup, 1, b"missing") == errno.ENOENT

    # An unlinked file that is still looked up stays readable until forgotten.
    c.unlink(d.nodeid, b"moved.txt")
    c.unlink(1, b"hard")
    assert c.read(f, 0, 0, 10) == b"hello"
    assert c.getattr(f).nlink == 0
    st = c.statfs()
    assert st.bsize == 4096 and st.namelen == 255 and st.blocks > st.bfree


def test_memfs_listing_is_stable_while_the_directory_changes(serve_example):
    c = serve_example("memfs")
    d, _ = c.mkdir(1, b"many", 0o755)
    for i in range(300):
        c.create(d.nodeid, b"file-%03d" % i)
    fh, seen, offset = 0, [], 0
    while True:
        chunk = c.readdir(d.nodeid, fh, offset, size=512)
        if not chunk:
            break
        seen.extend(e[3] for e in chunk)
        offset = chunk[-1][1]
        # Delete what was just listed, the way rm -r does: nothing may be skipped.
        for name in (e[3] for e in chunk):
            if name.startswith(b"file-"):
                c.unlink(d.nodeid, name)
    assert sorted(n for n in seen if n.startswith(b"file-")) == [b"file-%03d" % i
                                                                 for i in range(300)]
    c.rmdir(1, b"many")


def test_memfs_writes_arrive_whole_from_many_requests_in_flight(serve_example):
    c = serve_example("memfs")
    entry, _, opened = c.create(1, b"big")
    blob = os.urandom(1 << 20)
    pending = [c.submit(abi.Opcode.FUSE_WRITE, entry.nodeid,
                        abi.fuse_write_in.build(fh=opened.fh, offset=off, size=65536),
                        abi.fuse_write_out.size, data=blob[off:off + 65536])
               for off in range(0, len(blob), 65536)]
    for p in pending:
        assert c.reap(p).error == 0
    got = b"".join(c.read(entry.nodeid, 0, off, 131072) for off in range(0, len(blob), 131072))
    assert got == blob


# --- archivefs ------------------------------------------------------------------------------

CONTENT = {
    "README.txt": b"an archive served read-only\n",
    "docs/guide.md": b"# guide\n" * 500,
    "docs/deep/er/note.txt": b"implied directories\n",
    "data/random.bin": os.urandom(200_000),
}


def make_tar(path: Path, compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:
        info = tarfile.TarInfo("docs")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o750, 1_600_000_000
        tar.addfile(info)
        for name, data in CONTENT.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), 0o644, 1_600_000_000, 1000, 1000
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in (("latest", tarfile.SYMTYPE, "docs/guide.md"),
                                   ("copy-of-readme", tarfile.LNKTYPE, "README.txt")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        for hostile in ("../escape.txt", "/abs/olute.txt", "./dot/./slash.txt"):
            info = tarfile.TarInfo(hostile)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


def make_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in CONTENT.items():
            z.writestr(name, data)
        z.writestr("../escape.txt", b"evil")
    return path


def lookup_path(c, path: str):
    nodeid, attr = 1, None
    for part in path.split("/"):
        entry, attr = c.lookup(nodeid, part.encode())
        nodeid = entry.nodeid
    return nodeid, attr


def read_all(c, nodeid) -> bytes:
    fh = c.open(nodeid, os.O_RDONLY).fh
    out = b""
    while True:
        chunk = c.read(nodeid, fh, len(out), 65536)
        if not chunk:
            break
        out += chunk
    c.release(nodeid, fh)
    return out


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "zip"])
def test_archivefs_shows_every_member_with_its_bytes(serve_example, tmp_path, kind):
    archive = (make_zip(tmp_path / "a.zip") if kind == "zip"
               else make_tar(tmp_path / f"a.{kind}", kind.split(".")[1]))
    c = serve_example("archivefs", str(archive))
    for name, data in CONTENT.items():
        nodeid, attr = lookup_path(c, name)
        assert attr.size == len(data) and stat.S_ISREG(attr.mode)
        assert attr.blksize == 4096
        assert read_all(c, nodeid) == data, name
    top = names(c)
    assert set(top) >= {b"README.txt", b"docs", b"data"}
    assert names(c, lookup_path(c, "docs")[0]) == [b"deep", b"guide.md"]
    assert b"escape.txt" not in top
    if kind != "zip":
        assert set(top) == {b"README.txt", b"docs", b"data", b"latest", b"copy-of-readme",
                            b"abs", b"dot"}
        nodeid, attr = lookup_path(c, "latest")
        assert stat.S_ISLNK(attr.mode) and c.readlink(nodeid) == b"docs/guide.md"
        assert read_all(c, lookup_path(c, "copy-of-readme")[0]) == CONTENT["README.txt"]
        assert read_all(c, lookup_path(c, "abs/olute.txt")[0]) == b"evil"
        assert read_all(c, lookup_path(c, "dot/slash.txt")[0]) == b"evil"
        docs = lookup_path(c, "docs")[1]
        assert stat.S_IMODE(docs.mode) == 0o750 and docs.mtime == 1_600_000_000
        readme = lookup_path(c, "README.txt")[1]
        assert (readme.uid, readme.gid, readme.mtime) == (1000, 1000, 1_600_000_000)


def test_archivefs_refuses_every_modification_with_erofs(serve_example, tmp_path):
    c = serve_example("archivefs", str(make_tar(tmp_path / "a.tar.gz")))
    readme, _ = lookup_path(c, "README.txt")
    docs, _ = lookup_path(c, "docs")
    assert errno_of(c.open, readme, os.O_RDWR) == errno.EROFS
    assert errno_of(c.open, readme, os.O_WRONLY | os.O_TRUNC) == errno.EROFS
    assert errno_of(c.create, 1, b"new.txt") == errno.EROFS
    assert errno_of(c.mkdir, docs, b"new") == errno.EROFS
    assert errno_of(c.unlink, 1, b"README.txt") == errno.EROFS
    assert errno_of(c.rename, 1, b"README.txt", 1, b"x") == errno.EROFS
    assert errno_of(c.setattr, readme, valid=abi.FATTR_SIZE, size=0) == errno.EROFS
    assert errno_of(c.write, readme, 0, 0, b"x") == errno.EROFS
    assert errno_of(c.symlink, 1, b"s", b"t") == errno.EROFS
    # ...and nothing changed.
    assert read_all(c, readme) == CONTENT["README.txt"]


def test_archivefs_rejects_a_file_that_is_no_archive(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_text("not an archive")
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "archivefs.py"), str(bogus), "--socket-path",
         str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


# --- pyvirtiofsd.serve in-process -------------------------------------------------------------

class Hello(pyvirtiofsd.FileSystem):
    """The smallest useful file system: one read-only file."""

    TEXT = b"hello from a Python file system\n"

    def lookup(self, ctx, parent, name):
        if parent != 1 or name != b"hello":
            raise OSError(errno.ENOENT, "no such file")
        return pyvirtiofsd.Entry(2, 0, self.getattr(ctx, 2, None))

    def getattr(self, ctx, inode, fh):
        if inode == 1:
            return pyvirtiofsd.Attr(ino=1, mode=stat.S_IFDIR | 0o755, nlink=2)
        return pyvirtiofsd.Attr(ino=2, mode=stat.S_IFREG | 0o444, size=len(self.TEXT))

    def read(self, ctx, inode, fh, offset, size, flags):
        return self.TEXT[offset:offset + size]


def test_serve_in_process_until_the_front_end_hangs_up(tmp_path):
    sock = str(tmp_path / "hello.sock")
    seen = {}

    def guest_side():
        try:
            with VhostUserFrontend(sock) as fe:
                c = FuseClient(fe)
                c.init()
                entry, attr = c.lookup(1, b"hello")
                seen["attr"] = attr
                seen["text"] = c.read(entry.nodeid, 0, 0, 4096)
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            seen["error"] = e

    status = pyvirtiofsd.serve(Hello(), sock, tag="hello", guest_page_size=16384,
                               log_level=None,
                               on_listening=lambda: threading.Thread(target=guest_side).start())
    assert status == 0
    assert "error" not in seen, seen.get("error")
    assert seen["text"] == Hello.TEXT
    assert seen["attr"].blksize == 16384                 # the server's page-size policy
    assert not os.path.exists(sock)


def test_serve_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one of socket_path and fd"):
        pyvirtiofsd.serve(Hello())
    with pytest.raises(TypeError):
        pyvirtiofsd.serve(Hello(), str(tmp_path / "s"), log_level=None, no_such_option=1)
    with pytest.raises(ValueError, match="guest_page_size"):
        pyvirtiofsd.serve(Hello(), str(tmp_path / "s"), log_level=None, guest_page_size=1000)
    assert not (tmp_path / "s").exists()


def test_top_level_exports():
    from pyvirtiofsd import (  # noqa: F401
        Attr, Context, DirEntry, Entry, FileRange, FileSystem, Opened, SetAttr, StatFs, Statx,
        WriteData, dirent_type, serve,
    )
    assert FileSystem is pyvirtiofsd.filesystem.FileSystem
    assert set(pyvirtiofsd.__all__) <= set(dir(pyvirtiofsd))


def test_the_example_in_the_filesystem_docstring_works(tmp_path):
    """The "complete file system" of pyvirtiofsd.filesystem's docstring, run as written
    (only its socket path and a front-end hook changed), lists and reads as promised."""
    import re

    doc = pyvirtiofsd.filesystem.__doc__
    code = re.search(r"::\n\n(.*?)\n\nWhat to implement", doc, re.S).group(1)
    code = "\n".join(line[4:] for line in code.splitlines())
    sock = str(tmp_path / "hello.sock")
    assert code.count('"/tmp/hello.sock"') == 1 and code.count("readonly=True)") == 1
    code = code.replace('"/tmp/hello.sock"', repr(sock)).replace(
        "readonly=True)", "readonly=True, log_level=None, on_listening=start_guest)")
    seen = {}

    def guest_side():
        try:
            with VhostUserFrontend(sock) as fe:
                c = FuseClient(fe)
                c.init()
                seen["names"] = [e[3] for e in c.readdir(1, 0)]
                entry, attr = c.lookup(1, b"hello.txt")
                seen["text"] = c.read(entry.nodeid, 0, 0, 100)
                seen["write"] = c.call(abi.Opcode.FUSE_MKDIR, 1,
                                       abi.fuse_mkdir_in.build(mode=0o755) + b"d\0",
                                       abi.FUSE_ENTRY_OUT_SIZE).error
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            seen["error"] = e

    exec(compile(code, "filesystem-docstring-example", "exec"),
         {"start_guest": lambda: threading.Thread(target=guest_side).start()})
    assert "error" not in seen, seen.get("error")
    assert seen["names"] == [b".", b"..", b"hello.txt"]
    assert seen["text"] == b"hello\n"
    assert seen["write"] == -errno.EROFS
