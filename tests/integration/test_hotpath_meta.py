"""Parity of the metadata C serves (cext/mutate.c): CREATE, MKDIR, MKNOD, SYMLINK, LINK,
UNLINK, RMDIR, RENAME(2), OPEN, OPENDIR, RELEASE(DIR), FLUSH, FSYNC(DIR), STATFS, FORGET and
BATCH_FORGET must get from C exactly the reply the Python server and PassthroughFs give,
and leave the same host state behind.

Every case runs twice, each time on a fresh device (``Rig``, one C thread per queue so that
C takes on every request it may) serving a fresh, identical tree: once with C serving, once
with C off (``pvfs_hot_set_ops(ctx, 0)``).  Each request states whether C must serve it
(the hot path's ``passed`` counter, requests handed to Python, tells) and, mostly, the errno
it must get.  Then the two runs are compared:

* every reply: error, length and bytes, with what legitimately differs between two trees
  masked (nodeids, fh, inode numbers, times, a shared disk's free counts); nodeids, fh and
  inode numbers are compared instead as what they stand for (the same nodeid as an earlier
  reply, the same host file);
* the trees: every node's type, mode bits, owner, link count, size, contents, symlink
  target, device numbers;
* the store: lookup counts of every nodeid the guest was given, (inodes, inode fds, open
  handles), and the flags each handle's host fd is open with.

And after every case: every thread of this process (the devices' serving threads among
them) is back to the process's fsuid/fsgid, umask, groups and capabilities, and a MKDIR and
a CREATE as root -- through C and through Python -- make root-owned nodes with their modes
untouched.  The daemon runs as root here: the cases that create as uid 1000 check that
both C and Python create as the caller.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import stat
import threading
from pathlib import Path
from typing import Callable

import pytest
from test_hotpath import ROOT, Rig

from pyvirtiofsd._cext import lib
from pyvirtiofsd.frontend.fuse_client import HIPRIO, Reply
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import ServerOptions

ENTRY = abi.FUSE_ENTRY_OUT_SIZE          # 128
OPEN_OUT = abi.fuse_open_out.size        # 16
HEAD = abi.fuse_entry_out_head.size      # 40: the fuse_attr follows
ACL_FLAGS = abi.FUSE_POSIX_ACL | abi.FUSE_DONT_MASK | abi.FUSE_SETXATTR_EXT
ACL_OPTIONS = ServerOptions(posix_acl="auto", xattr=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
USER = 1000

# what mutate.c serves (all of it must be on for PassthroughFs)
MUTATE_OPS = (
    Opcode.FUSE_CREATE, Opcode.FUSE_MKDIR, Opcode.FUSE_MKNOD, Opcode.FUSE_SYMLINK,
    Opcode.FUSE_LINK, Opcode.FUSE_UNLINK, Opcode.FUSE_RMDIR, Opcode.FUSE_RENAME,
    Opcode.FUSE_RENAME2, Opcode.FUSE_OPEN, Opcode.FUSE_OPENDIR, Opcode.FUSE_RELEASE,
    Opcode.FUSE_RELEASEDIR, Opcode.FUSE_FLUSH, Opcode.FUSE_FSYNC, Opcode.FUSE_FSYNCDIR,
    Opcode.FUSE_STATFS, Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET,
)
ENTRY_REPLIES = {Opcode.FUSE_LOOKUP, Opcode.FUSE_MKDIR, Opcode.FUSE_MKNOD,
                 Opcode.FUSE_SYMLINK, Opcode.FUSE_LINK}
OPEN_REPLIES = {Opcode.FUSE_OPEN, Opcode.FUSE_OPENDIR}


def groups_ext(*gids: int) -> bytes:
    """A FUSE_EXT_GROUPS request extension (counted in total_extlen)."""
    body = abi.fuse_supp_groups.pack(len(gids)) + b"".join(g.to_bytes(4, "little") for g in gids)
    size = abi.fuse_rec_align(abi.fuse_ext_header.size + len(body))
    return (abi.fuse_ext_header.pack(size, abi.FUSE_EXT_GROUPS) + body).ljust(size, b"\0")


@pytest.fixture(autouse=True)
def _c_path_on(monkeypatch):
    """These tests compare the C path with Python: on even when the suite runs with it off
    (scripts/test.sh runs everything a second time with PYVIRTIOFSD_HOTPATH=0)."""
    monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", "1")


@pytest.fixture
def rigs():
    """Rig(directory, **kw) for the test, each closed at its end."""
    made = []

    def make(directory, **kw):
        made.append(Rig(directory, **kw))
        return made[-1]

    yield make
    unclosed = []
    for r in made:
        try:
            r.close()
        except AssertionError as e:   # close the others before failing
            unclosed.append(e)
    assert not unclosed, unclosed


# --- the state a run leaves ------------------------------------------------------------------


def tree_state(root: Path) -> dict:
    """Every node under root: type, mode bits, owner, links, and size, contents or target."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files, *([] if dirpath != str(root) else ["."])]:
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            what = [stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid,
                    st.st_gid, st.st_nlink]
            if stat.S_ISREG(st.st_mode):
                what += [st.st_size, p.read_bytes()[:4096]]
            elif stat.S_ISLNK(st.st_mode):
                what.append(os.readlink(p))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
            out[rel] = tuple(what)
    return out


def inode_names(root: Path) -> dict[int, str]:
    """Host inode number -> the names it has under root (for comparing replies' ino)."""
    names: dict[int, list[str]] = {os.lstat(root).st_ino: ["."]}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            names.setdefault(os.lstat(p).st_ino, []).append(str(p.relative_to(root)))
    return {ino: "+".join(sorted(n)) for ino, n in names.items()}


def _ids(status: str) -> tuple:
    """(fsuid, fsgid, umask, groups, effective capabilities) from a /proc status file."""
    f = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return (int(f["Uid"].split()[3]), int(f["Gid"].split()[3]), f["Umask"].strip(),
            f["Groups"].strip(), f["CapEff"].strip())


