#!/usr/bin/env python3
"""A broad file-system workload that runs INSIDE a test guest, with real tools.

Debian packages no POSIX file-system conformance suite (no pjdfstest, no xfstests), so this
is the next best thing: every class of FUSE operation, reached the way programs reach it --
coreutils, tar, find, dd, flock, fallocate, setfattr/getfattr (attr), setfacl/getfacl (acl),
python's mmap, fcntl and os -- on a virtio-fs mount.  It exists to find system calls the
daemon makes on paths the test suite does not reach (``scripts/gen-seccomp.py --workload``
runs it with the daemon traced) and, run against a daemon with the default
``--seccomp kill``, to prove that none of those paths kills it
(tests/e2e/test_seccomp_workload.py).

    python3 seccomp_workload.py MOUNTPOINT TARBALL FILES

TARBALL is a source-like tree the host made (FILES regular files in it).  One line per step
(``PVFS-WORKLOAD {"name", "ok", "detail", "info", "seconds"}``), then
``PVFS-WORKLOAD-DONE <passed> <total>``; the exit status is 0 only if every step passed.  The
daemon must serve extended attributes and POSIX ACLs (``--posix-acl``).  Runs as the guest's
root; steps as uid 1000 fork (guest_harness.as_user).  Standard library only (the guest runs
the host's python3 through 9p).
"""

import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import socket
import stat
import subprocess
import sys
import time

from guest_harness import Checks, Failed, as_user, expect

MARKER = "PVFS-WORKLOAD"
USER = 1000
MiB = 1 << 20

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

STEPS = Checks()
step = STEPS.add


class Ctx:
    def __init__(self, mount, tarball, files):
        self.mount, self.tarball, self.files = mount, tarball, files
        self.top = os.path.join(mount, "workload")

    def dir(self, name):
        """A fresh directory for one step (left for the host to look at)."""
        path = os.path.join(self.top, name)
        os.makedirs(path)
        return path


def run(*cmd, user=None, input=None):
    """Run a real tool; its stdout.  A non-zero exit is a failed step, with its stderr."""
    def go():
        r = subprocess.run(list(cmd), input=input, capture_output=True, text=True)
        if r.returncode != 0:
            return {"rc": r.returncode, "err": r.stderr.strip()[-400:]}
        return {"out": r.stdout}
    out = go() if user is None else as_user(go, user)
    if "rc" in out:
        raise Failed(f"{' '.join(cmd)}: exit {out['rc']}: {out['err']}")
    return out["out"]


