#!/usr/bin/env python3
"""File-system checks that run INSIDE a test guest against a virtio-fs mount point.

Run by the guest (the host's python3, reached through the guest's chroot of the host root; stdlib
only) as::

    python3 guest_checks.py MOUNTPOINT              # every check, one result line each
    python3 guest_checks.py MOUNTPOINT --only a,b   # some checks
    python3 guest_checks.py --list                  # check names, one per line
    python3 guest_checks.py --blksize DIR           # st_blksize of everything under DIR

Every check prints one machine-readable line, parsed by tests/e2e/test_guest.py on the host::

    PVFS-CHECK {"name": "...", "ok": true, "detail": "...", "info": {...}, "seconds": 0.1}

``info`` carries what the host verifies afterwards on its side of the share (paths are relative to
the mount point): ``host_files`` maps a path to the sha256 of the content the guest left there, and
some checks add owner/inode facts. A check fails on any unexpected result or exception; a check
whose operation the file system does not support reports ``"errno": "ENOTSUP"`` (or the errno seen)
in ``info`` so that "not supported" reads differently from "wrong". Checks work in their own
directory ``MOUNTPOINT/pvfs-checks/NAME`` and leave their files there for the host to inspect.

The file ``MOUNTPOINT/host-created.txt`` is expected to have been written by the host before boot.
Non-root checks fork a child that drops to uid/gid 1000.
"""

import ctypes
import errno
import hashlib
import mmap
import os
import stat
import sys
import time
import traceback

from guest_harness import Checks, Failed, as_user, emit, expect

USER = 1000  # the unprivileged guest user (uid and gid); needs no passwd entry
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST_FILE = "host-created.txt"
HOST_FILE_PREFIX = b"created on the host before boot"

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2

CHECKS = Checks()
check = CHECKS.add   # a check is named by its function; it returns (detail, info) or raises


def expect_errno(code, fn, *args, **kw):
    """``fn(*args)`` must fail with ``code``."""
    try:
        fn(*args, **kw)
    except OSError as e:
        if e.errno != code:
            raise Failed(f"{fn.__name__}: expected {errno.errorcode[code]}, got "
                         f"{errno.errorcode.get(e.errno, e.errno)} ({e})") from e
        return
    raise Failed(f"{fn.__name__}{args!r}: expected {errno.errorcode[code]}, but it succeeded")