def thread_ids() -> dict[str, tuple]:
    """Every thread of this process, as _ids."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            text = Path(f"/proc/self/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue                                  # a thread that just ended
        name = next(line for line in text.splitlines() if line.startswith("Name:"))[5:].strip()
        out[f"{name}/{tid}"] = _ids(text)
    return out


def process_ids() -> tuple:
    """What every thread should be: the process's own ids (root's), umask, groups, caps."""
    ids = _ids(Path("/proc/self/status").read_text())
    assert ids[:2] == (os.geteuid(), os.getegid())
    return ids


def assert_threads_clean(ids: tuple) -> None:
    """No thread was left acting as a guest user, with its groups, or with an operation's
    umask."""
    bad = {t: v for t, v in thread_ids().items() if v != ids}
    assert not bad, f"threads left with (fsuid, fsgid, umask, groups, caps) != {ids}: {bad}"


# --- one run of a case ---------------------------------------------------------------------


class Side:
    """One run of a case: a device on its own tree, C serving on (``c_on``) or off."""

    def __init__(self, make_rig, root: Path, c_on: bool, case: "Case"):
        self.root = root
        self.c_on = c_on
        self.rig = make_rig(directory=root, options=case.options, init=False, hot_threads=1,
                            fs=PassthroughFs(root, **case.fs) if case.fs else None)
        self.client = self.rig.client
        self.client.init(minor=case.minor, flags=case.init_flags)
        # A file removed while nothing holds it open: with file handles and no idle fds,
        # its handle names nothing any more (ESTALE, as virtiofsd's); an O_PATH fd -- an
        # inode's own, or an idle one kept for a handle -- keeps the inode alive.
        fs = self.rig.fs
        self.gone = (errno.ESTALE if fs.file_handles != "never" and not case.fs.get(
            "handle_fd_cache", 1024) else None)
        self.hot = self.rig.device.hotpath
        missing = [op.name for op in MUTATE_OPS if not self.hot.ops >> op & 1]
        assert not missing, f"not served in C: {missing}"
        self.set_c(c_on)
        self.log: list[tuple[str, int, Reply]] = []     # (what, opcode, reply)
        self.nodeids: dict[int, str] = {ROOT: "root"}   # nodeid -> its name in this run
        self.fhs: dict[int, str] = {}
        self.inos_before = inode_names(root)
        self.inos_after: dict[int, str] = {}

    def set_c(self, on: bool) -> None:
        lib.pvfs_hot_set_ops(self.hot.ctx, self.hot.ops if on else 0)

    def passed(self) -> int:
        return self.rig.stats()["passed"]

    # -- requests ------------------------------------------------------------------------

    def call(self, op: int, nodeid: int, args: bytes = b"", out_size: int = 0, *,
             c: bool = True, err: int | None = None, what: str = "", **kw) -> Reply:
        """One request.  ``c``: C must serve it when on (else it must pass it to Python);
        ``err``: the errno it must get (0: success)."""
        before = self.passed()
        reply = self.client.call(op, nodeid, args, out_size, **kw)
        to_python = self.passed() - before
        want = 0 if self.c_on and c else 1
        run = "C" if self.c_on else "Python"
        assert to_python == want, (
            f"{what or Opcode(op).name}: {run} run expected {'Python' if want else 'C'} to "
            f"serve it (error {reply.error})")
        if err is not None:
            assert reply.error == -err, (
                f"{what or Opcode(op).name}: {run} run got {errno.errorcode.get(-reply.error, 0)}"
                f", expected {errno.errorcode.get(err, 0)}")
        self._note(op, reply)
        self.log.append((what or Opcode(op).name, op, reply))
        return reply

    def _note(self, op: int, reply: Reply) -> None:
        if reply.error:
            return
        if op in ENTRY_REPLIES or op == Opcode.FUSE_CREATE:
            self.nodeid_name(abi.fuse_entry_out_head.parse(reply.body).nodeid)
        if op == Opcode.FUSE_CREATE:
            self.fh_name(abi.fuse_open_out.parse(reply.body, ENTRY).fh)
        if op in OPEN_REPLIES:
            self.fh_name(abi.fuse_open_out.parse(reply.body).fh)

    @staticmethod
    def nodeid_of(r: Reply) -> int:
        return abi.fuse_entry_out_head.parse(r.body).nodeid

    @staticmethod
    def fh_of(r: Reply) -> int:
        """The fh of a CREATE, OPEN or OPENDIR reply."""
        return abi.fuse_open_out.parse(r.body, ENTRY if len(r.body) > OPEN_OUT else 0).fh

    @staticmethod
    def open_flags_of(r: Reply) -> int:
        return abi.fuse_open_out.parse(r.body).open_flags

    def lookups(self, nodeid: int) -> int:
        return self.rig.fs.inodes.lookup_count(nodeid)

    def host(self, rel: str) -> tuple[int, int, int, int]:
        """(st_mode, uid, gid, nlink) of a node of the tree."""
        st = os.lstat(self.root / rel)
        return st.st_mode, st.st_uid, st.st_gid, st.st_nlink

    def data(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def host_flags(self) -> dict:
        return self.store()["host open flags"]

    def nodeid_name(self, nodeid: int) -> str:
        return self.nodeids.setdefault(nodeid, f"n{len(self.nodeids)}")

    def fh_name(self, fh: int) -> str:
        return self.fhs.setdefault(fh, f"fh{len(self.fhs)}")

    def node(self, *path: bytes) -> int:
        """Set-up: the nodeid of path (one lookup per component), looked up by Python in
        both runs (parity of LOOKUP is test_hotpath.py's)."""
        self.set_c(False)
        try:
            nodeid = ROOT
            for name in path:
                body = self.client.check(Opcode.FUSE_LOOKUP, nodeid, name + b"\0", ENTRY)
                nodeid = abi.fuse_entry_out_head.parse(body).nodeid
                self.nodeid_name(nodeid)
            return nodeid
        finally:
            self.set_c(self.c_on)

    def create(self, parent, name, flags=os.O_RDWR, mode=0o644, umask=0, open_flags=0, **kw):
        args = abi.fuse_create_in.build(flags=flags | os.O_CREAT, mode=mode, umask=umask,
                                        open_flags=open_flags)
        return self.call(Opcode.FUSE_CREATE, parent, args + name + b"\0", ENTRY + OPEN_OUT, **kw)

    def mkdir(self, parent, name, mode=0o755, umask=0, **kw):
        args = abi.fuse_mkdir_in.build(mode=mode | stat.S_IFDIR, umask=umask)
        return self.call(Opcode.FUSE_MKDIR, parent, args + name + b"\0", ENTRY, **kw)

    def mknod(self, parent, name, mode, rdev=0, umask=0, **kw):
        args = abi.fuse_mknod_in.build(mode=mode, rdev=rdev, umask=umask)
        return self.call(Opcode.FUSE_MKNOD, parent, args + name + b"\0", ENTRY, **kw)

    def symlink(self, parent, name, target, **kw):
        return self.call(Opcode.FUSE_SYMLINK, parent, name + b"\0" + target + b"\0", ENTRY, **kw)

    def link(self, nodeid, newparent, name, **kw):
        args = abi.fuse_link_in.build(oldnodeid=nodeid) + name + b"\0"
        return self.call(Opcode.FUSE_LINK, newparent, args, ENTRY, **kw)

    def unlink(self, parent, name, **kw):
        return self.call(Opcode.FUSE_UNLINK, parent, name + b"\0", **kw)

    def rmdir(self, parent, name, **kw):
        return self.call(Opcode.FUSE_RMDIR, parent, name + b"\0", **kw)

    def rename(self, parent, name, newparent, newname, flags=None, **kw):
        names = name + b"\0" + newname + b"\0"
        if flags is None:
            return self.call(Opcode.FUSE_RENAME, parent,
                             abi.fuse_rename_in.build(newdir=newparent) + names, **kw)
        return self.call(Opcode.FUSE_RENAME2, parent,
                         abi.fuse_rename2_in.build(newdir=newparent, flags=flags) + names, **kw)

    def open(self, nodeid, flags=os.O_RDONLY, open_flags=0, **kw):
        return self.call(Opcode.FUSE_OPEN, nodeid,
                         abi.fuse_open_in.build(flags=flags, open_flags=open_flags), OPEN_OUT, **kw)

    def opendir(self, nodeid, **kw):
        return self.call(Opcode.FUSE_OPENDIR, nodeid,
                         abi.fuse_open_in.build(flags=os.O_RDONLY | os.O_DIRECTORY), OPEN_OUT, **kw)

    def release(self, nodeid, fh, dir=False, **kw):
        op = Opcode.FUSE_RELEASEDIR if dir else Opcode.FUSE_RELEASE
        return self.call(op, nodeid, abi.fuse_release_in.build(fh=fh), **kw)

    def flush(self, nodeid, fh, **kw):
        return self.call(Opcode.FUSE_FLUSH, nodeid, abi.fuse_flush_in.build(fh=fh), **kw)

    def fsync(self, nodeid, fh, datasync=False, dir=False, **kw):
        op = Opcode.FUSE_FSYNCDIR if dir else Opcode.FUSE_FSYNC
        flags = abi.FUSE_FSYNC_FDATASYNC if datasync else 0
        return self.call(op, nodeid, abi.fuse_fsync_in.build(fh=fh, fsync_flags=flags), **kw)

    def statfs(self, nodeid=ROOT, **kw):
        return self.call(Opcode.FUSE_STATFS, nodeid, b"", abi.fuse_kstatfs.size, **kw)

    def forget(self, nodeid, nlookup=1, **kw):
        return self.call(Opcode.FUSE_FORGET, nodeid, abi.fuse_forget_in.build(nlookup=nlookup),
                         queue=HIPRIO, no_reply=True, **kw)

    def batch_forget(self, pairs, **kw):
        args = abi.fuse_batch_forget_in.build(count=len(pairs)) + b"".join(
            abi.fuse_forget_one.build(nodeid=n, nlookup=k) for n, k in pairs)
        return self.call(Opcode.FUSE_BATCH_FORGET, 0, args, queue=HIPRIO, no_reply=True, **kw)

    def read(self, nodeid, fh, offset=0, size=4096, **kw):
        return self.call(Opcode.FUSE_READ, nodeid,
                         abi.fuse_read_in.build(fh=fh, offset=offset, size=size), size, **kw)

    def write(self, nodeid, fh, offset, data, **kw):
        return self.call(Opcode.FUSE_WRITE, nodeid,
                         abi.fuse_write_in.build(fh=fh, offset=offset, size=len(data)),
                         abi.fuse_write_out.size, data=data, **kw)

    def getattr(self, nodeid, **kw):
        return self.call(Opcode.FUSE_GETATTR, nodeid, abi.fuse_getattr_in.build(),
                         abi.FUSE_ATTR_OUT_SIZE, **kw)

    # -- what it left ----------------------------------------------------------------------

    def settle(self) -> None:
        """Take in the tree as the case left it (after a GETATTR that lets FORGETs land)."""
        self.set_c(False)
        self.client.check(Opcode.FUSE_GETATTR, ROOT, abi.fuse_getattr_in.build(),
                          abi.FUSE_ATTR_OUT_SIZE)
        self.set_c(self.c_on)
        self.inos_after = inode_names(self.root)

    def ino_name(self, ino: int) -> str:
        return self.inos_after.get(ino) or self.inos_before.get(ino) or "?"

    def replies(self) -> list:
        """Every reply, masked where two runs may differ, with what the masked fields stand
        for alongside."""
        out = []
        for what, op, r in self.log:
            body, ids = bytearray(r.body), []

            def entry(at: int) -> None:
                nodeid = int.from_bytes(body[at:at + 8], "little")
                ids.append(self.nodeids.get(nodeid, f"unknown nodeid {nodeid}"))
                body[at:at + 8] = bytes(8)
                attr(at + HEAD)

            def attr(at: int) -> None:
                ids.append("ino " + self.ino_name(int.from_bytes(body[at:at + 8], "little")))
                body[at:at + 8] = bytes(8)
                body[at + 24:at + 60] = bytes(36)      # atime mtime ctime and their nsec

            def opened(at: int) -> None:
                fh = int.from_bytes(body[at:at + 8], "little")
                ids.append(self.fhs.get(fh, f"unknown fh {fh}"))
                body[at:at + 8] = bytes(8)

            if not r.error and len(body):
                if op in ENTRY_REPLIES:
                    entry(0)
                elif op == Opcode.FUSE_CREATE:
                    entry(0)
                    opened(ENTRY)
                elif op in OPEN_REPLIES:
                    opened(0)
                elif op == Opcode.FUSE_GETATTR:
                    attr(abi.fuse_attr_out_head.size)
                elif op == Opcode.FUSE_STATFS:
                    body[8:24] = bytes(16)             # bfree, bavail: the disk is shared
                    body[32:40] = bytes(8)             # ffree
            out.append((what, r.error, r.used_len, len(r.body), bytes(body), ids))
        return out

    def store(self) -> dict:
        """Lookup counts, what the store holds, and how each handle's host fd is open."""
        fs = self.rig.fs
        counts = {name: fs.inodes.lookup_count(n) for n, name in self.nodeids.items()}
        flags = {}
        for fh, name in self.fhs.items():
            try:
                with fs.handles.borrow(fh) as h:
                    flags[name] = oct(fcntl.fcntl(h.fd, fcntl.F_GETFL))
            except OSError as e:
                flags[name] = errno.errorcode[e.errno]      # released
        return {"lookups": counts, "inodes, inode fds, handles": fs.store.counts(),
                "host open flags": flags}


# --- the cases -------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    run: Callable[[Side], None]
    prepare: Callable[[Path], None] = lambda root: None
    init_flags: int = 0
    options: ServerOptions | None = None
    fs: dict = dataclasses.field(default_factory=dict)   # PassthroughFs options
    minor: int = 38

    def __str__(self) -> str:
        return self.name


CASES: list[Case] = []


def case(prepare=None, init_flags=0, options=None, fs=None, minor=38):
    def add(run):
        CASES.append(Case(run.__name__, run, prepare or (lambda root: None), init_flags,
                          options, fs or {}, minor))
        return run
    return add


def files(**spec):
    """A prepare step: name=bytes (a file), name=None (a directory), name=("->", target)
    (a symlink), name="fifo"; mode=... chmods the root; "a__b" is a/b."""
    def prepare(root: Path) -> None:
        for key, what in spec.items():
            p = root / key.replace("__", "/")
            if what is None:
                p.mkdir()
            elif isinstance(what, bytes):
                p.write_bytes(what)
            elif what == "fifo":
                os.mkfifo(p)
            else:
                os.symlink(what[1], p)
    return prepare


TREE = files(f=b"hello", g=b"other", d=None, d__x=b"in d", e=None, link=("->", "f"),
             fifo="fifo")


# CREATE

@case(TREE)
def create_new(s):
    r = s.create(ROOT, b"new", mode=0o640, err=0)
    node, fh = s.nodeid_of(r), s.fh_of(r)
    s.write(node, fh, 0, b"written", err=0)
    s.read(node, fh, 0, 100, err=0)
    s.release(node, fh, err=0)
    assert s.host("new") == (stat.S_IFREG | 0o640, 0, 0, 1) and s.data("new") == b"written"
    assert s.lookups(node) == 1


@case(TREE)
def create_in_subdir_and_lookup_it(s):
    d = s.node(b"d")
    r = s.create(d, b"sub", mode=0o600, err=0)
    r2 = s.call(Opcode.FUSE_LOOKUP, d, b"sub\0", ENTRY, err=0)
    assert s.nodeid_of(r2) == s.nodeid_of(r) and s.lookups(s.nodeid_of(r)) == 2


@case(TREE)
def create_existing_excl(s):
    s.create(ROOT, b"f", flags=os.O_RDWR | os.O_EXCL, err=errno.EEXIST)
    assert s.data("f") == b"hello"


@case(TREE)
def create_existing(s):
    f = s.node(b"f")                                     # the guest holds it already
    r = s.create(ROOT, b"f", err=0)
    assert s.nodeid_of(r) == f and s.lookups(f) == 2
    assert s.read(f, s.fh_of(r), 0, 100).body == b"hello"


@case(TREE)
def create_over_symlink(s):
    s.create(ROOT, b"link", err=errno.ELOOP)
    s.create(ROOT, b"link", flags=os.O_RDWR | os.O_EXCL, err=errno.EEXIST)
    s.create(ROOT, b"link", flags=os.O_RDWR | os.O_TRUNC, err=errno.ELOOP)
    assert s.data("f") == b"hello"


@case(TREE)
def create_over_dir_and_fifo(s):
    s.create(ROOT, b"d", err=errno.EISDIR)
    s.create(ROOT, b"fifo", flags=os.O_RDWR | os.O_NONBLOCK, err=0)


@case(TREE)
def create_trunc_non_empty(s):
    r = s.create(ROOT, b"f", flags=os.O_WRONLY | os.O_TRUNC, err=0)
    s.getattr(s.nodeid_of(r), err=0)
    assert s.data("f") == b""


@case(TREE)
def create_wronly_without_writeback(s):
    """A write-only handle stays write-only: READ through it fails."""
    r = s.create(ROOT, b"wo", flags=os.O_WRONLY, err=0)
    node, fh = s.nodeid_of(r), s.fh_of(r)
    s.write(node, fh, 0, b"abc", err=0)
    s.read(node, fh, 0, 10, err=errno.EBADF)


@case(TREE, init_flags=abi.FUSE_WRITEBACK_CACHE, options=ServerOptions(writeback=True))
def create_wronly_with_writeback(s):
    """With a guest write-back cache the host handle is read-write."""
    r = s.create(ROOT, b"wo", flags=os.O_WRONLY, err=0)
    node, fh = s.nodeid_of(r), s.fh_of(r)
    s.write(node, fh, 0, b"abc", err=0)
    assert s.read(node, fh, 0, 10, err=0).body == b"abc"


@case(TREE)
def create_append_then_write(s):
    """An O_APPEND handle: the C WRITE leaves it to Python (the file position decides)."""
    r = s.create(ROOT, b"f", flags=os.O_WRONLY | os.O_APPEND, err=0)
    s.write(s.nodeid_of(r), s.fh_of(r), 0, b"+appended", c=False, err=0)
    assert s.data("f") == b"hello+appended"


@case(TREE, init_flags=abi.FUSE_WRITEBACK_CACHE, options=ServerOptions(writeback=True))
def create_append_with_writeback(s):
    """With write-back the guest computes append offsets: no host O_APPEND, C writes."""
    r = s.create(ROOT, b"f", flags=os.O_WRONLY | os.O_APPEND, err=0)
    s.write(s.nodeid_of(r), s.fh_of(r), 0, b"HE", err=0)
    assert s.data("f") == b"HEllo"


@case(TREE)
def create_modes(s):
    s.create(ROOT, b"suid", mode=0o4755, err=0)
    s.create(ROOT, b"all", mode=0o777, umask=0o022, err=0)     # no POSIX ACL: umask not ours
    s.create(ROOT, b"typebits", mode=stat.S_IFREG | 0o600, err=0)
    assert [s.host(n)[0] for n in ("suid", "all", "typebits")] == [
        stat.S_IFREG | 0o4755, stat.S_IFREG | 0o777, stat.S_IFREG | 0o600]


@case(TREE)
def create_kill_suidgid_left_to_python(s):
    s.create(ROOT, b"k", open_flags=abi.FUSE_OPEN_KILL_SUIDGID, c=False, err=0)


@case(TREE, options=ServerOptions(cache="always"))
def create_and_open_with_cache_always(s):
    r = s.create(ROOT, b"new", err=0)
    assert abi.fuse_open_out.parse(r.body, ENTRY).open_flags == abi.FOPEN_KEEP_CACHE
    assert abi.fuse_entry_out_head.parse(r.body).entry_valid == 86400
    assert s.open_flags_of(s.open(s.node(b"f"), err=0)) == abi.FOPEN_KEEP_CACHE
    assert s.open_flags_of(s.opendir(s.node(b"d"), err=0)) == abi.FOPEN_CACHE_DIR


@case(TREE, options=ServerOptions(cache="never"))
def create_and_open_with_cache_never(s):
    r = s.create(ROOT, b"new", err=0)
    assert abi.fuse_open_out.parse(r.body, ENTRY).open_flags == abi.FOPEN_DIRECT_IO
    assert s.open_flags_of(s.open(s.node(b"f"), err=0)) == abi.FOPEN_DIRECT_IO
    assert s.open_flags_of(s.opendir(s.node(b"d"), err=0)) == 0


@case(TREE)
def create_in_a_file_or_unknown_parent(s):
    s.create(s.node(b"f"), b"x", err=errno.ENOTDIR)
    s.create(9999, b"x", c=False, err=errno.EBADF)       # unknown nodeid: Python's


# MKDIR, MKNOD, SYMLINK

@case(TREE)
def mkdir_modes(s):
    s.mkdir(ROOT, b"m755", err=0)
    s.mkdir(ROOT, b"m777", mode=0o777, umask=0o077, err=0)     # no POSIX ACL: umask not ours
    s.mkdir(ROOT, b"sticky", mode=0o3777, err=0)        # mkdir keeps no set-group-ID
    s.mkdir(ROOT, b"d", err=errno.EEXIST)
    s.mkdir(ROOT, b"f", err=errno.EEXIST)
    s.mkdir(s.node(b"d"), b"sub", mode=0o700, err=0)
    assert [s.host(n)[0] for n in ("m755", "m777", "sticky", "d/sub")] == [
        stat.S_IFDIR | 0o755, stat.S_IFDIR | 0o777, stat.S_IFDIR | 0o1777, stat.S_IFDIR | 0o700]


@case(TREE)
def mknod_fifo_and_file(s):
    p = s.nodeid_of(s.mknod(ROOT, b"p", stat.S_IFIFO | 0o640, err=0))
    r = s.nodeid_of(s.mknod(ROOT, b"r", stat.S_IFREG | 0o600, err=0))
    s.mknod(ROOT, b"zero", 0o644, err=0)                 # no type: a regular file
    s.mknod(ROOT, b"f", stat.S_IFIFO | 0o644, err=errno.EEXIST)
    s.open(p, os.O_RDONLY, err=errno.EACCES)             # a FIFO is never opened on the host
    s.open(r, os.O_RDWR, err=0)
    assert [s.host(n)[0] for n in ("p", "r", "zero")] == [
        stat.S_IFIFO | 0o640, stat.S_IFREG | 0o600, stat.S_IFREG | 0o644]


@case(TREE)
def mknod_other_types(s):
    sock = s.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, err=0)
    s.open(s.nodeid_of(sock), os.O_RDWR, err=errno.EACCES)
    s.mknod(ROOT, b"dir", stat.S_IFDIR | 0o755, err=errno.EPERM)
    s.mknod(ROOT, b"lnk", stat.S_IFLNK | 0o777, err=errno.EINVAL)
    s.mknod(ROOT, b"bad", 0o170000 | 0o644, err=errno.EINVAL)
    assert stat.S_ISSOCK(s.host("sock")[0])


