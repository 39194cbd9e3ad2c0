#!/usr/bin/env python3
"""A concurrent random file-system workload, run INSIDE a test guest on a virtio-fs mount
(stdlib only; the guest runs the host's python3), for tests/e2e/test_stress.py.

    python3 stress_workload.py MOUNT --seconds 60 --procs 4 --seed 1

Steps, each announced on the console so the host can measure the daemon in between:

1. ``PVFS-STRESSPHASE {"phase": "mounted"}`` then wait for the host's ``MOUNT/.go-mounted``
   (the host samples the daemon's fds and RSS while the guest holds nothing).
2. PROCS processes, each for SECONDS: create/write/append/overwrite/truncate/rename/link/
   unlink/mkdir/rmdir/fsync at random in its own directory (checked against an in-memory
   model of its files, hard links included: every read must return what the model says),
   and create/rename/link/unlink in one directory shared by all (races: ENOENT/EEXIST are
   expected there and counted).
3. Every worker re-reads every file it owns against its model; then the sha256 of every
   file under MOUNT/stress goes to MOUNT/stress-result.json (fsynced), and a summary line
   ``PVFS-STRESS {...}`` with the result file's sha256 goes to the console.
4. ``cd /``, ``umount MOUNT`` (the daemon gets DESTROY and all FORGETs), then
   ``PVFS-STRESSPHASE {"phase": "unmounted"}`` and a pause for the host to measure again.
"""
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time

OWN_ERRORS_OK = set()                     # in a worker's own directory nothing may fail
SHARED_ERRORS_OK = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR}


def say(marker, obj):
    print(f"{marker} {json.dumps(obj, sort_keys=True)}", flush=True)


def wait_for(path, timeout=300):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"host never created {path}")
        time.sleep(0.2)