def libc_call(name, *args):
    if getattr(libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pattern(n, seed=0):
    """Deterministic, non-repeating-looking bytes (catches misplaced chunks, unlike zeros)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 128  # 4 KiB
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(block[:32] + i.to_bytes(8, "little")).digest() + block[32:4096]
        i += 1
    return bytes(out[:n])


class Ctx:
    """A check's working directory, plus paths relative to the mount point for host checks."""

    def __init__(self, mount, name):
        self.mount = mount
        self.dir = os.path.join(mount, "pvfs-checks", name)
        os.makedirs(self.dir)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def rel(self, path):
        return os.path.relpath(path, self.mount)


# --------------------------------------------------------------------------------------------------
# The checks. Each takes a Ctx and returns (detail, info) — or just detail.


@check
def host_file_visible(c):
    data = read_file(os.path.join(c.mount, HOST_FILE))
    expect(data.startswith(HOST_FILE_PREFIX), f"unexpected content {data[:60]!r}")
    return f"{len(data)} bytes", {"sha256": sha256(data)}


@check
def write_read(c):
    small, big = b"hello from the guest\n", pattern(3 * 1024 * 1024 + 123, seed=1)
    write_file(c.path("small.txt"), small)
    write_file(c.path("big.bin"), big)  # one write(2) of 3 MiB: split over several FUSE requests
    expect(read_file(c.path("small.txt")) == small, "small file reads back differently")
    expect(read_file(c.path("big.bin")) == big, "3 MiB file reads back differently")
    with open(c.path("big.bin"), "rb") as f:  # unaligned pread in the middle
        f.seek(1_000_003)
        expect(f.read(70_001) == big[1_000_003:1_070_004], "unaligned read differs")
    fd = os.open(c.path("small.txt"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"appended\n")
    os.close(fd)
    expect(read_file(c.path("small.txt")) == small + b"appended\n", "O_APPEND write misplaced")
    expect(os.stat(c.path("big.bin")).st_size == len(big), "size of big.bin is wrong")
    files = {c.rel(c.path("small.txt")): sha256(small + b"appended\n"), c.rel(c.path("big.bin")): sha256(big)}
    return "3 MiB + small file, O_APPEND", {"host_files": files}


@check
def mkdir_rmdir(c):
    before = os.stat(c.dir).st_nlink
    os.mkdir(c.path("sub"), 0o750)
    st = os.stat(c.path("sub"))
    expect(stat.S_ISDIR(st.st_mode), "mkdir did not make a directory")
    expect(stat.S_IMODE(st.st_mode) == 0o750 & ~current_umask(), f"mode {oct(st.st_mode)}")
    expect(os.stat(c.dir).st_nlink == before + 1, "parent nlink did not grow by one")
    os.makedirs(c.path("a", "b", "c"))
    expect(os.path.isdir(c.path("a", "b", "c")), "nested mkdir failed")
    os.rmdir(c.path("sub"))
    expect(not os.path.exists(c.path("sub")), "rmdir left the directory")
    expect(os.stat(c.dir).st_nlink == before + 1, "parent nlink wrong after rmdir (a/ remains)")
    expect_errno(errno.ENOENT, os.rmdir, c.path("sub"))
    return "mkdir, nested mkdir, rmdir, parent nlink"


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@check
def readdir_10000(c):
    n = 10_000
    names = {f"entry-{i:05d}-{'x' * (i % 50)}" for i in range(n)}
    d = c.path("many")
    os.mkdir(d)
    for name in names:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    expect(len(listed) == len(set(listed)), f"duplicates in readdir: {len(listed) - len(set(listed))}")
    expect(set(listed) == names, f"readdir differs: {len(names - set(listed))} missing, "
                                 f"{len(set(listed) - names)} unexpected")
    with os.scandir(d) as it:  # d_type and a second full pass through the directory stream
        kinds = {e.name: e.is_file(follow_symlinks=False) for e in it}
    expect(len(kinds) == n and all(kinds.values()), "scandir pass differs or wrong d_type")
    return f"{n} entries listed twice", {"dir": c.rel(d), "count": n}


@check
def symlink(c):
    write_file(c.path("target.txt"), b"target content\n")
    os.symlink("target.txt", c.path("link"))
    os.symlink("missing", c.path("dangling"))
    os.symlink(c.dir + "/sub", c.path("dirlink"))
    os.mkdir(c.path("sub"))
    expect(os.readlink(c.path("link")) == "target.txt", "readlink differs")
    expect(stat.S_ISLNK(os.lstat(c.path("link")).st_mode), "lstat is not a symlink")
    expect(os.stat(c.path("link")).st_ino == os.stat(c.path("target.txt")).st_ino, "stat does not follow")
    expect(read_file(c.path("link")) == b"target content\n", "reading through the link differs")
    write_file(c.path("dirlink", "inside"), b"x")
    expect(os.path.exists(c.path("sub", "inside")), "path walk through a directory symlink failed")
    expect_errno(errno.ENOENT, os.open, c.path("dangling"), os.O_RDONLY)
    return "readlink, lstat, follow file and directory links, dangling → ENOENT"


@check
def hardlink(c):
    write_file(c.path("a"), b"shared")
    os.link(c.path("a"), c.path("b"))
    sa, sb = os.stat(c.path("a")), os.stat(c.path("b"))
    expect(sa.st_ino == sb.st_ino, "hard links have different inodes")
    expect(sa.st_nlink == 2 and sb.st_nlink == 2, f"nlink {sa.st_nlink}/{sb.st_nlink}, expected 2")
    with open(c.path("b"), "ab") as f:
        f.write(b"+more")
    expect(read_file(c.path("a")) == b"shared+more", "write through one name not seen through the other")
    os.unlink(c.path("a"))
    expect(os.stat(c.path("b")).st_nlink == 1, "nlink not 1 after unlinking one name")
    expect_errno(errno.EEXIST, os.link, c.path("b"), c.path("b"))
    return "same inode, nlink 2 → 1", {"host_files": {c.rel(c.path("b")): sha256(b"shared+more")}}


@check
def rename(c):
    write_file(c.path("a"), b"A")
    write_file(c.path("b"), b"B")
    os.mkdir(c.path("d"))
    os.rename(c.path("a"), c.path("a2"))
    expect(not os.path.exists(c.path("a")) and read_file(c.path("a2")) == b"A", "simple rename")
    os.rename(c.path("a2"), c.path("b"))  # replaces b
    expect(read_file(c.path("b")) == b"A" and not os.path.exists(c.path("a2")), "rename over a file")
    os.rename(c.path("b"), c.path("d", "moved"))
    expect(read_file(c.path("d", "moved")) == b"A", "rename into another directory")
    os.rename(c.path("d"), c.path("d2"))
    expect(read_file(c.path("d2", "moved")) == b"A", "directory rename")
    return "rename, replace, across directories, directory", {
        "host_files": {c.rel(c.path("d2", "moved")): sha256(b"A")}}


def renameat2(old, new, flags):
    libc_call("renameat2", AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))


@check
def renameat2_noreplace(c):
    write_file(c.path("a"), b"A")
    write_file(c.path("b"), b"B")
    expect_errno(errno.EEXIST, renameat2, c.path("a"), c.path("b"), RENAME_NOREPLACE)
    expect(read_file(c.path("b")) == b"B" and read_file(c.path("a")) == b"A", "files changed on EEXIST")
    renameat2(c.path("a"), c.path("c"), RENAME_NOREPLACE)
    expect(read_file(c.path("c")) == b"A" and not os.path.exists(c.path("a")), "NOREPLACE to a new name")
    return "EEXIST onto an existing name, success onto a new one"


@check
def renameat2_exchange(c):
    write_file(c.path("a"), b"content of a")
    write_file(c.path("b"), b"content of b")
    renameat2(c.path("a"), c.path("b"), RENAME_EXCHANGE)
    expect(read_file(c.path("a")) == b"content of b" and read_file(c.path("b")) == b"content of a",
           "contents not swapped")
    expect_errno(errno.ENOENT, renameat2, c.path("a"), c.path("missing"), RENAME_EXCHANGE)
    return "swapped", {"host_files": {c.rel(c.path("a")): sha256(b"content of b"),
                                      c.rel(c.path("b")): sha256(b"content of a")}}


@check
def unlink(c):
    write_file(c.path("f"), b"still readable")
    fd = os.open(c.path("f"), os.O_RDONLY)
    os.unlink(c.path("f"))
    expect(not os.path.exists(c.path("f")), "unlinked file still visible")
    expect_errno(errno.ENOENT, os.unlink, c.path("f"))
    expect(os.pread(fd, 100, 0) == b"still readable", "open file unreadable after unlink")
    os.close(fd)
    expect(os.listdir(c.dir) == [], f"directory not empty: {os.listdir(c.dir)}")
    return "unlink, ENOENT twice, open-unlinked file readable"


@check
def truncate(c):
    p = c.path("f")
    write_file(p, b"0123456789")
    os.truncate(p, 100_000)  # grow: zero filled
    data = read_file(p)
    expect(len(data) == 100_000 and data[:10] == b"0123456789" and data[10:] == bytes(99_990), "grow")
    os.truncate(p, 4)
    expect(read_file(p) == b"0123", "shrink")
    fd = os.open(p, os.O_RDWR)
    os.ftruncate(fd, 8192)
    expect(os.fstat(fd).st_size == 8192, "ftruncate grow: fstat size")
    os.ftruncate(fd, 2)
    expect(os.pread(fd, 100, 0) == b"01", "ftruncate shrink: read")
    os.close(fd)
    write_file(p, b"abc")  # O_TRUNC on open
    expect(read_file(p) == b"abc", "O_TRUNC")
    return "truncate/ftruncate grow and shrink, O_TRUNC", {"host_files": {c.rel(p): sha256(b"abc")}}


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime):
    """utimensat(2) with (sec, nsec) pairs or UTIME_NOW / UTIME_OMIT as the nsec of a pair."""
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    libc_call("utimensat", AT_FDCWD, os.fsencode(path), times, 0)