@case(TREE)
def mknod_char_device(s):
    r = s.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, rdev=(1 << 8) | 3)   # 1:3
    if not r.error:
        assert os.lstat(s.root / "null").st_rdev == os.makedev(1, 3)
        s.open(s.nodeid_of(r), os.O_RDWR, err=errno.EACCES)   # nor is a device


@case(TREE)
def symlink_targets(s):
    s.symlink(ROOT, b"s1", b"f", err=0)
    s.symlink(ROOT, b"s2", b"/etc/passwd", err=0)        # preserved, never followed
    s.symlink(ROOT, b"s3", b"../../../outside/" + b"x" * 200, err=0)
    s.symlink(ROOT, b"s4", b"x" * 4000, err=0)
    s.symlink(ROOT, b"link", b"f", err=errno.EEXIST)
    s.symlink(ROOT, b"s5", b"", c=False, err=errno.EINVAL)     # empty target: Python's
    assert [os.readlink(s.root / n) for n in ("s1", "s2", "s3", "s4")] == [
        "f", "/etc/passwd", "../../../outside/" + "x" * 200, "x" * 4000]


# LINK

@case(TREE)
def link_same_nodeid(s):
    f = s.node(b"f")
    assert s.nodeid_of(s.link(f, ROOT, b"hard", err=0)) == f
    assert s.nodeid_of(s.link(f, s.node(b"d"), b"hard2", err=0)) == f
    s.getattr(f, err=0)
    s.link(f, ROOT, b"g", err=errno.EEXIST)
    s.link(s.node(b"d"), ROOT, b"dirlink", err=errno.EPERM)
    s.link(s.node(b"link"), ROOT, b"linklink", err=0)    # the symlink itself
    s.link(9999, ROOT, b"x", c=False, err=errno.EBADF)   # unknown nodeid: Python's
    assert os.lstat(s.root / "f").st_nlink == 3 and s.lookups(f) == 3
    assert os.readlink(s.root / "linklink") == "f"


