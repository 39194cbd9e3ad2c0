"""Runs inside a guest that mounted our share with DAX (stdlib only).

    dax_guest.py MOUNT single      the coherence checks below, one guest
    dax_guest.py MOUNT peer A|B    two guests on one file: each stores, each sees the other's

Every result is a line ``PVFS-DAX {json}``; ``{"step": "wait", ...}`` lines tell the host
test when to act (it watches the console).
"""
import ctypes
import json
import mmap
import os
import sys
import time

STATX_ATTR_DAX = 0x00200000
AT_FDCWD = -100
HOST_MARK = b"HOST-WRITE-00001"
GUEST_MARK = b"GUEST-STORE-0001"


def say(**kw):
    print("PVFS-DAX " + json.dumps(kw), flush=True)


class Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("rest", ctypes.c_uint8 * 200)]


def is_dax(path):
    libc = ctypes.CDLL(None, use_errno=True)
    st = Statx()
    if libc.statx(AT_FDCWD, path.encode(), 0, 0x7FF, ctypes.byref(st)) != 0:
        return None
    return bool(st.attributes & STATX_ATTR_DAX)


def spin_until(mm, offset, want, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if mm[offset:offset + len(want)] == want:
            return time.monotonic() - t0
        time.sleep(0.001)
    return None


def attempt(name, fn):
    try:
        fn()
        say(step=name, ok=True)
    except OSError as e:
        say(step=name, ok=False, errno=e.errno, error=str(e))


def single(mnt):
    path = os.path.join(mnt, "aligned.bin")
    say(step="statx", dax=is_dax(path), odd_dax=is_dax(os.path.join(mnt, "odd.txt")),
        blksize=os.stat(path).st_blksize)
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    say(step="first-bytes", data=mm[:16].decode(errors="replace"))
    say(step="wait", what="host-write")
    seen = spin_until(mm, 4096, HOST_MARK)
    say(step="host-write-seen", ok=seen is not None, seconds=seen)
    mm[8192:8192 + len(GUEST_MARK)] = GUEST_MARK
    say(step="stored")
    attempt("msync", mm.flush)
    attempt("fsync", lambda: os.fsync(fd))
    attempt("fdatasync", lambda: os.fdatasync(fd))
    mm.close()
    os.close(fd)
    with open(os.path.join(mnt, "odd.txt"), "rb") as f:
        say(step="odd-read", size=len(f.read()))
    say(step="done")


def peer(mnt, role):
    path = os.path.join(mnt, "peer.bin")
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    say(step="statx", dax=is_dax(path))
    mine, theirs = (0, 4096) if role == "A" else (4096, 0)
    mark = f"FROM-GUEST-{role}".encode()
    other = f"FROM-GUEST-{'B' if role == 'A' else 'A'}".encode()
    # Keep storing ours until we have seen theirs: whichever guest boots first waits.
    t0 = time.monotonic()
    seen = None
    while time.monotonic() - t0 < 240:
        mm[mine:mine + len(mark)] = mark
        if mm[theirs:theirs + len(other)] == other:
            seen = time.monotonic() - t0
            break
        time.sleep(0.01)
    say(step="peer-seen", ok=seen is not None, seconds=seen)
    # Give the other guest time to see ours before we go.
    time.sleep(3)
    attempt("msync", mm.flush)
    mm.close()
    os.close(fd)
    say(step="done")


if __name__ == "__main__":
    if sys.argv[2] == "single":
        single(sys.argv[1])
    else:
        peer(sys.argv[1], sys.argv[3])