class Worker:
    """One process: a model of its own directory (name -> inode id, inode id -> bytes)."""

    def __init__(self, root, shared, wid, seed):
        self.dir = os.path.join(root, f"w{wid}")
        self.shared = shared
        self.wid = wid
        self.rng = random.Random(seed)
        self.names = {}     # name -> inode id
        self.data = {}      # inode id -> bytearray
        self.next_inode = 0
        self.dirs = set()
        self.ops = {}
        self.shared_errors = 0
        self.failures = []
        os.mkdir(self.dir)

    def count(self, op):
        self.ops[op] = self.ops.get(op, 0) + 1

    def payload(self, n):
        return self.rng.randbytes(n)

    def path(self, name):
        return os.path.join(self.dir, name)

    def fresh_name(self):
        sub = self.rng.choice(sorted(self.dirs)) + "/" if self.dirs and self.rng.random() < 0.3 else ""
        return f"{sub}f{self.rng.randrange(10**9)}"

    # -- operations in the worker's own directory, mirrored in the model ----------------

    def op_create(self):
        name = self.fresh_name()
        data = self.payload(self.rng.choice([0, 1, 100, 4096, 5000, 65536]))
        with open(self.path(name), "xb") as f:
            f.write(data)
            if self.rng.random() < 0.3:
                os.fsync(f.fileno())
        ino = self.next_inode = self.next_inode + 1
        self.names[name], self.data[ino] = ino, bytearray(data)

    def pick(self):
        return self.rng.choice(sorted(self.names)) if self.names else None

    def op_write(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        buf = self.data[self.names[name]]
        off = self.rng.randrange(len(buf) + 8192)
        data = self.payload(self.rng.choice([1, 512, 4096, 10000]))
        fd = os.open(self.path(name), os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
            if self.rng.random() < 0.2:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data

    def op_append(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        data = self.payload(self.rng.choice([1, 100, 4096]))
        with open(self.path(name), "ab") as f:
            f.write(data)
        self.data[self.names[name]].extend(data)

    def op_truncate(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        buf = self.data[self.names[name]]
        size = self.rng.choice([0, len(buf) // 2, len(buf) + 3000])
        os.truncate(self.path(name), size)
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    def op_rename(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        new = self.fresh_name() if self.rng.random() < 0.7 else self.pick()
        os.rename(self.path(name), self.path(new))
        # rename() between two names of one inode does nothing (both names stay)
        if new != name and self.names.get(new) != self.names[name]:
            self.names[new] = self.names.pop(name)

    def op_link(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        new = self.fresh_name()
        os.link(self.path(name), self.path(new))
        self.names[new] = self.names[name]

    def op_unlink(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        os.unlink(self.path(name))
        ino = self.names.pop(name)
        if ino not in self.names.values():
            del self.data[ino]

    def op_mkdir(self):
        if len(self.dirs) < 5:
            d = f"d{self.rng.randrange(10**6)}"
            os.mkdir(self.path(d))
            self.dirs.add(d)
        elif self.dirs:
            d = self.rng.choice(sorted(self.dirs))
            if not any(n.startswith(d + "/") for n in self.names):
                os.rmdir(self.path(d))
                self.dirs.discard(d)

    def op_read(self):
        name = self.pick()
        if name is None:
            return self.op_create()
        self.verify(name)

    def verify(self, name):
        with open(self.path(name), "rb") as f:
            got = f.read()
        want = bytes(self.data[self.names[name]])
        if got != want:
            self.failures.append(f"{name}: read {len(got)} bytes, model has {len(want)} "
                                 f"(first difference at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))})")

    # -- the shared directory: several processes race on the same names -------------------

    def op_shared(self):
        rng = self.rng
        n = f"s{rng.randrange(40)}"
        p = os.path.join(self.shared, n)
        try:
            kind = rng.randrange(5)
            if kind == 0:
                tmp = os.path.join(self.shared, f".tmp-{self.wid}-{rng.randrange(10**9)}")
                with open(tmp, "wb") as f:
                    f.write(self.payload(rng.choice([10, 4096, 20000])))
                    os.fsync(f.fileno())
                os.rename(tmp, p)                      # atomic replace while others read
            elif kind == 1:
                os.link(p, os.path.join(self.shared, f"s{rng.randrange(40)}"))
            elif kind == 2:
                os.unlink(p)
            elif kind == 3:
                with open(p, "rb") as f:
                    f.read()
            else:
                os.rename(p, os.path.join(self.shared, f"s{rng.randrange(40)}"))
        except OSError as e:
            if e.errno not in SHARED_ERRORS_OK:
                raise
            self.shared_errors += 1

    OPS = [("create", 3), ("write", 4), ("append", 2), ("truncate", 1), ("rename", 2),
           ("link", 1), ("unlink", 2), ("mkdir", 1), ("read", 3), ("shared", 3)]

    def run(self, seconds):
        table = [name for name, weight in self.OPS for _ in range(weight)]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            op = self.rng.choice(table)
            try:
                getattr(self, "op_" + op)()
            except OSError as e:
                self.failures.append(f"{op}: {e!r}")
                if len(self.failures) > 20:
                    break
            self.count(op)
        for name in sorted(self.names):
            self.verify(name)
        return {"ops": self.ops, "shared_errors": self.shared_errors,
                "failures": self.failures, "files": len(self.names)}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    mount = sys.argv[1]
    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    seconds = float(args.get("--seconds", 60))
    procs = int(args.get("--procs", 4))
    seed = int(args.get("--seed", 1))
    root = os.path.join(mount, "stress")
    shared = os.path.join(root, "shared")

    say("PVFS-STRESSPHASE", {"phase": "mounted"})
    wait_for(os.path.join(mount, ".go-mounted"))
    os.makedirs(shared)
    t0 = time.monotonic()
    children = []
    for wid in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                result = Worker(root, shared, wid, seed * 1000 + wid).run(seconds)
            except BaseException as e:  # noqa: BLE001 - report, never hang the parent
                result = {"ops": {}, "shared_errors": 0, "failures": [f"crashed: {e!r}"], "files": 0}
            os.write(w, json.dumps(result).encode())
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    results = []
    for pid, r in children:
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        results.append(json.loads(b"".join(chunks)))
    elapsed = time.monotonic() - t0

    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            files[os.path.relpath(p, mount)] = sha256(p)
    ops = {}
    for res in results:
        for k, v in res["ops"].items():
            ops[k] = ops.get(k, 0) + v
    summary = {"seconds": round(elapsed, 1), "procs": procs, "ops": ops,
               "ops_total": sum(ops.values()), "files_checked": len(files),
               "model_files": sum(r["files"] for r in results),
               "shared_errors": sum(r["shared_errors"] for r in results),
               "failures": [f for r in results for f in r["failures"]][:50]}
    result_path = os.path.join(mount, "stress-result.json")
    blob = json.dumps({"summary": summary, "files": files}, sort_keys=True).encode()
    with open(result_path, "wb") as f:
        f.write(blob)
        os.fsync(f.fileno())
    summary["result_sha256"] = hashlib.sha256(blob).hexdigest()
    say("PVFS-STRESS", summary)

    os.chdir("/")
    rc = subprocess.run(["umount", mount]).returncode
    say("PVFS-STRESSPHASE", {"phase": "unmounted", "umount_status": rc})
    time.sleep(8)   # the host measures the daemon now
    return 1 if summary["failures"] or rc else 0


if __name__ == "__main__":
    sys.exit(main())