@case(TREE)
def link_nlink_two(s):
    f = s.node(b"f")
    r = s.link(f, ROOT, b"hard", err=0)
    attr = abi.fuse_attr.parse(r.body, HEAD)
    assert (s.nodeid_of(r), attr.nlink, s.host("hard")[3]) == (f, 2, 2)


@case(TREE)
def link_after_rename_and_unlink(s):
    """The magic link: the file itself, whatever its names now (or none)."""
    f = s.node(b"f")
    s.rename(ROOT, b"f", ROOT, b"renamed", err=0)
    s.link(f, ROOT, b"again", err=0)
    g = s.node(b"g")
    s.unlink(ROOT, b"g", err=0)
    if s.gone:                                   # a stale inode is Python's to explain
        s.link(g, ROOT, b"revived", c=False, err=s.gone)
    else:
        s.link(g, ROOT, b"revived", err=errno.ENOENT)    # no names left


# UNLINK, RMDIR

@case(TREE)
def unlink_cases(s):
    s.unlink(ROOT, b"missing", err=errno.ENOENT)
    s.unlink(ROOT, b"f", err=0)
    s.unlink(ROOT, b"link", err=0)
    s.unlink(ROOT, b"d", err=errno.EISDIR)
    s.unlink(s.node(b"d"), b"x", err=0)
    s.unlink(9999, b"x", c=False, err=errno.EBADF)
    assert not (s.root / "f").exists() and not (s.root / "link").is_symlink()


@case(TREE)
def rmdir_cases(s):
    s.rmdir(ROOT, b"d", err=errno.ENOTEMPTY)
    s.rmdir(ROOT, b"f", err=errno.ENOTDIR)
    s.rmdir(ROOT, b"missing", err=errno.ENOENT)
    s.rmdir(ROOT, b"e", err=0)
    s.rmdir(ROOT, b"link", err=errno.ENOTDIR)


# RENAME, RENAME2

@case(TREE)
def rename_cases(s):
    d = s.node(b"d")
    s.rename(ROOT, b"f", ROOT, b"g", err=0)              # over an existing file
    assert s.data("g") == b"hello"
    s.rename(ROOT, b"g", d, b"moved", err=0)
    s.rename(ROOT, b"missing", ROOT, b"x", err=errno.ENOENT)
    s.rename(ROOT, b"e", ROOT, b"d", err=errno.ENOTEMPTY)
    s.rename(ROOT, b"link", ROOT, b"e", err=errno.EISDIR)
    s.rename(ROOT, b"d", d, b"inside", err=errno.EINVAL)
    s.rename(ROOT, b"fifo", ROOT, b"fifo2", err=0)


@case(TREE)
def rename2_cases(s):
    d = s.node(b"d")
    s.rename(ROOT, b"f", ROOT, b"g", RENAME_NOREPLACE, err=errno.EEXIST)
    assert s.data("g") == b"other"
    s.rename(ROOT, b"f", ROOT, b"h", RENAME_NOREPLACE, err=0)
    s.rename(ROOT, b"h", d, b"x", RENAME_EXCHANGE, err=0)
    assert (s.data("h"), s.data("d/x")) == (b"in d", b"hello")
    s.rename(ROOT, b"d", ROOT, b"link", RENAME_EXCHANGE, err=0)
    s.rename(ROOT, b"g", ROOT, b"nothere", RENAME_EXCHANGE, err=errno.ENOENT)
    s.rename(ROOT, b"g", ROOT, b"e", RENAME_NOREPLACE | RENAME_EXCHANGE, err=errno.EINVAL)
    s.rename(ROOT, b"g", ROOT, b"e", 1 << 7, err=errno.EINVAL)   # an unknown flag
    s.rename(ROOT, b"g", ROOT, b"g2", 0, err=0)          # RENAME2 without flags
    s.rename(ROOT, b"g2", 9999, b"x", RENAME_NOREPLACE, c=False, err=errno.EBADF)