def fails(*cmd):
    """A tool run that must fail (e.g. reading a missing xattr); its stderr."""
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    expect(r.returncode != 0, f"{' '.join(cmd)} succeeded")
    return r.stderr


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def pattern(n, seed):
    block = hashlib.sha256(str(seed).encode()).digest() * 128   # 4 KiB
    return (block * (n // len(block) + 1))[:n]


def libc_call(name, *args):
    if getattr(libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


@step
def coreutils(c):
    """mkdir -p, cp -a, mv, ln, ln -s, chmod, chown, touch -d, truncate, rm, rmdir."""
    d = c.dir("coreutils")
    run("mkdir", "-p", f"{d}/src/a/b/c")
    for i, sub in enumerate(["", "a", "a/b", "a/b/c"]):
        with open(f"{d}/src/{sub}/file{i}.txt", "w") as f:
            f.write(f"file {i}\n" * (i * 100 + 1))
    run("chmod", "0750", f"{d}/src/a/b")
    run("ln", "-s", "a/b/c/file3.txt", f"{d}/src/link")
    run("ln", f"{d}/src/file0.txt", f"{d}/src/hard0")
    run("touch", "-d", "2001-02-03 04:05:06", f"{d}/src/a/file1.txt")
    run("touch", "-h", "-d", "2002-03-04 05:06:07", f"{d}/src/link")
    run("cp", "-a", f"{d}/src", f"{d}/copy")
    run("diff", "-r", f"{d}/src", f"{d}/copy")
    st = os.lstat(f"{d}/copy/a/file1.txt")
    expect(int(st.st_mtime) == int(os.lstat(f"{d}/src/a/file1.txt").st_mtime), "cp -a mtime")
    expect(stat.S_IMODE(os.lstat(f"{d}/copy/a/b").st_mode) == 0o750, "cp -a mode")
    expect(os.readlink(f"{d}/copy/link") == "a/b/c/file3.txt", "cp -a symlink")
    expect(os.lstat(f"{d}/copy/file0.txt").st_ino == os.lstat(f"{d}/copy/hard0").st_ino,
           "cp -a kept the hard link")
    expect(run("stat", "-c", "%h", f"{d}/src/file0.txt").strip() == "2", "link count")
    run("mv", f"{d}/copy/a/file1.txt", f"{d}/copy/moved.txt")
    run("mv", f"{d}/copy/a/b", f"{d}/src/b-moved")
    run("chown", "-R", f"{USER}:{USER}", f"{d}/copy")
    run("chown", "-h", "0:0", f"{d}/copy/link")
    st = os.lstat(f"{d}/copy/moved.txt")
    expect((st.st_uid, st.st_gid) == (USER, USER), f"chown: {st.st_uid}:{st.st_gid}")
    run("chmod", "-R", "g+w,o-rwx", f"{d}/copy")
    run("truncate", "-s", "1M", f"{d}/copy/moved.txt")
    expect(os.stat(f"{d}/copy/moved.txt").st_size == MiB, "truncate grows")
    run("truncate", "-s", "10", f"{d}/copy/moved.txt")
    with open(f"{d}/copy/moved.txt") as f:
        expect(f.read() == "file 1\nfil", "truncate shrinks")
    run("rm", f"{d}/copy/hard0", f"{d}/copy/link")
    run("rmdir", f"{d}/copy/a")
    run("rm", "-r", f"{d}/copy")
    return "cp -a, mv, ln, chmod, chown, touch, truncate, rm"


@step
def dd_direct_and_large_io(c):
    """dd with O_DIRECT both ways, 16 MiB in 1 MiB writes, reads at every size."""
    d = c.dir("dd")
    data = pattern(16 * MiB, 1)
    with open(f"{d}/src", "wb") as f:
        for off in range(0, len(data), MiB):
            f.write(data[off:off + MiB])
    run("dd", f"if={d}/src", f"of={d}/direct", "bs=1M", "iflag=direct", "oflag=direct",
        "status=none")
    run("dd", f"if={d}/src", f"of={d}/direct", "bs=4k", "count=16", "skip=100", "seek=3",
        "oflag=direct", "conv=notrunc", "status=none")
    expected = bytearray(data)
    expected[3 * 4096:19 * 4096] = data[100 * 4096:116 * 4096]
    expect(sha(f"{d}/direct") == hashlib.sha256(expected).hexdigest(), "O_DIRECT copy")
    run("sync")
    run("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
    with open(f"{d}/src", "rb", buffering=0) as f:
        for size in (1, 4095, 4096, 65536, 1 << 20, 4 << 20):
            got = os.pread(f.fileno(), size, 5 * MiB + 17)
            expect(got == data[5 * MiB + 17:5 * MiB + 17 + size], f"pread of {size}")
    # A 64-bit offset: a sparse write past 5 GiB, read back.
    with open(f"{d}/far", "wb+") as f:
        os.pwrite(f.fileno(), b"far away", 5 << 30)
        expect(os.pread(f.fileno(), 8, 5 << 30) == b"far away", "read past 5 GiB")
    expect(os.stat(f"{d}/far").st_size == (5 << 30) + 8, "size past 5 GiB")
    os.unlink(f"{d}/far")
    return "16 MiB, O_DIRECT dd, 5 GiB offset"


@step
def special_files(c):
    """mkfifo, mknod (character, block, fifo), a unix socket bound in the share."""
    d = c.dir("special")
    run("mkfifo", "-m", "0600", f"{d}/fifo")
    run("mknod", f"{d}/null", "c", "1", "3")
    run("mknod", f"{d}/loop", "b", "7", "200")
    run("mknod", f"{d}/pipe", "p")
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"{d}/sock")
    s.close()
    kinds = {name: run("stat", "-c", "%F", f"{d}/{name}").strip()
             for name in ("fifo", "null", "loop", "pipe", "sock")}
    expect(kinds == {"fifo": "fifo", "null": "character special file",
                     "loop": "block special file", "pipe": "fifo", "sock": "socket"}, kinds)
    st = os.lstat(f"{d}/null")
    expect((os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3), "device numbers")
    # The guest opens its own fifo through the mount: a writer and a reader meet.
    pid = os.fork()
    if pid == 0:
        with open(f"{d}/fifo", "w") as f:
            f.write("through the fifo\n")
        os._exit(0)
    with open(f"{d}/fifo") as f:
        got = f.read()
    os.waitpid(pid, 0)
    expect(got == "through the fifo\n", got)
    run("rm", f"{d}/fifo", f"{d}/null", f"{d}/loop", f"{d}/pipe", f"{d}/sock")
    return kinds


@step
def tar_find_rm(c):
    """tar x of a source-like tree, find -exec stat (warm, then after dropping caches: new
    lookups), du, rm -rf."""
    d = c.dir("tree")
    times = {}
    t0 = time.monotonic()
    run("tar", "xf", c.tarball, "-C", d)
    times["tar"] = time.monotonic() - t0
    files = run("find", d, "-type", "f").split()
    expect(len(files) == c.files, f"{len(files)} files extracted, {c.files} expected")
    t0 = time.monotonic()
    stats = run("find", d, "-exec", "stat", "-c", "%n %s %h %i %a", "{}", "+").splitlines()
    run("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
    cold = run("find", d, "-exec", "stat", "-c", "%n %s %h %i %a", "{}", "+").splitlines()
    times["stat"] = time.monotonic() - t0
    expect(sorted(stats) == sorted(cold), "stat after dropping caches differs")
    du = int(run("du", "-sk", d).split()[0])
    expect(du > 0, "du")
    t0 = time.monotonic()
    run("rm", "-rf", d)
    times["rm"] = time.monotonic() - t0
    expect(not os.path.exists(d), "rm -rf left the tree")
    return f"{c.files} files, {len(stats)} entries", {
        "du_kib": du, "seconds": {k: round(v, 1) for k, v in times.items()}}


@step
def locks(c):
    """flock(1), flock(2), POSIX and open-file-description locks."""
    d = c.dir("locks")
    path = f"{d}/lock"
    run("flock", "-x", path, "-c", "true")
    run("flock", "-s", "-w", "5", path, "-c", "true")
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        expect(subprocess.run(["flock", "-n", "-x", path, "-c", "true"]).returncode != 0,
               "a second exclusive flock got in")
        fcntl.flock(f, fcntl.LOCK_UN)
        fcntl.lockf(f, fcntl.LOCK_EX, 100, 0)
        fcntl.lockf(f, fcntl.LOCK_UN, 100, 0)
        lk = bytearray(32)   # struct flock: l_type F_WRLCK, whence SEEK_SET, 0..0 (all)
        lk[0:2] = (1).to_bytes(2, "little")
        fcntl.fcntl(f, fcntl.F_OFD_SETLK, bytes(lk))
    return "flock, lockf, OFD locks"


@step
def fallocate_modes(c):
    """fallocate(1): allocate, keep size, punch a hole, zero a range."""
    d = c.dir("fallocate")
    path = f"{d}/f"
    run("fallocate", "-l", "8M", path)
    expect(os.stat(path).st_size == 8 * MiB, "allocated size")
    run("fallocate", "-n", "-o", "8M", "-l", "1M", path)
    expect(os.stat(path).st_size == 8 * MiB, "keep-size grew the file")
    with open(path, "r+b") as f:
        f.write(pattern(8 * MiB, 2))
    run("fallocate", "-p", "-o", "1M", "-l", "1M", path)
    run("fallocate", "-z", "-o", "3M", "-l", "64K", path)
    with open(path, "rb") as f:
        data = f.read()
    expect(data[MiB:2 * MiB] == bytes(MiB), "punched range reads zeros")
    expect(data[3 * MiB:3 * MiB + 65536] == bytes(65536), "zeroed range reads zeros")
    expect(data[:MiB] == pattern(8 * MiB, 2)[:MiB], "data before the hole")
    return "allocate, keep size, punch, zero"


@step
def copies(c):
    """cp --reflink=auto (FICLONE refused, then copy_file_range), cp --sparse=always,
    os.copy_file_range, cat."""
    d = c.dir("copies")
    data = pattern(4 * MiB, 3)
    with open(f"{d}/src", "wb") as f:
        f.write(data)
    run("cp", "--reflink=auto", f"{d}/src", f"{d}/reflink")
    run("cp", "--sparse=always", f"{d}/src", f"{d}/sparse")
    run("sh", "-c", f"cat {d}/src > {d}/cat")
    with open(f"{d}/src", "rb") as fi, open(f"{d}/cfr", "wb") as fo:
        left = len(data)
        while left:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), left)
            expect(n > 0, "copy_file_range stopped early")
            left -= n
    want = hashlib.sha256(data).hexdigest()
    got = {n: sha(f"{d}/{n}") for n in ("reflink", "sparse", "cat", "cfr")}
    expect(all(v == want for v in got.values()), f"copies differ: {got}")
    return "4 ways"


@step
def sparse_seek(c):
    """SEEK_DATA/SEEK_HOLE on a sparse file, through python and cp --sparse."""
    d = c.dir("sparse")
    path = f"{d}/holes"
    run("truncate", "-s", "16M", path)
    run("dd", "if=/dev/zero", f"of={path}", "bs=256K", "count=1", "seek=16", "conv=notrunc",
        "status=none")
    with open(path, "r+b") as f:
        f.seek(10 * MiB)
        f.write(b"x" * MiB)
        f.flush()
        os.fsync(f.fileno())
        fd = f.fileno()
        data = os.lseek(fd, 0, os.SEEK_DATA)
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        expect(data <= 4 * MiB < hole, f"first data at {data}, hole at {hole}")
        later = os.lseek(fd, hole, os.SEEK_DATA)
        expect(later <= 10 * MiB, f"second data at {later}")
        expect(os.lseek(fd, 11 * MiB, os.SEEK_HOLE) <= 16 * MiB, "hole before the end")
        try:
            os.lseek(fd, 16 * MiB, os.SEEK_DATA)
            raise Failed("SEEK_DATA at the end found data")
        except OSError as e:
            expect(e.errno == errno.ENXIO, f"SEEK_DATA at the end: {e}")
    run("cp", "--sparse=always", path, f"{d}/copy")
    expect(sha(path) == sha(f"{d}/copy"), "sparse copy")
    return {"data": data, "hole": hole, "later": later}


@step
def xattrs(c):
    """setfattr/getfattr: set, get, dump, large value, replace, remove, missing; on a file
    and a directory; cp -a carries them."""
    d = c.dir("xattr")
    path = f"{d}/f"
    open(path, "w").close()
    run("setfattr", "-n", "user.greeting", "-v", "hello", path)
    run("setfattr", "-n", "user.big", "-v", "0x" + "ab" * 1500, path)
    run("setfattr", "-n", "user.dir", "-v", "on a directory", d)
    expect(run("getfattr", "--only-values", "-n", "user.greeting", path) == "hello",
           "getfattr value")
    dump = run("getfattr", "-d", "-m", "-", path)
    expect("user.greeting" in dump and "user.big" in dump, dump)
    expect(len(os.getxattr(path, "user.big")) == 1500, "large value")
    run("setfattr", "-n", "user.greeting", "-v", "replaced", path)
    expect(os.getxattr(path, "user.greeting") == b"replaced", "replace")
    run("cp", "-a", path, f"{d}/copy")
    expect(os.getxattr(f"{d}/copy", "user.big") == os.getxattr(path, "user.big"),
           "cp -a dropped an xattr")
    run("setfattr", "-x", "user.greeting", path)
    err = fails("getfattr", "-n", "user.greeting", path)
    expect("No such attribute" in err, err)
    expect(os.listxattr(d) and "user.dir" in os.listxattr(d), "directory xattr")
    return sorted(os.listxattr(path))


@step
def acls(c):
    """setfacl/getfacl: access and default ACLs, inheritance, the mask, an ACL granting a
    user what the mode refuses, setfacl -b."""
    d = c.dir("acl")
    os.chmod(d, 0o755)
    path = f"{d}/private"
    with open(path, "w") as f:
        f.write("root's\n")
    os.chmod(path, 0o600)
    try:
        as_user(lambda: open(path).read(), USER)
        raise Failed("uid 1000 read a 0600 root file without an ACL")
    except PermissionError:
        pass
    run("setfacl", "-m", f"u:{USER}:r--", path)
    expect(f"user:{USER}:r--" in run("getfacl", "-cn", path), "getfacl shows the entry")
    expect(as_user(lambda: open(path).read(), USER) == "root's\n", "ACL grants reading")
    expect(os.stat(path).st_mode & 0o040, "the mask shows in the group bits")
    run("setfacl", "-d", "-m", f"u:{USER}:rwx", d)
    with open(f"{d}/inherits", "w") as f:
        f.write("x")
    expect(f"user:{USER}:rw" in run("getfacl", "-cn", f"{d}/inherits"), "default ACL inherited")
    os.mkdir(f"{d}/subdir")
    expect(f"default:user:{USER}:rwx" in run("getfacl", "-cn", f"{d}/subdir"),
           "default ACL inherited by a directory")
    as_user(lambda: open(f"{d}/inherits", "a").write("y"), USER)
    run("chmod", "g-r", path)            # changes the mask: the grant is gone
    try:
        as_user(lambda: open(path).read(), USER)
        raise Failed("the mask did not limit the ACL")
    except PermissionError:
        pass
    run("setfacl", "-b", path)
    expect(f"user:{USER}" not in run("getfacl", "-cn", path), "setfacl -b")
    run("setfacl", "-k", d)
    return "access, default, mask, -b, -k"


@step
def mmap_io(c):
    """Shared mmap writes seen by read(), msync; read mapping of written data; private
    mapping stays private."""
    d = c.dir("mmap")
    path = f"{d}/m"
    with open(path, "wb") as f:
        f.write(pattern(4 * MiB, 4))
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 4 * MiB, mmap.MAP_SHARED)
        expect(m[MiB:MiB + 64] == pattern(4 * MiB, 4)[MiB:MiB + 64], "mapped read")
        m[100:112] = b"mapped write"
        m.flush()
        m.close()
        expect(os.pread(f.fileno(), 12, 100) == b"mapped write", "read sees the store")
        p = mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE)
        p[0:4] = b"mine"
        p.close()
        expect(os.pread(f.fileno(), 4, 0) != b"mine", "a private store leaked")
    run("sync", path)
    run("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        expect(m[100:112] == b"mapped write", "the store after dropping caches")
        m.close()
    return "shared, private, after drop_caches"


@step
def syncs_and_statfs(c):
    """sync FILE (fsync), sync -d (fdatasync), sync -f (syncfs), sync, fsync of a directory;
    df and stat -f (statfs)."""
    d = c.dir("sync")
    path = f"{d}/s"
    with open(path, "w") as f:
        f.write("sync me\n")
    run("sync", path)
    run("sync", "-d", path)
    run("sync", "-f", path)
    run("sync")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    df = run("df", "-P", c.mount).splitlines()[-1].split()
    expect(int(df[1]) > 0, f"df: {df}")
    expect(run("stat", "-f", "-c", "%T", c.mount).strip() in ("fuseblk", "fuse", "virtiofs"),
           "stat -f type")
    vfs = os.statvfs(c.mount)
    expect(vfs.f_bsize > 0 and vfs.f_blocks > 0, "statvfs")
    return {"df_kib": int(df[1]), "bsize": vfs.f_bsize}


@step
def renames(c):
    """rename(2) of files and directories, RENAME_NOREPLACE, RENAME_EXCHANGE, mv -T."""
    d = c.dir("rename")
    for name, text in (("a", "A"), ("b", "B")):
        with open(f"{d}/{name}", "w") as f:
            f.write(text)
    libc_call("renameat2", AT_FDCWD, f"{d}/a".encode(), AT_FDCWD, f"{d}/b".encode(),
              RENAME_EXCHANGE)
    expect(open(f"{d}/a").read() == "B" and open(f"{d}/b").read() == "A", "exchange")
    try:
        libc_call("renameat2", AT_FDCWD, f"{d}/a".encode(), AT_FDCWD, f"{d}/b".encode(),
                  RENAME_NOREPLACE)
        raise Failed("RENAME_NOREPLACE replaced")
    except OSError as e:
        expect(e.errno == errno.EEXIST, f"RENAME_NOREPLACE: {e}")
    os.makedirs(f"{d}/x/inner")
    os.makedirs(f"{d}/y")
    libc_call("renameat2", AT_FDCWD, f"{d}/x".encode(), AT_FDCWD, f"{d}/y".encode(),
              RENAME_EXCHANGE)
    expect(os.path.isdir(f"{d}/y/inner") and not os.listdir(f"{d}/x"), "directory exchange")
    run("mv", "-T", f"{d}/y", f"{d}/x")
    expect(os.path.isdir(f"{d}/x/inner"), "mv -T over an empty directory")
    os.rename(f"{d}/a", f"{d}/x/inner/a")
    return "exchange, noreplace, mv -T"


@step
def tmpfile(c):
    """O_TMPFILE, then a name through linkat (FUSE_TMPFILE is Linux 6.6+; older guests
    refuse it themselves with EOPNOTSUPP)."""
    d = c.dir("tmpfile")
    try:
        fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
    except OSError as e:
        expect(e.errno == errno.EOPNOTSUPP and not kernel_at_least(6, 6), f"O_TMPFILE: {e}")
        return "refused by this guest kernel", {"errno": "EOPNOTSUPP"}
    os.write(fd, b"nameless")
    expect(os.listdir(d) == [], "an O_TMPFILE file has a name")
    libc_call("linkat", AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD,
              f"{d}/named".encode(), AT_SYMLINK_FOLLOW)
    os.close(fd)
    expect(open(f"{d}/named", "rb").read() == b"nameless", "linked content")
    return "O_TMPFILE + linkat"


@step
def users_and_modes(c):
    """Files made by uid 1000 are owned by it; permission refusals; set-ID bits cleared by
    a write and by chown; utimes with touch -a/-m; statx birth time (stat %W)."""
    d = c.dir("users")
    os.chmod(d, 0o1777)
    as_user(lambda: open(f"{d}/mine", "w").write("mine\n"), USER)
    as_user(lambda: os.mkdir(f"{d}/mydir", 0o700), USER)
    st = os.stat(f"{d}/mine")
    expect((st.st_uid, st.st_gid) == (USER, USER), f"owner {st.st_uid}:{st.st_gid}")
    root_file = f"{d}/roots"
    with open(root_file, "w") as f:
        f.write("x")
    os.chmod(root_file, 0o644)
    try:
        as_user(lambda: open(root_file, "a").write("y"), USER)
        raise Failed("uid 1000 wrote a 0644 root file")
    except PermissionError:
        pass
    setid = f"{d}/setid"
    with open(setid, "w") as f:
        f.write("#!/bin/sh\n")
    os.chown(setid, USER, USER)
    os.chmod(setid, 0o6775)
    os.chown(setid, 0, USER)        # chown by root clears set-user-ID
    expect(not os.stat(setid).st_mode & stat.S_ISUID, "chown kept S_ISUID")
    os.chown(setid, USER, USER)
    os.chmod(setid, 0o6777)
    as_user(lambda: open(setid, "a").write("echo\n"), 1001, 1001)
    mode = os.stat(setid).st_mode
    expect(not mode & stat.S_ISUID, f"a write by another user kept S_ISUID ({mode:o})")
    run("touch", "-a", "-d", "2010-01-01", f"{d}/mine")
    run("touch", "-m", "-d", "2011-01-01", f"{d}/mine")
    st = os.stat(f"{d}/mine")
    expect(st.st_atime < st.st_mtime, "touch -a/-m")
    birth = run("stat", "-c", "%W", f"{d}/mine").strip()
    expect(birth.lstrip("-").isdigit(), f"stat %W: {birth}")
    expect(run("test", "-w", f"{d}/mine", user=USER) == "", "access as the owner")
    return {"birth": birth}


@step
def big_directory(c):
    """A directory of 600 entries with 200-byte names (~140 KiB of entries: many READDIR
    replies): ls -f, python scandir, a long symlink target, then unlink them all."""
    d = c.dir("bigdir")
    for i in range(600):
        os.mknod(f"{d}/{i:05d}-" + "n" * 200, 0o600 | stat.S_IFREG)
    os.symlink("t" * 4000, f"{d}/long-target")
    listed = run("ls", "-f", d).split()
    expect(len(listed) == 603, f"ls -f: {len(listed)}")
    expect(len(os.listdir(d)) == 601 == sum(1 for _ in os.scandir(d)), "scandir")
    expect(os.readlink(f"{d}/long-target") == "t" * 4000, "long symlink target")
    run("find", d, "-mindepth", "1", "-delete")
    expect(os.listdir(d) == [], "find -delete")
    return "600 entries"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ctx = Ctx(argv[0], argv[1], int(argv[2]))
    os.makedirs(ctx.top, exist_ok=True)
    return STEPS.run(MARKER, ctx)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