@check
def utimes(c):
    p = c.path("f")
    write_file(p, b"x")
    a, m = 1_000_000_000_123_456_789, 1_100_000_000_987_654_321
    os.utime(p, ns=(a, m))
    st = os.stat(p)
    expect((st.st_atime_ns, st.st_mtime_ns) == (a, m), f"ns times {st.st_atime_ns} {st.st_mtime_ns}")
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_NOW))
    st = os.stat(p)
    expect(st.st_atime_ns == a, "UTIME_OMIT changed atime")
    expect(abs(st.st_mtime - time.time()) < 3600, f"UTIME_NOW: mtime {st.st_mtime} vs now {time.time()}")
    utimensat(p, (0, UTIME_NOW), (1234, UTIME_OMIT))
    st2 = os.stat(p)
    expect(st2.st_mtime_ns == st.st_mtime_ns, "UTIME_OMIT changed mtime")
    expect(abs(st2.st_atime - time.time()) < 3600, "UTIME_NOW did not set atime")
    os.utime(p, (1_500_000_000, 1_500_000_001))
    expect(os.stat(p).st_mtime == 1_500_000_001, "utime with seconds")
    return "ns precision, UTIME_NOW, UTIME_OMIT", {"path": c.rel(p), "mtime": 1_500_000_001}