# OPEN, OPENDIR, RELEASE(DIR), FLUSH, FSYNC(DIR)

@case(TREE)
def open_cases(s):
    s.open(s.node(b"d"), err=errno.EISDIR)
    s.open(s.node(b"link"), err=errno.ELOOP)
    s.open(s.node(b"fifo"), err=errno.EACCES)
    s.open(ROOT, os.O_RDONLY | os.O_DIRECTORY, err=errno.EISDIR)
    f = s.node(b"f")
    fh = s.fh_of(s.open(f, os.O_RDONLY, err=0))
    s.read(f, fh, 0, 100, err=0)
    s.write(f, fh, 0, b"nope", err=errno.EBADF)          # a read-only handle
    s.release(f, fh, err=0)
    s.open(f, os.O_RDWR | os.O_TRUNC, err=0)
    assert s.data("f") == b""
    s.open(f, os.O_RDONLY | os.O_DIRECTORY, err=errno.ENOTDIR)
    s.open(9999, c=False, err=errno.EBADF)


@case(TREE)
def open_append_then_write(s):
    """O_APPEND: the write lands at the end whatever offset the guest sent (Python's)."""
    f = s.node(b"f")
    fh = s.fh_of(s.open(f, os.O_WRONLY | os.O_APPEND, err=0))
    s.write(f, fh, 0, b"+1", c=False, err=0)
    s.write(f, fh, 1, b"+2", c=False, err=0)
    fh2 = s.fh_of(s.open(f, os.O_WRONLY, err=0))
    s.write(f, fh2, 0, b"J", err=0)                      # a plain handle: C
    assert s.data("f") == b"Jello+1+2"


@case(TREE, init_flags=abi.FUSE_WRITEBACK_CACHE, options=ServerOptions(writeback=True))
def open_with_writeback(s):
    f = s.node(b"f")
    fh = s.fh_of(s.open(f, os.O_WRONLY | os.O_APPEND, err=0))
    s.read(f, fh, 0, 100, err=0)                         # read-write on the host
    s.write(f, fh, 1, b"EY", err=0)                      # no host O_APPEND: C writes at 1
    assert s.data("f") == b"hEYlo"


@case(TREE)
def opendir_cases(s):
    s.opendir(s.node(b"f"), err=errno.ENOTDIR)
    s.opendir(s.node(b"link"), err=errno.ENOTDIR)
    d = s.node(b"d")
    fh = s.fh_of(s.opendir(d, err=0))
    s.fsync(d, fh, dir=True, err=0)
    s.fsync(d, fh, datasync=True, dir=True, err=0)
    s.release(d, fh, dir=True, err=0)
    s.release(d, fh, dir=True, c=False, err=errno.EBADF)     # gone: Python's
    s.release(ROOT, s.fh_of(s.opendir(ROOT, err=0)), dir=True, err=0)
    s.opendir(9999, c=False, err=errno.EBADF)


@case(TREE)
def release_flush_fsync(s):
    f = s.node(b"f")
    fh = s.fh_of(s.open(f, os.O_RDWR, err=0))
    s.write(f, fh, 5, b" world", err=0)
    s.flush(f, fh, err=0)
    s.fsync(f, fh, err=0)
    s.fsync(f, fh, datasync=True, err=0)
    s.release(f, fh, err=0)
    assert s.rig.fs.store.counts()[2] == 0
    s.release(f, fh, c=False, err=errno.EBADF)           # released: Python's
    s.release(f, 12345, c=False, err=errno.EBADF)        # never known
    s.flush(f, fh, c=False, err=errno.EBADF)
    s.fsync(f, fh, c=False, err=errno.EBADF)
    s.fsync(f, 12345, datasync=True, c=False, err=errno.EBADF)
    assert s.data("f") == b"hello world"


# STATFS

@case(TREE)
def statfs_cases(s):
    st = abi.fuse_kstatfs.parse(s.statfs(ROOT, err=0).body)
    host = os.statvfs(s.root)
    assert (st.blocks, st.files, st.bsize, st.namelen, st.frsize) == (
        host.f_blocks, host.f_files, host.f_bsize, host.f_namemax, host.f_frsize)
    s.statfs(s.node(b"f"), err=0)
    s.statfs(s.node(b"link"), err=0)
    s.statfs(9999, c=False, err=errno.EBADF)


# FORGET, BATCH_FORGET (on the hiprio queue)

@case(TREE)
def forget_and_batch_forget(s):
    f, g, d = s.node(b"f"), s.node(b"g"), s.node(b"d")
    s.node(b"f")
    s.node(b"f")
    x = s.node(b"d", b"x")
    assert (s.lookups(f), s.lookups(d), s.lookups(x)) == (3, 2, 1)
    s.forget(f, 2)
    assert s.lookups(f) == 1
    s.getattr(f, err=0)                                  # 1 left: C serves it
    s.forget(f, 1)
    assert s.lookups(f) == 0
    s.getattr(f, c=False, err=errno.EBADF)               # forgotten: Python's
    s.forget(9999, 1)                                    # unknown: ignored
    s.batch_forget([(g, 1), (d, 1), (x, 5), (9999, 3)])  # x over-forgotten: gone
    assert (s.lookups(g), s.lookups(d), s.lookups(x)) == (0, 1, 0)
    s.getattr(g, c=False, err=errno.EBADF)
    s.getattr(d, err=0)
    s.batch_forget([])
    s.forget(ROOT, 100)                                  # the root is never forgotten
    s.getattr(ROOT, err=0)


@case(TREE)
def create_then_forget(s):
    r = s.create(ROOT, b"new", err=0)
    node, fh = s.nodeid_of(r), s.fh_of(r)
    s.forget(node, 1)
    s.read(node, fh, 0, 10, err=0)                       # the handle outlives the lookups
    s.release(node, fh, err=0)
    s.getattr(node, c=False, err=errno.EBADF)


@case(TREE)
def malformed_forgets_left_to_python(s):
    f, g = s.node(b"f"), s.node(b"g")
    s.node(b"f")
    s.call(Opcode.FUSE_FORGET, f, bytes(4), queue=HIPRIO, no_reply=True, c=False)  # short
    assert s.lookups(f) == 2
    # a count past the pairs sent: Python forgets those there are
    args = abi.fuse_batch_forget_in.build(count=3) + b"".join(
        abi.fuse_forget_one.build(nodeid=n, nlookup=1) for n in (f, g))
    s.call(Opcode.FUSE_BATCH_FORGET, 0, args, queue=HIPRIO, no_reply=True, c=False)
    assert (s.lookups(f), s.lookups(g)) == (1, 0)
    # fewer than the pairs sent: C forgets the count
    args = abi.fuse_batch_forget_in.build(count=0) + abi.fuse_forget_one.build(nodeid=f, nlookup=1)
    s.call(Opcode.FUSE_BATCH_FORGET, 0, args, queue=HIPRIO, no_reply=True)
    assert s.lookups(f) == 1


@case(TREE)
def short_but_enough_arguments(s):
    f = s.node(b"f")
    fh = s.fh_of(s.open(f, err=0))
    s.call(Opcode.FUSE_RELEASE, f, abi.fuse_release_in.build(fh=fh)[:16], err=0)   # 7.8's
    fh = s.fh_of(s.open(f, err=0))
    s.call(Opcode.FUSE_FLUSH, f, abi.fuse_flush_in.build(fh=fh)[:16], c=False,
           err=errno.EINVAL)
    s.call(Opcode.FUSE_FSYNC, f, abi.fuse_fsync_in.build(fh=fh)[:8], c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_OPENDIR, ROOT, bytes(4), OPEN_OUT, c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_OPEN, f, abi.fuse_open_in.build() + b"trailing", OPEN_OUT, err=0)
    s.call(Opcode.FUSE_RENAME2, ROOT, abi.fuse_rename_in.build(newdir=ROOT) + b"f\0h\0",
           c=False, err=errno.EINVAL)                    # RENAME's arguments under RENAME2


@case(TREE)
def forget_with_extension_left_to_python(s):
    f = s.node(b"f")
    s.forget(f, 1, extensions=groups_ext(5), c=False)
    assert s.lookups(f) == 0


# names and requests C leaves to Python

BAD_NAMES = {b".": errno.EINVAL, b"..": errno.EINVAL, b"a/b": errno.EINVAL,
             b"n" * 256: errno.ENAMETOOLONG, b"f\0junk": errno.EINVAL, b"": errno.EINVAL}


@case(TREE)
def bad_names_create_mkdir_mknod(s):
    for name, err in BAD_NAMES.items():
        s.create(ROOT, name, c=False, err=err)
        s.mkdir(ROOT, name, c=False, err=err)
        s.mknod(ROOT, name, stat.S_IFIFO | 0o644, c=False, err=err)


