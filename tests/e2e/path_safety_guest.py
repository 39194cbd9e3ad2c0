"""Runs inside a guest (stdlib only): every way a guest user can try to reach files
outside the share through the virtiofs mount.

    path_safety_guest.py MOUNT CANARY_BYTES_HEX

Each attempt prints ``PVFS-ESCAPE {"name": ..., "leaked": bool, "detail": ...}``; ``leaked``
is true only if the canary's content came back.  The host test also watches the canary
with inotify, so an access by the daemon counts even when the guest sees nothing.
"""
import errno
import json
import os
import sys
import threading
import time

MNT = sys.argv[1]
CANARY = bytes.fromhex(sys.argv[2])


def report(name, leaked, detail=""):
    print("PVFS-ESCAPE " + json.dumps({"name": name, "leaked": leaked, "detail": str(detail)[:200]}),
          flush=True)


def try_read(name, path):
    try:
        with open(path, "rb") as f:
            data = f.read()
        report(name, CANARY in data, f"read {len(data)} bytes")
    except OSError as e:
        report(name, False, errno.errorcode.get(e.errno, e.errno))


def try_list(name, path):
    try:
        names = os.listdir(path)
        report(name, "canary" in names, names[:10])
    except OSError as e:
        report(name, False, errno.errorcode.get(e.errno, e.errno))


def main():
    # 1. Symlinks the host planted in the share (relative, absolute, chained, into /proc).
    for link in ("rel-up", "abs", "chain", "dir-up", "proc-root"):
        try_read(f"host-symlink-{link}", os.path.join(MNT, link, "canary")
                 if link in ("dir-up", "proc-root") else os.path.join(MNT, link))
    try_list("host-symlink-dir-listing", os.path.join(MNT, "dir-up"))

    # 2. Symlinks the guest creates.
    for i, target in enumerate(["../canary", "../../canary", "/../canary", "..", "../.."]):
        link = os.path.join(MNT, f"guest-link-{i}")
        try:
            os.symlink(target, link)
        except OSError as e:
            report(f"guest-symlink-{i}", False, e)
            continue
        try_read(f"guest-symlink-{i}", link if "canary" in target else os.path.join(link, "canary"))

    # 3. dot-dot walks from the mount and from a subdirectory.
    os.makedirs(os.path.join(MNT, "sub", "deeper"), exist_ok=True)
    for name, path in (("dotdot-root", os.path.join(MNT, "..", "canary")),
                       ("dotdot-deep", os.path.join(MNT, "sub", "deeper", "..", "..", "..", "canary"))):
        try_read(name, path)

    # 4. Hard links and renames across the mount boundary are EXDEV in the guest itself.
    outside = "/etc/hostname"
    for name, fn in (("hardlink-in", lambda: os.link(outside, os.path.join(MNT, "hl"))),
                     ("rename-in", lambda: os.rename("/tmp/pvfs-x", os.path.join(MNT, "x")))):
        if name == "rename-in":
            open("/tmp/pvfs-x", "w").close()
        try:
            fn()
            report(name, False, "succeeded (a copy inside the share, not an escape)")
        except OSError as e:
            report(name, False, errno.errorcode.get(e.errno, e.errno))

    # 5. Names the kernel must stop before they reach the daemon.
    for name, fname in (("name-too-long", "n" * 256), ("name-max", "m" * 255)):
        try:
            open(os.path.join(MNT, fname), "w").close()
            report(name, False, "created")
        except OSError as e:
            report(name, False, errno.errorcode.get(e.errno, e.errno))

    # 6. A race: one thread keeps swapping a directory and a symlink to .. under one name,
    #    others keep opening and creating through that name.
    race = os.path.join(MNT, "race")
    os.makedirs(os.path.join(MNT, "racedir"), exist_ok=True)
    stop = time.monotonic() + 8
    leaked = []
    counts = {"swaps": 0, "opens": 0}

    def swapper():
        while time.monotonic() < stop:
            for src in ("racedir", "racelink"):
                try:
                    if src == "racelink" and not os.path.lexists(os.path.join(MNT, "racelink")):
                        os.symlink("..", os.path.join(MNT, "racelink"))
                    os.rename(os.path.join(MNT, src), race)
                    os.rename(race, os.path.join(MNT, src))
                    counts["swaps"] += 1
                except OSError:
                    pass

    def opener():
        while time.monotonic() < stop:
            for leaf in ("canary", "new-file"):
                try:
                    fd = os.open(os.path.join(race, leaf), os.O_RDWR | os.O_CREAT, 0o644)
                    if CANARY in os.pread(fd, 4096, 0):
                        leaked.append(leaf)
                    os.close(fd)
                    counts["opens"] += 1
                except OSError:
                    pass

    threads = [threading.Thread(target=swapper)] + [threading.Thread(target=opener) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report("swap-race", bool(leaked), counts)
    print("PVFS-ESCAPE-DONE", flush=True)


main()