@check
def chmod(c):
    p = c.path("f")
    write_file(p, b"x", 0o600)
    for mode in (0o640, 0o755, 0o4755, 0o000, 0o600):
        os.chmod(p, mode)
        got = stat.S_IMODE(os.stat(p).st_mode)
        expect(got == mode, f"chmod {oct(mode)} gave {oct(got)}")
    os.mkdir(c.path("d"))
    os.chmod(c.path("d"), 0o1777)
    expect(stat.S_IMODE(os.stat(c.path("d")).st_mode) == 0o1777, "sticky directory mode")
    fd = os.open(p, os.O_RDONLY)
    os.fchmod(fd, 0o444)
    os.close(fd)
    expect(stat.S_IMODE(os.stat(p).st_mode) == 0o444, "fchmod")
    return "chmod incl. setuid/sticky, fchmod", {"path": c.rel(p), "mode": 0o444}


@check
def chown(c):
    p = c.path("f")
    write_file(p, b"x")
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    expect((st.st_uid, st.st_gid) == (1234, 5678), f"owner {st.st_uid}:{st.st_gid}")
    os.chown(p, -1, 42)
    st = os.stat(p)
    expect((st.st_uid, st.st_gid) == (1234, 42), "chown with uid -1")
    return "root chown", {"path": c.rel(p), "uid": 1234, "gid": 42}


@check
def nonroot_owner(c):
    os.chmod(c.dir, 0o777)
    p, d = c.path("by-user.txt"), c.path("user-dir")

    def create():
        write_file(p, b"written by uid 1000\n")
        os.mkdir(d)
        st = os.stat(p)
        return [st.st_uid, st.st_gid, st.st_ino, os.stat(d).st_uid]

    uid, gid, ino, dir_uid = as_user(create, USER)
    expect((uid, gid) == (USER, USER), f"file created by uid {USER} is owned by {uid}:{gid}")
    expect(dir_uid == USER, f"directory created by uid {USER} is owned by {dir_uid}")
    st = os.stat(p)
    expect((st.st_uid, st.st_ino) == (USER, ino), "root sees a different owner or inode")
    return f"owner {uid}:{gid}", {"path": c.rel(p), "dir": c.rel(d), "uid": USER, "gid": USER,
                                  "ino": ino, "host_files": {c.rel(p): sha256(b"written by uid 1000\n")}}