@case(TREE)
def bad_names_symlink_link(s):
    f = s.node(b"f")
    for name, err in BAD_NAMES.items():
        s.symlink(ROOT, name, b"target", c=False, err=err)
        s.link(f, ROOT, name, c=False, err=err)
    s.call(Opcode.FUSE_SYMLINK, ROOT, b"s\0t\0junk", ENTRY, c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_SYMLINK, ROOT, b"s\0t", ENTRY, c=False, err=errno.EINVAL)   # no NUL
    s.call(Opcode.FUSE_SYMLINK, ROOT, b"s\0", ENTRY, c=False, err=errno.EINVAL)    # no target


@case(TREE)
def bad_names_unlink_rmdir(s):
    d = s.node(b"d")
    for name, err in [*BAD_NAMES.items(), (b"x\0", errno.EINVAL)]:
        s.unlink(d, name, c=False, err=err)
        s.rmdir(ROOT, name, c=False, err=err)
    s.call(Opcode.FUSE_UNLINK, ROOT, b"f", c=False, err=errno.EINVAL)      # no NUL
    assert s.data("f") == b"hello" and s.data("d/x") == b"in d"


@case(TREE)
def bad_names_rename(s):
    for name, err in BAD_NAMES.items():
        s.rename(ROOT, name, ROOT, b"ok", c=False, err=err)
        s.rename(ROOT, b"f", ROOT, name, c=False, err=err)
        s.rename(ROOT, b"f", ROOT, name, RENAME_NOREPLACE, c=False, err=err)
    s.call(Opcode.FUSE_RENAME, ROOT, abi.fuse_rename_in.build(newdir=ROOT) + b"f\0",
           c=False, err=errno.EINVAL)                    # one name only


@case(TREE)
def name_too_long_for_the_host(s):
    """255 bytes is C's: the host's own answer."""
    long = b"l" * 255
    s.create(ROOT, long, err=0)
    s.mkdir(ROOT, long, err=errno.EEXIST)
    s.rename(ROOT, long, ROOT, b"short", err=0)
    s.unlink(ROOT, long, err=errno.ENOENT)


def _group_dir(root: Path) -> None:
    TREE(root)
    (root / "grp").mkdir()
    os.chown(root / "grp", 0, 4242)
    os.chmod(root / "grp", 0o770)


@case(_group_dir, init_flags=abi.FUSE_CREATE_SUPP_GROUP)
def extensions_left_to_python(s):
    """A request with total_extlen set is Python's, whatever it is."""
    ext = groups_ext(4242)
    grp = s.node(b"grp")
    s.mkdir(grp, b"m", extensions=ext, uid=USER, gid=USER, c=False, err=0)   # a member
    s.mkdir(grp, b"n", uid=USER, gid=USER, err=errno.EACCES)                 # without it
    s.create(ROOT, b"c", extensions=ext, c=False, err=0)
    s.unlink(ROOT, b"g", extensions=ext, c=False, err=0)
    s.rename(ROOT, b"f", ROOT, b"f2", extensions=ext, c=False, err=0)
    s.open(s.node(b"f2"), extensions=ext, c=False, err=0)
    s.statfs(ROOT, extensions=ext, c=False, err=0)
    assert s.host("grp/m")[1:3] == (USER, USER)


@case(TREE)
def short_requests_left_to_python(s):
    s.call(Opcode.FUSE_OPEN, s.node(b"f"), b"\0\0\0\0", OPEN_OUT, c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_MKDIR, ROOT, b"\0\0\0\0", ENTRY, c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_RELEASE, ROOT, bytes(8), c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_LINK, ROOT, bytes(4), ENTRY, c=False, err=errno.EINVAL)
    s.call(Opcode.FUSE_CREATE, ROOT, abi.fuse_create_in.build(flags=os.O_RDWR, mode=0o644)
           + b"x\0", 16, c=False, err=errno.EIO)         # no room for the reply
    s.call(Opcode.FUSE_MKDIR, ROOT, abi.fuse_mkdir_in.build(mode=0o755) + b"y\0", 100,
           c=False, err=errno.EIO)


@case(TREE)
def values_python_refuses(s):
    """Open flags and a mknod mode that no C int holds: os.open/os.mknod refuse them
    (EINVAL), so C leaves them to Python; values C and Python both mask are C's."""
    s.open(s.node(b"f"), os.O_RDONLY | 1 << 31, c=False, err=errno.EINVAL)
    s.create(ROOT, b"hi", flags=os.O_RDWR | 1 << 31, c=False, err=errno.EINVAL)
    s.mknod(ROOT, b"hp", 1 << 31 | stat.S_IFIFO | 0o644, c=False, err=errno.EINVAL)
    s.mknod(ROOT, b"hq", 1 << 16 | stat.S_IFIFO | 0o644, err=0)   # umode_t cuts it
    s.mkdir(ROOT, b"hm", 1 << 31 | 0o755, err=0)                  # & 07777
    s.create(ROOT, b"hc", mode=1 << 31 | 0o644, err=0)            # & 07777
    s.create(ROOT, b"hu", umask=0xFFFFFFFF, err=0)                # & 0777 (unused here)
    s.open(s.node(b"g"), os.O_RDONLY | 1 << 30, err=0)            # unknown bits: ignored
    s.create(ROOT, b"u", uid=0xFFFFFFFF, gid=0, err=errno.EPERM)  # no such id
    s.mkdir(ROOT, b"v", uid=0, gid=0xFFFFFFFF, err=errno.EPERM)
    s.rename(ROOT, b"f", ROOT, b"f2", 1 << 31, err=errno.EINVAL)
    s.fsync(ROOT, 1 << 63, c=False, err=errno.EBADF)
    assert not (s.root / "hi").exists() and not (s.root / "hp").exists()


@case(TREE, minor=11)
def old_minor_11(s):
    """7.11: CREATE (fuse_open_in, no umask) and MKNOD (no umask) are Python's."""
    s.call(Opcode.FUSE_CREATE, ROOT, abi.fuse_create_in.build(flags=os.O_RDWR, mode=0o600)[:8]
           + b"c\0", ENTRY + OPEN_OUT, c=False, err=0)
    s.call(Opcode.FUSE_MKNOD, ROOT, abi.fuse_mknod_in.build(mode=stat.S_IFIFO | 0o600)[:8]
           + b"p\0", ENTRY, c=False, err=0)
    s.mkdir(ROOT, b"m", mode=0o750, err=0)
    s.symlink(ROOT, b"s", b"f", err=0)
    s.statfs(err=0)
    s.unlink(ROOT, b"g", err=0)


@case(TREE, minor=8)
def old_minor_8(s):
    """Before 7.9 (short entry replies) every reply but FORGET's is Python's."""
    assert len(s.mkdir(ROOT, b"m", c=False, err=0).body) == abi.FUSE_COMPAT_ENTRY_OUT_SIZE
    s.symlink(ROOT, b"s", b"f", c=False, err=0)
    s.unlink(ROOT, b"g", c=False, err=0)
    s.statfs(c=False, err=0)
    s.forget(s.node(b"f"), 1)


@case(TREE)
def deleted_parent_and_file(s):
    e, g = s.node(b"e"), s.node(b"g")
    s.rmdir(ROOT, b"e", err=0)
    s.unlink(ROOT, b"g", err=0)
    if s.gone:                   # file handles: both are stale, which Python explains
        s.mkdir(e, b"x", c=False, err=s.gone)
        s.create(e, b"x", c=False, err=s.gone)
        s.link(s.node(b"f"), e, b"x", c=False, err=s.gone)
        s.unlink(e, b"x", c=False, err=s.gone)
        s.opendir(e, c=False, err=s.gone)
        s.open(g, os.O_RDWR, c=False, err=s.gone)
        return
    s.mkdir(e, b"x", err=errno.ENOENT)                   # the directory is gone
    s.create(e, b"x", err=errno.ENOENT)
    s.symlink(e, b"x", b"t", err=errno.ENOENT)
    s.mknod(e, b"x", stat.S_IFIFO | 0o644, err=errno.ENOENT)
    s.link(s.node(b"f"), e, b"x", err=errno.ENOENT)
    s.rename(ROOT, b"f", e, b"x", err=errno.ENOENT)
    s.unlink(e, b"x", err=errno.ENOENT)
    s.opendir(e, err=0)
    s.statfs(e, err=0)
    fh = s.fh_of(s.open(g, os.O_RDWR, err=0))            # still open-able by its nodeid
    assert s.read(g, fh, err=0).body == b"other"
    s.link(g, ROOT, b"g-again", err=errno.ENOENT)        # no names left


