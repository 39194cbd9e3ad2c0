"""``pyvirtiofsd-bench --guest``: the same comparison from inside real QEMU guests.

For each back-end (ours, the C virtiofsd, the Rust virtiofsd; the same commands as the
front-end benchmark) one QEMU 7.2 guest (``vhost-user-fs-pci``, TCG) mounts the share and
runs the host's fio through the 9p host root -- sequential 1 MiB and random 4 KiB reads and
writes at iodepth 1 and 16, ``direct=1`` so every I/O reaches the back-end rather than the
guest page cache -- then a Python metadata loop (create+unlink; stat of 500 names after
dropping the guest's caches: LOOKUPs).  Results land in files in the share, which the host
reads after the guest powers off, and become one table.

Under TCG the guest's own CPU cost bounds absolute numbers; the ratio between back-ends is
what this measures.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from .. import guest
from . import peers as peers_mod

GUEST_PYTHON = "/usr/bin/python3"
MOUNT = "/mnt"

JOBS = [  # (id, title, rw, bs, iodepth)
    ("seq-read-1m-qd1", "seq read 1M QD1", "read", "1M", 1),
    ("seq-read-1m-qd16", "seq read 1M QD16", "read", "1M", 16),
    ("seq-write-1m-qd1", "seq write 1M QD1", "write", "1M", 1),
    ("seq-write-1m-qd16", "seq write 1M QD16", "write", "1M", 16),
    ("rand-read-4k-qd1", "rand read 4K QD1", "randread", "4k", 1),
    ("rand-read-4k-qd16", "rand read 4K QD16", "randread", "4k", 16),
    ("rand-write-4k-qd1", "rand write 4K QD1", "randwrite", "4k", 1),
    ("rand-write-4k-qd16", "rand write 4K QD16", "randwrite", "4k", 16),
]

META_SCRIPT = r'''
import json, os, sys, time
share, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
def drop():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
d = os.path.join(share, "meta")
os.makedirs(d, exist_ok=True)
res = {}
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    p = os.path.join(d, "c%d" % (n % 64))
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.unlink(p)
    n += 1
res["create-unlink"] = n / (time.perf_counter() - t0)
names = sorted(os.listdir(os.path.join(share, "many")))
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    drop()
    for name in names:
        os.lstat(os.path.join(share, "many", name))
    n += len(names)
res["stat-cold"] = n / (time.perf_counter() - t0)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    drop()
    n += sum(1 for e in os.scandir(os.path.join(share, "many")) if e.stat(follow_symlinks=False))
res["readdir-stat"] = n / (time.perf_counter() - t0)
with open(out, "w") as f:
    json.dump(res, f)
'''

META_ROWS = [("create-unlink", "create+unlink (files/s)"),
             ("stat-cold", "stat, caches dropped (names/s)"),
             ("readdir-stat", "readdir+stat 500 (entries/s)")]


def job_file(path: str, size: str, runtime: float) -> str:
    lines = ["[global]", f"filename={path}", f"size={size}", "direct=1", "ioengine=libaio",
             "time_based=1", f"runtime={int(runtime * 1000)}ms", "ramp_time=200ms",
             "group_reporting=1",
             "stonewall=1", "invalidate=0"]
    for jid, _, rw, bs, depth in JOBS:
        lines += [f"[{jid}]", f"rw={rw}", f"bs={bs}", f"iodepth={depth}"]
    return "\n".join(lines) + "\n"


def prepare_share(share: str, file_size: int) -> None:
    os.makedirs(os.path.join(share, "many"), exist_ok=True)
    for i in range(500):
        p = os.path.join(share, "many", f"n{i:03d}")
        if not os.path.exists(p):
            open(p, "wb").close()
    data = os.path.join(share, "fio.bin")
    if not os.path.exists(data) or os.path.getsize(data) != file_size:
        with open(data, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(file_size >> 20):
                f.write(block)
    with open(os.path.join(share, "meta.py"), "w") as f:
        f.write(META_SCRIPT)


def run_one(peer: peers_mod.Peer, share: str, work: str, runtime: float, meta_seconds: float,
            file_size: int, timeout: float) -> dict:
    for name in ("fio.json", "meta.json"):
        try:
            os.unlink(os.path.join(share, name))
        except FileNotFoundError:
            pass
    with open(os.path.join(share, "jobs.fio"), "w") as f:
        f.write(job_file(f"{MOUNT}/fio.bin", f"{file_size >> 20}M", runtime))
    command = (f"fio {MOUNT}/jobs.fio --eta=never --output-format=json --output={MOUNT}/fio.json && "
               f"{GUEST_PYTHON} {MOUNT}/meta.py {MOUNT} {MOUNT}/meta.json {meta_seconds:g}")
    sock = os.path.join(work, f"{peer.name}.sock")
    backend = guest.Backend(peer.command(sock, share), sock, os.path.join(work, f"{peer.name}.log"))
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    with backend:
        result = guest.boot(command, sock, tag="share", frontend="qemu72", flavor="bookworm",
                            mount_point=MOUNT, timeout=timeout,
                            console_path=os.path.join(work, f"{peer.name}.console"))
    if result.exit_status != 0:
        raise RuntimeError(f"{peer.name}: guest command failed ({result.exit_status}):\n"
                           + "\n".join(result.output.splitlines()[-20:]))
    with open(os.path.join(share, "fio.json")) as f:
        fio = json.load(f)
    with open(os.path.join(share, "meta.json")) as f:
        meta = json.load(f)
    out = {"load": load, "seconds": round(time.monotonic() - t0, 1)}
    for job in fio["jobs"]:
        side = job["read"] if job["read"]["io_bytes"] else job["write"]
        pct = side.get("clat_ns", {}).get("percentile", {})
        out[job["jobname"]] = {"iops": side["iops"], "mb_per_s": side["bw_bytes"] / 1e6,
                               "p50_us": pct.get("50.000000", 0) / 1000,
                               "p99_us": pct.get("99.000000", 0) / 1000,
                               "errors": job.get("error", 0)}
    for key, value in meta.items():
        out[key] = {"iops": value}
    return out


def _median_run(rs: list[dict]) -> dict:
    """One result per row: the run with the median ops/s, plus the spread of the runs."""
    out = {"load": max(r["load"] for r in rs), "seconds": sum(r["seconds"] for r in rs)}
    for key in rs[0]:
        if not isinstance(rs[0][key], dict):
            continue
        cells = sorted((r[key] for r in rs if key in r), key=lambda c: c["iops"])
        mid = dict(cells[len(cells) // 2])
        if len(cells) > 1 and mid["iops"]:
            mid["spread"] = (cells[-1]["iops"] - cells[0]["iops"]) / mid["iops"]
            mid["runs"] = [round(c["iops"], 1) for c in cells]
        out[key] = mid
    return out


def main(args) -> int:
    specs = args.backend or ["ours", "c-virtiofsd", "rust-virtiofsd"]
    try:
        chosen = [peers_mod.parse_peer(s) for s in specs]
    except ValueError as e:
        print(f"pyvirtiofsd-bench: {e}", file=sys.stderr)
        return 2
    extra = args.ours_args.split() if args.ours_args else []
    chosen = [peers_mod.ours(*extra) if p.name == "ours" else p for p in chosen]
    runtime = 0.5 if args.quick else max(1.0, args.duration * 4)
    meta_seconds = 1.0 if args.quick else max(2.0, args.duration * 4)
    file_size = 64 << 20
    work = args.dir or tempfile.mkdtemp(prefix="pyvirtiofsd-guestbench-", dir="/var/tmp")
    share = os.path.join(work, "share")
    os.makedirs(share, exist_ok=True)
    prepare_share(share, file_size)
    print(f"guest assets: {guest.cache_dir()} (${guest.CACHE_ENV})", file=sys.stderr)
    guest.prepare("bookworm")
    results, t_start = {}, time.monotonic()
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {p.name: [] for p in chosen}
    try:
        for k in range(args.guest_repeat):      # interleaved, like the front-end benchmark
            for p in chosen:
                print(f"  guest {k + 1}/{args.guest_repeat} on {p.name}...", file=sys.stderr,
                      flush=True)
                runs[p.name].append(run_one(p, share, work, runtime, meta_seconds, file_size,
                                            timeout=600))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    for name, rs in runs.items():
        results[name] = _median_run(rs)
    names = [p.name for p in chosen]
    rows = [(jid, title) for jid, title, *_ in JOBS] + META_ROWS
    out = sys.stderr if args.json == "-" else sys.stdout
    head = ["row (in a QEMU 7.2 TCG guest)"] + [n + (f" (ratio to {names[0]})" if i else "")
                                                for i, n in enumerate(names)]
    if "ours" in names and len(names) > 1:
        head.append("ours/best peer")
    body = []
    for rid, title in rows:
        line = [title]
        first = results[names[0]].get(rid, {}).get("iops") or 0
        for n in names:
            c = results[n].get(rid)
            if not c:
                line.append("-")
                continue
            text = f"{c['iops']:,.0f}/s"
            if "mb_per_s" in c:
                text += f" {c['mb_per_s']:.1f}MB/s {c['p50_us']:.0f}/{c['p99_us']:.0f}µs"
            if c.get("spread"):
                text += f" ±{c['spread'] * 50:.0f}%"
            if n != names[0] and first:
                text += f" ({c['iops'] / first:.2f}x)"
            line.append(text)
        if len(head) > len(names) + 1:
            peers_best = max(results[n].get(rid, {}).get("iops", 0) for n in names if n != "ours")
            ours_v = results["ours"].get(rid, {}).get("iops", 0)
            line.append(f"{ours_v / peers_best:.2f}x" if peers_best else "")
        body.append(line)
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    for k, x in enumerate([head] + body):
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    elapsed = time.monotonic() - t_start
    print(f"fio {runtime:g} s per job (direct=1, libaio), metadata {meta_seconds:g} s per loop; "
          f"{args.guest_repeat} run(s) per back-end, the median shown (± half the spread); "
          f"p50/p99 = fio completion latency; total {elapsed:.0f} s; load average before "
          f"{load_before[0]:.2f} ({os.cpu_count()} CPUs, guests under TCG)", file=out)
    if args.json:
        doc = {"guest": True, "frontend": "qemu72", "load_before": load_before,
               "elapsed_s": round(elapsed, 1), "columns": names,
               "backends": {p.name: p.command("{socket}", "{dir}") for p in chosen},
               "results": results, "runs": runs}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0