@check
def nonroot_permissions(c):
    os.chmod(c.dir, 0o755)
    secret, public = c.path("secret"), c.path("public")
    write_file(secret, b"root only", 0o600)
    write_file(public, b"everyone reads", 0o644)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)

    def probe():
        out = {"read_public": read_file(public).decode()}
        for name, op in (("read_secret", lambda: open(secret, "rb").close()),
                         ("write_public", lambda: open(public, "ab").close()),
                         ("create_in_dir", lambda: open(c.path("new"), "wb").close()),
                         ("chmod_public", lambda: os.chmod(public, 0o666))):
            try:
                op()
                out[name] = "allowed"
            except OSError as e:
                out[name] = errno.errorcode[e.errno]
        return out

    got = as_user(probe, USER)
    want = {"read_public": "everyone reads", "read_secret": "EACCES", "write_public": "EACCES",
            "create_in_dir": "EACCES", "chmod_public": "EPERM"}
    expect(got == want, f"uid {USER} saw {got}, expected {want}")
    return "EACCES/EPERM for uid 1000 where due"


@check
def mknod_fifo(c):
    p = c.path("fifo")
    os.mkfifo(p, 0o644)
    expect(stat.S_ISFIFO(os.stat(p).st_mode), "not a FIFO")
    r = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
    os.write(w, b"through the pipe")
    expect(os.read(r, 100) == b"through the pipe", "FIFO data")
    os.close(w)
    os.close(r)
    os.mknod(c.path("regular"), 0o644 | stat.S_IFREG)
    expect(stat.S_ISREG(os.stat(c.path("regular")).st_mode), "mknod S_IFREG")
    return "mkfifo + pipe I/O, mknod S_IFREG", {"path": c.rel(p)}