@case(TREE, fs={"allow_direct_io": True, "preserve_noatime": True})
def open_flags_kept_by_the_file_system(s):
    f = s.node(b"f")
    s.open(f, os.O_RDONLY | os.O_NOATIME, err=0)
    s.open(f, os.O_RDWR | os.O_DIRECT, err=0)
    s.create(ROOT, b"n", flags=os.O_RDWR | os.O_DIRECT | os.O_NOATIME, err=0)
    assert [int(v, 8) & (os.O_NOATIME | os.O_DIRECT) for v in s.host_flags().values()] == [
        os.O_NOATIME, os.O_DIRECT, os.O_NOATIME | os.O_DIRECT]


@case(TREE)
def open_flags_dropped_by_default(s):
    f = s.node(b"f")
    s.open(f, os.O_RDONLY | os.O_NOATIME, err=0)
    s.open(f, os.O_RDWR | os.O_DIRECT | os.O_SYNC | os.O_NONBLOCK, err=0)
    s.open(f, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY, err=0)
    s.create(ROOT, b"n", flags=os.O_RDWR | os.O_DIRECT | os.O_NOATIME | os.O_DSYNC, err=0)
    assert not any(int(v, 8) & (os.O_NOATIME | os.O_DIRECT) for v in s.host_flags().values())
    s.open(f, os.O_RDONLY, open_flags=abi.FUSE_OPEN_KILL_SUIDGID, c=False, err=0)
    s.open(f, os.O_WRONLY | os.O_TRUNC, open_flags=abi.FUSE_OPEN_KILL_SUIDGID, c=False, err=0)


@case(TREE)
def long_targets_and_names(s):
    s.symlink(ROOT, b"t" * 255, b"x" * 4095, err=0)      # the most C takes
    s.symlink(ROOT, b"s2", b"x" * 4096, err=errno.ENAMETOOLONG)   # the host's answer
    s.symlink(ROOT, b"s3", b"x" * 5000, c=False, err=errno.ENAMETOOLONG)   # past C's room
    a, b = b"a" * 255, b"b" * 255
    s.create(ROOT, a, err=0)
    s.rename(ROOT, a, ROOT, b, err=0)                    # two longest names: C's
    s.rename(ROOT, b, ROOT, a, RENAME_NOREPLACE, err=0)
    s.link(s.node(a), ROOT, b, err=0)
    s.rename(ROOT, a, ROOT, b, RENAME_EXCHANGE, err=0)
    s.unlink(ROOT, b, err=0)


@case(TREE)
def rename_whiteout(s):
    s.rename(ROOT, b"f", ROOT, b"w", 4, err=0)           # RENAME_WHITEOUT: a 0:0 device left
    assert stat.S_ISCHR(os.lstat(s.root / "f").st_mode)


@case(TREE)
def header_len_not_the_chain(s):
    """fuse_in_header.len, not the chain, bounds the arguments."""
    s.call(Opcode.FUSE_UNLINK, ROOT, b"f\0junk\0", raw_len=abi.fuse_in_header.size + 2, err=0)
    s.call(Opcode.FUSE_MKDIR, ROOT, abi.fuse_mkdir_in.build(mode=0o700) + b"m\0xyz\0",
           ENTRY, raw_len=abi.fuse_in_header.size + 8 + 2, err=0)
    s.call(Opcode.FUSE_UNLINK, ROOT, b"g\0", raw_len=abi.fuse_in_header.size + 100,
           c=False, err=errno.EINVAL)                    # longer than the chain
    s.call(Opcode.FUSE_UNLINK, ROOT, b"g\0", raw_len=abi.fuse_in_header.size - 1, c=False,
           err=errno.EINVAL)


@case(TREE)
def handles_of_odd_files(s):
    r = s.create(ROOT, b"fifo", flags=os.O_RDWR, err=0)  # CREATE opens an existing FIFO
    node, fh = s.nodeid_of(r), s.fh_of(r)
    s.flush(node, fh, err=0)
    s.fsync(node, fh, err=errno.EINVAL)                  # a pipe
    s.release(node, fh, err=0)
    d = s.node(b"d")
    fh = s.fh_of(s.opendir(d, err=0))
    s.flush(d, fh, err=0)
    s.fsync(d, fh, err=0)                                # FSYNC of a directory handle
    s.release(d, fh, err=0)                              # RELEASE of a directory handle


# credentials: the daemon runs as root and creates as the caller

def _shared_dirs(root: Path) -> None:
    TREE(root)
    for name, mode in (("pub", 0o777), ("priv", 0o755), ("grp", 0o770), ("sgid", 0o2777)):
        (root / name).mkdir()
        os.chmod(root / name, mode)
    os.chown(root / "grp", 0, USER)
    os.chown(root / "sgid", 0, 4242)
    (root / "priv" / "victim").write_bytes(b"v")


MADE = ("file", "dir", "fifo", "sym")


def _make_all(s, parent, prefix, err=0, **kw):
    s.create(parent, prefix + b"file", mode=0o644, err=err, **kw)
    s.mkdir(parent, prefix + b"dir", mode=0o755, err=err, **kw)
    s.mknod(parent, prefix + b"fifo", stat.S_IFIFO | 0o644, err=err, **kw)
    s.symlink(parent, prefix + b"sym", b"target", err=err, **kw)


def _owners(s, prefix: str) -> set:
    return {s.host(prefix + what)[1:3] for what in MADE}


@case(_shared_dirs)
def as_user_in_world_writable_dir(s):
    pub = s.node(b"pub")
    _make_all(s, pub, b"u-", uid=USER, gid=USER)
    _make_all(s, pub, b"root-")                          # and as root again, same threads
    _make_all(s, s.node(b"grp"), b"g-", uid=USER, gid=USER)   # group-writable
    _make_all(s, pub, b"og-", uid=0, gid=USER)           # only the group switched
    _make_all(s, pub, b"uo-", uid=USER, gid=0)           # only the user switched
    _make_all(s, s.node(b"sgid"), b"s-", uid=USER, gid=USER)  # the directory's group
    assert _owners(s, "pub/u-") == {(USER, USER)}
    assert _owners(s, "pub/root-") == {(0, 0)}
    assert _owners(s, "grp/g-") == {(USER, USER)}
    assert _owners(s, "pub/og-") == {(0, USER)}
    assert _owners(s, "pub/uo-") == {(USER, 0)}
    assert _owners(s, "sgid/s-") == {(USER, 4242)}
    assert s.host("sgid/s-dir")[0] == stat.S_IFDIR | 0o2755    # inherits set-group-ID
    s.create(pub, b"u-setgid", mode=0o2755, uid=USER, gid=USER + 1, err=0)
    s.mknod(pub, b"u-null", stat.S_IFCHR | 0o600, rdev=(1 << 8) | 3, uid=USER, gid=USER,
            err=errno.EPERM)
    s.create(pub, b"u-file", uid=USER + 1, gid=USER + 1, err=errno.EACCES)   # another's
    s.create(pub, b"u-file", flags=os.O_RDWR | os.O_TRUNC, uid=USER, gid=USER, err=0)


@case(_shared_dirs)
def as_user_in_dir_user_cannot_write(s):
    priv = s.node(b"priv")
    _make_all(s, priv, b"u-", uid=USER, gid=USER, err=errno.EACCES)
    _make_all(s, s.node(b"grp"), b"o-", uid=USER + 1, gid=USER + 1, err=errno.EACCES)
    s.create(priv, b"victim", uid=USER, gid=USER, err=errno.EACCES)   # root's file
    # what is not done as the caller: the daemon's own rights
    s.link(s.node(b"f"), priv, b"hard", uid=USER, gid=USER, err=0)
    s.unlink(priv, b"victim", uid=USER, gid=USER, err=0)
    s.rename(priv, b"hard", ROOT, b"out", uid=USER, gid=USER, err=0)
    _make_all(s, priv, b"root-")                         # root may
    assert _owners(s, "priv/root-") == {(0, 0)}
    assert sorted(os.listdir(s.root / "priv")) == sorted("root-" + w for w in MADE)


@case(_shared_dirs, init_flags=ACL_FLAGS, options=ACL_OPTIONS)
def umask_applied_with_posix_acl(s):
    s.create(ROOT, b"c", mode=0o666, umask=0o077, err=0)
    s.mkdir(ROOT, b"m", mode=0o777, umask=0o027, err=0)
    s.mkdir(ROOT, b"sticky", mode=0o3777, umask=0o022, err=0)
    s.mknod(ROOT, b"p", stat.S_IFIFO | 0o666, umask=0o022, err=0)
    s.symlink(ROOT, b"s", b"f", err=0)                   # no umask for a symlink
    pub = s.node(b"pub")
    s.create(pub, b"uc", mode=0o666, umask=0o002, uid=USER, gid=USER, err=0)
    s.mkdir(pub, b"um", mode=0o777, umask=0o077, uid=USER, gid=USER, err=0)
    s.create(ROOT, b"zero", mode=0o666, umask=0, err=0)
    assert {n: oct(s.host(n)[0] & 0o7777) for n in ("c", "m", "sticky", "p", "s", "pub/uc",
                                                   "pub/um", "zero")} == {
        "c": "0o600", "m": "0o750", "sticky": "0o1755", "p": "0o644", "s": "0o777",
        "pub/uc": "0o664", "pub/um": "0o700", "zero": "0o666"}
    assert s.host("pub/uc")[1:3] == s.host("pub/um")[1:3] == (USER, USER)


