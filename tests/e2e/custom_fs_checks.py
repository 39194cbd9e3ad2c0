"""Runs inside a guest (host python3 over 9p): the example file systems as a guest sees them.

    custom_fs_checks.py MEMFS_MOUNT ARCHIVE_MOUNT MANIFEST_JSON

MEMFS_MOUNT is examples/memfs.py (read-write, starts empty), ARCHIVE_MOUNT is
examples/archivefs.py serving an archive whose members MANIFEST_JSON lists as
{"files": {path: sha256}, "symlinks": {path: target}}.  Prints one line
``PVFS-CUSTOM {"name": ..., "ok": ..., "detail": ..., "info": ...}`` per check and
``PVFS-CUSTOM-DONE <passed> <total>``; exits 1 if any check failed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys

from guest_harness import Checks

CHECKS = Checks()
check = CHECKS.add


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def expect_errno(code: int, fn, *args) -> str:
    try:
        fn(*args)
    except OSError as e:
        if e.errno != code:
            raise AssertionError(f"{fn.__name__}{args}: {e} (wanted {errno.errorcode[code]})")
        return errno.errorcode[e.errno]
    raise AssertionError(f"{fn.__name__}{args} succeeded (wanted {errno.errorcode[code]})")


# --- memfs: a read-write file system in the daemon's memory ----------------------------

@check
def memfs_write_read(m, a, manifest):
    data = os.urandom(3 << 20) + b"tail"
    with open(f"{m}/big.bin", "wb") as f:
        f.write(data)
    os.sync()
    assert os.path.getsize(f"{m}/big.bin") == len(data)
    with open(f"{m}/big.bin", "rb") as f:      # O_DIRECT-free read: may come from cache...
        assert f.read() == data
    # ...so drop the guest's page cache and read again from the daemon.
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    assert sha(f"{m}/big.bin") == hashlib.sha256(data).hexdigest()
    with open(f"{m}/big.bin", "r+b") as f:
        f.seek(100)
        f.write(b"PATCH")
        f.truncate(1000)
    with open(f"{m}/big.bin", "rb") as f:
        got = f.read()
    assert got == data[:100] + b"PATCH" + data[105:1000]
    return {"bytes_written": len(data) + 5}


@check
def memfs_tree(m, a, manifest):
    os.makedirs(f"{m}/a/b/c")
    for i in range(50):
        with open(f"{m}/a/b/file{i:02d}", "w") as f:
            f.write(f"file {i}\n")
    names = sorted(os.listdir(f"{m}/a/b"))
    assert names == ["c"] + [f"file{i:02d}" for i in range(50)], names
    os.rename(f"{m}/a/b/file00", f"{m}/a/b/c/moved")
    os.symlink("c/moved", f"{m}/a/b/link")
    os.link(f"{m}/a/b/file01", f"{m}/a/hard")
    assert open(f"{m}/a/b/link").read() == "file 0\n"
    assert os.readlink(f"{m}/a/b/link") == "c/moved"
    assert os.stat(f"{m}/a/hard").st_nlink == 2
    assert os.stat(f"{m}/a/hard").st_ino == os.stat(f"{m}/a/b/file01").st_ino
    expect_errno(errno.ENOTEMPTY, os.rmdir, f"{m}/a/b")
    expect_errno(errno.EEXIST, os.mkdir, f"{m}/a")
    expect_errno(errno.ENOENT, os.stat, f"{m}/nope")
    for root, dirs, files in os.walk(f"{m}/a", topdown=False):   # rm -r
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(f"{m}/a")
    assert "a" not in os.listdir(m)


@check
def memfs_attributes(m, a, manifest):
    path = f"{m}/attrs.txt"
    with open(path, "w") as f:
        f.write("x")
    os.chmod(path, 0o600)
    os.utime(path, (1_000_000_000, 1_200_000_000))
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert int(st.st_mtime) == 1_200_000_000
    assert st.st_blksize == 4096, st.st_blksize
    vfs = os.statvfs(m)
    assert vfs.f_bsize == 4096 and vfs.f_namemax == 255
    return {"mode": oct(stat.S_IMODE(st.st_mode))}


@check
def memfs_open_unlinked_file_stays_readable(m, a, manifest):
    with open(f"{m}/tmp.txt", "w+") as f:
        f.write("still here")
        f.flush()
        os.unlink(f"{m}/tmp.txt")
        f.seek(0)
        assert f.read() == "still here"
    assert "tmp.txt" not in os.listdir(m)


# --- archivefs: a zip/tar archive, read-only ---------------------------------------------

@check
def archive_contents(m, a, manifest):
    seen = {}
    for root, dirs, files in os.walk(a):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                seen[os.path.relpath(path, a)] = sha(path)
    assert seen == manifest["files"], {"missing": sorted(set(manifest["files"]) - set(seen)),
                                       "extra": sorted(set(seen) - set(manifest["files"]))}
    for path, target in manifest["symlinks"].items():
        assert os.readlink(f"{a}/{path}") == target
    assert os.stat(f"{a}/{next(iter(manifest['files']))}").st_blksize == 4096
    return {"files": len(seen)}


@check
def archive_writes_are_erofs(m, a, manifest):
    some = f"{a}/{next(iter(manifest['files']))}"
    refused = [
        expect_errno(errno.EROFS, open, f"{a}/new.txt", "w"),
        expect_errno(errno.EROFS, open, some, "r+"),
        expect_errno(errno.EROFS, open, some, "a"),
        expect_errno(errno.EROFS, os.mkdir, f"{a}/newdir"),
        expect_errno(errno.EROFS, os.unlink, some),
        expect_errno(errno.EROFS, os.rename, some, f"{a}/renamed"),
        expect_errno(errno.EROFS, os.chmod, some, 0o777),
        expect_errno(errno.EROFS, os.utime, some, None),
        expect_errno(errno.EROFS, os.symlink, "x", f"{a}/sym"),
    ]
    assert sha(some) == manifest["files"][os.path.relpath(some, a)]   # nothing changed
    return {"refused": len(refused)}


def main() -> int:
    m, a, manifest_path = sys.argv[1:4]
    with open(manifest_path) as f:
        manifest = json.load(f)
    return CHECKS.run("PVFS-CUSTOM", m, a, manifest)


if __name__ == "__main__":
    sys.exit(main())