@check
def xattr(c):
    p = c.path("f")
    write_file(p, b"x")
    try:
        os.setxattr(p, "user.pvfs", b"value-1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise Unsupported(e.errno, "setxattr: not supported (back-end without xattr support?)")
        raise
    expect(os.getxattr(p, "user.pvfs") == b"value-1", "getxattr")
    os.setxattr(p, "user.pvfs", b"value-2", os.XATTR_REPLACE)
    os.setxattr(p, "user.other", b"")
    expect_errno(errno.EEXIST, os.setxattr, p, "user.other", b"y", os.XATTR_CREATE)
    expect(set(os.listxattr(p)) >= {"user.pvfs", "user.other"}, f"listxattr {os.listxattr(p)}")
    expect(os.getxattr(p, "user.pvfs") == b"value-2", "XATTR_REPLACE")
    os.removexattr(p, "user.other")
    expect_errno(errno.ENODATA, os.getxattr, p, "user.other")
    os.mkdir(c.path("d"))
    os.setxattr(c.path("d"), "user.dir", b"on a directory")
    expect(os.getxattr(c.path("d"), "user.dir") == b"on a directory", "xattr on a directory")
    return "set/get/list/remove/CREATE/REPLACE", {"path": c.rel(p), "xattr": {"user.pvfs": "value-2"}}


class Unsupported(OSError):
    """The operation is not supported by this file system: a failure, labelled as such."""


@check
def large_file(c):
    p = c.path("big-sparse")
    off = 5 << 30
    data = pattern(65536, seed=5)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    expect(os.pwrite(fd, data, off) == len(data), "short pwrite at 5 GiB")
    expect(os.pread(fd, len(data) + 10, off) == data, "read back at 5 GiB differs")
    expect(os.pread(fd, 4096, off - 4096) == bytes(4096), "hole before the data is not zero")
    st = os.fstat(fd)
    os.close(fd)
    expect(st.st_size == off + len(data), f"size {st.st_size}")
    expect(st.st_blocks * 512 < 64 << 20, f"5 GiB sparse file uses {st.st_blocks * 512} bytes")
    return f"size {st.st_size}", {"path": c.rel(p), "size": off + len(data)}


@check
def sparse_seek(c):
    p = c.path("sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"D" * 4096, 0)
    os.pwrite(fd, b"E" * 4096, 1 << 20)
    os.fsync(fd)
    size = (1 << 20) + 4096
    hole = os.lseek(fd, 0, os.SEEK_HOLE)
    data = os.lseek(fd, 8192, os.SEEK_DATA)
    end_hole = os.lseek(fd, 1 << 20, os.SEEK_HOLE)
    try:
        os.lseek(fd, size, os.SEEK_DATA)
        past_end = "no error"
    except OSError as e:
        past_end = errno.errorcode[e.errno]
    os.close(fd)
    got = {"hole_from_0": hole, "data_from_8k": data, "hole_from_1M": end_hole, "data_past_eof": past_end}
    want = {"hole_from_0": 4096, "data_from_8k": 1 << 20, "hole_from_1M": size, "data_past_eof": "ENXIO"}
    expect(got == want, f"SEEK_DATA/SEEK_HOLE gave {got}, expected {want}")
    return "SEEK_HOLE/SEEK_DATA found the hole and the data", got


def fallocate(fd, mode, offset, length):
    libc_call("fallocate", fd, mode, ctypes.c_long(offset), ctypes.c_long(length))


@check
def fallocate_modes(c):
    p = c.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, 1 << 20)
    st = os.fstat(fd)
    expect(st.st_size == 1 << 20, f"posix_fallocate size {st.st_size}")
    expect(st.st_blocks * 512 >= 1 << 20, f"posix_fallocate allocated {st.st_blocks * 512}")
    expect(os.pread(fd, 4096, 12345) == bytes(4096), "allocated range is not zero")
    fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20)
    st = os.fstat(fd)
    expect(st.st_size == 1 << 20 and st.st_blocks * 512 >= 2 << 20, "FALLOC_FL_KEEP_SIZE")
    os.pwrite(fd, b"\xff" * 65536, 0)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 65536)
    expect(os.pread(fd, 65536, 0) == bytes(65536), "punched hole does not read as zeros")
    expect(os.fstat(fd).st_size == 1 << 20, "punch hole changed the size")
    os.close(fd)
    return "posix_fallocate, KEEP_SIZE, PUNCH_HOLE", {"path": c.rel(p), "size": 1 << 20}


@check
def o_direct(c):
    p = c.path("direct")
    size = 256 * 1024
    wbuf = mmap.mmap(-1, size)  # page aligned, as O_DIRECT wants
    wbuf.write(pattern(size, seed=7))
    rbuf = mmap.mmap(-1, size)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    expect(os.pwritev(fd, [wbuf], 0) == size, "short O_DIRECT write")
    expect(os.pwritev(fd, [memoryview(wbuf)[:4096]], size) == 4096, "short O_DIRECT write at end")
    expect(os.preadv(fd, [rbuf], 0) == size, "short O_DIRECT read")
    expect(rbuf[:] == wbuf[:], "O_DIRECT read differs from what was written")
    os.close(fd)
    expected = wbuf[:] + wbuf[:4096]
    expect(read_file(p) == expected, "buffered read after O_DIRECT write differs")
    return "256 KiB aligned write/read with O_DIRECT", {"host_files": {c.rel(p): sha256(expected)}}