@case(_shared_dirs)
def umask_ignored_without_posix_acl(s):
    s.create(ROOT, b"c", mode=0o666, umask=0o077, err=0)
    s.mkdir(ROOT, b"m", mode=0o777, umask=0o027, err=0)
    s.mknod(ROOT, b"p", stat.S_IFIFO | 0o666, umask=0o022, err=0)
    s.create(s.node(b"pub"), b"uc", mode=0o666, umask=0o002, uid=USER, gid=USER, err=0)
    assert {n: oct(s.host(n)[0] & 0o7777) for n in ("c", "m", "p", "pub/uc")} == {
        "c": "0o666", "m": "0o777", "p": "0o666", "pub/uc": "0o666"}


# --- running them ----------------------------------------------------------------------------


def run_side(make_rig, root: Path, c_on: bool, c: Case) -> Side:
    root.mkdir()
    c.prepare(root)
    side = Side(make_rig, root, c_on, c)
    try:
        c.run(side)
    except AssertionError as e:
        raise AssertionError(f"{'C' if c_on else 'Python'} run: {e}") from None
    side.settle()
    return side


def root_probe(side: Side, minor: int, ids: tuple) -> None:
    """The threads that served the case create as root again, C serving and not: the
    new nodes are root's, with their modes untouched by any umask."""
    assert_threads_clean(ids)
    for on in (True, False):
        side.set_c(on)
        where = "c" if on else "py"
        probes = [(Opcode.FUSE_MKDIR, f"probe-dir-{where}", abi.fuse_mkdir_in.build(mode=0o777),
                   ENTRY, 0o777, minor >= 9)]
        if minor >= 12:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
            probes.append((Opcode.FUSE_CREATE, f"probe-file-{where}",
                           abi.fuse_create_in.build(flags=flags, mode=0o666),
                           ENTRY + OPEN_OUT, 0o666, True))
        for op, name, args, size, mode, c_serves in probes:
            before = side.passed()
            r = side.client.call(op, ROOT, args + name.encode() + b"\0", size)
            assert side.passed() - before == (0 if on and c_serves else 1)
            assert r.error == 0, r
            st = os.lstat(side.root / name)
            assert (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) == (0, 0, oct(mode))
    side.set_c(side.c_on)
    assert_threads_clean(ids)


@pytest.mark.parametrize("inodes", ["fds", "file handles", "file handles, no idle fds"])
@pytest.mark.parametrize("c", CASES, ids=str)
def test_c_answers_as_python(rigs, tmp_path, c, inodes):
    """Every case three times: inodes kept as O_PATH fds; as file handles (the daemon's
    default, ``prefer``), which C makes and opens itself, with the fds of the ones used last
    kept open; and as file handles whose fds close as soon as nobody uses them."""
    ids = process_ids()
    if c.prepare is _shared_dirs and os.geteuid() != 0:
        pytest.skip("switching fsuid needs root")
    if inodes != "fds":
        c = dataclasses.replace(c, fs={**c.fs, "inode_file_handles": "prefer",
                                       "handle_fd_cache": 0 if "no idle" in inodes else 1024})
    py = run_side(rigs, tmp_path / "py", False, c)
    cc = run_side(rigs, tmp_path / "c", True, c)
    if inodes != "fds":
        assert cc.rig.fs.file_handles == py.rig.fs.file_handles == "prefer"
    for got, want in zip(cc.replies(), py.replies()):
        assert got == want, f"reply to {want[0]}: C {got[1:]} != Python {want[1:]}"
    assert len(cc.log) == len(py.log)
    assert tree_state(cc.root) == tree_state(py.root)
    assert cc.store() == py.store()
    root_probe(cc, c.minor, ids)
    root_probe(py, c.minor, ids)


# --- credentials under load ------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="switching fsuid needs root")
def test_concurrent_creates_as_users_and_root_keep_their_owners(rigs, tmp_path):
    """Creates as guest users and as root, each with its own umask (POSIX ACLs: the
    guest's umask is applied here), interleaved on two queue threads and the pool, C
    serving what it may: every node has its creator's owner and umask, and no thread keeps
    a guest's ids or umask afterwards."""
    ids = process_ids()
    os.chmod(tmp_path, 0o777)
    rig = rigs(directory=tmp_path, hot_threads=2, init=False, options=ACL_OPTIONS)
    rig.client.init(flags=ACL_FLAGS)
    c = rig.client
    errors: list = []

    def worker(k: int) -> None:
        try:
            for i in range(60):
                uid = USER + (i % 3) if (i + k) % 2 else 0
                umask = (0o022, 0o077, 0o002, 0)[(i + k) % 4]
                name = f"w{k}-{i}".encode()
                if i % 3 == 0:
                    args = abi.fuse_mkdir_in.build(mode=0o777, umask=umask) + name + b"\0"
                    op, size, mode = Opcode.FUSE_MKDIR, ENTRY, 0o777
                else:
                    args = abi.fuse_create_in.build(flags=os.O_RDWR | os.O_CREAT, mode=0o666,
                                                    umask=umask) + name + b"\0"
                    op, size, mode = Opcode.FUSE_CREATE, ENTRY + OPEN_OUT, 0o666
                r = c.call(op, ROOT, args, size, uid=uid, gid=uid)
                assert r.error == 0, (name, r)
                st = os.lstat(tmp_path / name.decode())
                assert (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) == \
                    (uid, uid, oct(mode & ~umask)), name
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert not errors, errors[:3]
    assert rig.stats()["passed"] < 1 + 3 * 60           # C served some of them
    assert_threads_clean(ids)


# --- where C must not serve them at all --------------------------------------------------------

_MODIFYING = {Opcode.FUSE_CREATE, Opcode.FUSE_MKDIR, Opcode.FUSE_MKNOD, Opcode.FUSE_SYMLINK,
              Opcode.FUSE_LINK, Opcode.FUSE_UNLINK, Opcode.FUSE_RMDIR, Opcode.FUSE_RENAME,
              Opcode.FUSE_RENAME2, Opcode.FUSE_OPEN}
_AS_CALLER = {Opcode.FUSE_CREATE, Opcode.FUSE_MKDIR, Opcode.FUSE_MKNOD, Opcode.FUSE_SYMLINK,
              Opcode.FUSE_LINK}


def _policies():
    from pyvirtiofsd.passthrough.idmap import IdMap
    return {
        "readonly server": (dict(options=ServerOptions(readonly=True)), _MODIFYING),
        "readonly fs": (dict(fs=lambda root: PassthroughFs(root, readonly=True)), _MODIFYING),
        "uid map": (dict(options=ServerOptions(uid_map=IdMap(["map:0:1000:1"], "uid"))),
                    _AS_CALLER),
    }


@pytest.mark.parametrize("policy", list(_policies()))
def test_policies_that_keep_metadata_in_python(rigs, tmp_path, policy):
    """Where Python's answer depends on more than C knows (EROFS, id translation) those
    opcodes stay Python's -- and the answers are Python's."""
    kw, python_only = _policies()[policy]
    if "fs" in kw:
        kw = dict(kw, fs=kw["fs"](tmp_path))
    (tmp_path / "f").write_bytes(b"x")
    os.chmod(tmp_path, 0o777)
    rig = rigs(directory=tmp_path, hot_threads=1, **kw)
    ops = rig.device.hotpath.ops
    assert not [Opcode(op).name for op in python_only if ops >> op & 1]
    served = [op for op in MUTATE_OPS if op not in python_only]
    assert all(ops >> op & 1 for op in served), [Opcode(op).name for op in served
                                                  if not ops >> op & 1]
    c = rig.client
    before = rig.stats()["passed"]
    r = c.call(Opcode.FUSE_MKDIR, ROOT, abi.fuse_mkdir_in.build(mode=0o755) + b"m\0", ENTRY)
    assert rig.stats()["passed"] == before + 1
    if python_only is _MODIFYING:
        assert r.error == -errno.EROFS
        r = c.call(Opcode.FUSE_OPEN, c.lookup(ROOT, b"f")[0].nodeid,
                   abi.fuse_open_in.build(flags=os.O_RDONLY), OPEN_OUT)
        assert r.error == 0
    else:
        assert r.error == 0
        owner = 1000 if policy == "uid map" else 0          # guest root is host 1000 there
        assert os.lstat(tmp_path / "m").st_uid == owner