@check
def mmap_shared(c):
    p = c.path("mapped")
    initial = pattern(3 * PAGE, seed=9)
    write_file(p, initial)
    fd = os.open(p, os.O_RDWR)
    m = mmap.mmap(fd, len(initial), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    expect(m[:] == initial, "mmap read differs from the file")
    m[PAGE + 100:PAGE + 110] = b"MMAP-WRITE"
    m.flush()  # msync(MS_SYNC)
    expect(os.pread(fd, 10, PAGE + 100) == b"MMAP-WRITE", "read() does not see the mmap write")
    os.pwrite(fd, b"WRITE-SEEN", 2 * PAGE)
    expect(m[2 * PAGE:2 * PAGE + 10] == b"WRITE-SEEN", "the mapping does not see a write()")
    m.close()
    os.close(fd)
    expected = bytearray(initial)
    expected[PAGE + 100:PAGE + 110] = b"MMAP-WRITE"
    expected[2 * PAGE:2 * PAGE + 10] = b"WRITE-SEEN"
    expect(read_file(p) == bytes(expected), "re-read after unmap differs")
    return "MAP_SHARED write + msync seen by read(), write() seen by the map", {
        "host_files": {c.rel(p): sha256(bytes(expected))}}


@check
def fsync(c):
    p = c.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.write(fd, b"+data")
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(c.dir, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)  # FUSE_FSYNCDIR
    os.close(dfd)
    os.sync()  # FUSE_SYNCFS on newer guests
    expect(read_file(p) == b"durable+data", "content after fsync")
    return "fsync, fdatasync, directory fsync, sync", {"host_files": {c.rel(p): sha256(b"durable+data")}}


@check
def statvfs(c):
    s = os.statvfs(c.mount)
    got = {k: getattr(s, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                      "f_files", "f_ffree", "f_namemax")}
    expect(s.f_bsize > 0 and s.f_frsize > 0, "zero block size")
    expect(s.f_blocks > 0 and 0 <= s.f_bavail <= s.f_bfree <= s.f_blocks, "inconsistent block counts")
    expect(s.f_namemax >= 255, f"f_namemax {s.f_namemax}")
    return f"bsize {s.f_bsize}", got


@check
def access(c):
    p = c.path("f")
    write_file(p, b"x", 0o640)
    os.chmod(p, 0o640)
    expect(os.access(p, os.R_OK | os.W_OK), "root cannot R/W a 0640 file")
    expect(not os.access(p, os.X_OK), "root may execute a file without any x bit")
    expect(not os.access(c.path("missing"), os.F_OK), "F_OK on a missing file")
    os.chmod(c.dir, 0o755)
    got = as_user(lambda: [os.access(p, m) for m in (os.F_OK, os.R_OK, os.W_OK)], USER)
    expect(got == [True, False, False], f"uid {USER} access F/R/W = {got}")
    return "os.access as root and as uid 1000"


@check
def o_tmpfile(c):
    try:
        fd = os.open(c.dir, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.ENOSYS):
            raise Unsupported(e.errno, f"O_TMPFILE not supported here ({errno.errorcode[e.errno]})")
        raise
    os.write(fd, b"anonymous until linked")
    expect(os.listdir(c.dir) == [], "O_TMPFILE file is visible before linkat")
    target = c.path("linked")
    # os.link() would call link(2), which links the /proc magic link itself (EXDEV): use linkat.
    libc_call("linkat", AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(target),
              AT_SYMLINK_FOLLOW)
    os.close(fd)
    expect(read_file(target) == b"anonymous until linked", "linked O_TMPFILE content")
    return "O_TMPFILE + linkat", {"host_files": {c.rel(target): sha256(b"anonymous until linked")}}


@check
def copy_file_range(c):
    src, dst = c.path("src"), c.path("dst")
    data = pattern(1 << 20, seed=11)
    write_file(src, data)
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    copied = 0
    while copied < len(data):
        n = os.copy_file_range(fi, fo, len(data) - copied)
        expect(n > 0, f"copy_file_range returned {n} after {copied} bytes")
        copied += n
    partial = os.copy_file_range(fi, fo, 100, 4096, 2 << 20)  # explicit offsets, past the end
    os.close(fi)
    os.close(fo)
    expected = data + bytes((2 << 20) - len(data)) + data[4096:4196]
    expect(partial == 100, f"offset copy returned {partial}")
    expect(read_file(dst) == expected, "copied content differs")
    return "1 MiB copied, plus an offset copy", {"host_files": {c.rel(dst): sha256(expected)}}


@check
def blksize(c):
    write_file(c.path("f"), b"x")
    got = {"file": os.stat(c.path("f")).st_blksize, "dir": os.stat(c.dir).st_blksize,
           "root": os.stat(c.mount).st_blksize, "page_size": PAGE}
    expect(got["file"] == got["dir"] == got["root"] == PAGE, f"st_blksize {got} != page size {PAGE}")
    return f"st_blksize {got['file']}", got


@check
def enoent(c):
    missing = c.path("does-not-exist")
    expect_errno(errno.ENOENT, os.open, missing, os.O_RDONLY)
    expect_errno(errno.ENOENT, os.stat, missing)
    expect_errno(errno.ENOENT, os.open, c.path("no-dir", "f"), os.O_WRONLY | os.O_CREAT)
    expect_errno(errno.ENOENT, os.rename, missing, c.path("x"))
    write_file(c.path("file"), b"")
    expect_errno(errno.ENOTDIR, os.open, c.path("file", "below"), os.O_RDONLY)
    return "ENOENT for open/stat/create-in-missing-dir/rename, ENOTDIR through a file"


@check
def error_mapping(c):
    os.makedirs(c.path("full", "child"))
    expect_errno(errno.ENOTEMPTY, os.rmdir, c.path("full"))
    expect_errno(errno.EEXIST, os.mkdir, c.path("full"))
    write_file(c.path("file"), b"")
    expect_errno(errno.EEXIST, os.open, c.path("file"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.ENOTDIR, os.rmdir, c.path("file"))
    expect_errno(errno.EISDIR, os.unlink, c.path("full"))
    expect_errno(errno.EISDIR, os.open, c.path("full"), os.O_WRONLY)
    expect_errno(errno.ENAMETOOLONG, os.open, c.path("n" * 300), os.O_CREAT | os.O_WRONLY)
    return "ENOTEMPTY, EEXIST (mkdir, O_EXCL), ENOTDIR, EISDIR, ENAMETOOLONG"


# --------------------------------------------------------------------------------------------------


def run_check(fn, mount):
    t0 = time.monotonic()
    result = {"name": fn.__name__, "ok": False, "info": {}}
    try:
        out = fn(Ctx(mount, fn.__name__))
        detail, info = out if isinstance(out, tuple) else (out, {})
        result.update(ok=True, detail=detail, info=info)
    except Unsupported as e:
        result.update(detail=str(e.strerror), info={"errno": errno.errorcode.get(e.errno, e.errno)})
    except Exception as e:  # noqa: BLE001 - a failing check reports, the next one runs
        where = traceback.extract_tb(e.__traceback__)[-1]
        detail = f"{type(e).__name__}: {e} (line {where.lineno})"
        info = {"errno": errno.errorcode.get(e.errno, e.errno)} if isinstance(e, OSError) else {}
        result.update(detail=detail, info=info)
    result["seconds"] = round(time.monotonic() - t0, 3)
    emit("PVFS-CHECK", result)
    return result["ok"]


def report_blksize(top):
    """One PVFS-BLKSIZE line per file and directory under ``top`` (the huge-tmpfs check)."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [None, *filenames]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(path)
            emit("PVFS-BLKSIZE", {"path": os.path.relpath(path, top), "blksize": st.st_blksize,
                                  "kind": "dir" if stat.S_ISDIR(st.st_mode) else "file"})


def main(argv):
    if argv[:1] == ["--list"]:
        print("\n".join(fn.__name__ for fn in CHECKS))
        return 0
    if argv[:1] == ["--blksize"] and len(argv) == 2:
        report_blksize(argv[1])
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    mount, only = argv[0], None
    if argv[1:2] == ["--only"]:
        only = set(argv[2].split(","))
    checks = [fn for fn in CHECKS if only is None or fn.__name__ in only]
    os.makedirs(os.path.join(mount, "pvfs-checks"), exist_ok=True)
    results = [run_check(fn, mount) for fn in checks]
    print(f"PVFS-CHECKS-DONE {sum(results)} passed, {len(results) - sum(results)} failed", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
