"""``pyvirtiofsd-bench --guest``: the same comparison from inside real QEMU guests.

For each back-end (ours, the C virtiofsd, the Rust virtiofsd; the same commands as the
front-end benchmark) one QEMU 7.2 guest (``vhost-user-fs-pci``, TCG) per round mounts the
share and runs, as the rows chosen with ``--rows`` ask (``--list-rows`` with ``--guest``
lists them; default all):

* the host's fio through the 9p host root -- sequential 1 MiB and random 4 KiB reads and
  writes at iodepth 1 and 16, ``direct=1`` so every I/O reaches the back-end rather than the
  guest page cache, and ``end_fsync``/``fsync_on_close`` so a write job's figure includes
  getting the data to the host's disk;
* a Python metadata loop (create+unlink; stat of 500 names after dropping the guest's
  caches: LOOKUPs);
* the small-file workload of :mod:`.smallfiles` (tar -x of a source-like tree, stat all,
  read all, rewrite some, rm -rf; timed per phase in the guest, checksums checked).

Each round runs the back-ends in a rotated order (round k starts with the k-th), so no
back-end always runs first or right after another's writes. fio's exit status and each
job's ``error`` field are checked, as are the small-file checksums: any failure marks its
row PROBLEM and the command exits 1. Results land in files in the share and on the console,
which the host reads after the guest powers off, and become one table per kind of row.

Under TCG the guest's own CPU cost bounds absolute numbers; the ratio between back-ends is
what this measures.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from .. import guest
from . import peers as peers_mod
from . import smallfiles as sf

GUEST_PYTHON = "/usr/bin/python3"
MOUNT = "/mnt"
BENCH_MARK = "PVFS-BENCH"   # "PVFS-BENCH <part>-exit <status>" on the console, per part

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

# Every guest row: (id, title, part); a part is what one guest runs for its rows.
ROWS = ([(jid, title, "fio") for jid, title, *_ in JOBS]
        + [(rid, title, "meta") for rid, title in META_ROWS]
        + [(rid, title, "smallfiles") for rid, title in sf.ROWS])


def select_rows(spec: str | None) -> list[str]:
    """Row ids chosen by ``--rows`` (ids or prefixes, comma-separated; None: all). The
    small-file phases need each other, so any ``smallfiles-*`` row brings them all."""
    ids = [rid for rid, _, _ in ROWS]
    if not spec:
        return ids
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    chosen = [rid for rid in ids if any(rid == w or rid.startswith(w) for w in wanted)]
    if not chosen:
        raise ValueError(f"no guest row matches {spec!r}; rows: " + ", ".join(ids))
    if any(r in sf.ROW_IDS for r in chosen):
        chosen = [r for r in chosen if r not in sf.ROW_IDS] + sf.ROW_IDS
    return chosen


def parts(rows: list[str]) -> list[str]:
    """The parts a guest runs for ``rows``, in running order."""
    kinds = {part for rid, _, part in ROWS if rid in rows}
    return [p for p in ("fio", "meta", "smallfiles") if p in kinds]


def round_order(names: list[str], k: int) -> list[str]:
    """The back-ends' order in round ``k``: rotated by k, so each leads once in len(names)
    rounds (the one that runs after another's writes pays for their writeback)."""
    if not names:
        return []
    k %= len(names)
    return names[k:] + names[:k]


def job_file(path: str, size: str, runtime: float, jobs: list[str] | None = None) -> str:
    lines = ["[global]", f"filename={path}", f"size={size}", "direct=1", "ioengine=libaio",
             "time_based=1", f"runtime={int(runtime * 1000)}ms", "ramp_time=200ms",
             "group_reporting=1",
             # A write job ends with fsync: its figure includes getting the data to the host.
             "end_fsync=1", "fsync_on_close=1",
             "stonewall=1", "invalidate=0"]
    for jid, _, rw, bs, depth in JOBS:
        if jobs is None or jid in jobs:
            lines += [f"[{jid}]", f"rw={rw}", f"bs={bs}", f"iodepth={depth}"]
    return "\n".join(lines) + "\n"


def parse_fio_output(text: str) -> dict:
    """fio's JSON document; fio may print warnings ("fio: ...") ahead of it in the file."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio's output" + (f": {text.strip()[:200]}" if text.strip() else ""))
    doc, _ = json.JSONDecoder().raw_decode(text[start:])
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise ValueError("fio's JSON has no jobs list")
    return doc


def fio_problems(doc: dict | None, exit_status: int | None, jobs: list[str]) -> dict[str, list[str]]:
    """What went wrong in a fio run, per row id: a job whose ``error`` field is set (fio's
    errno) or that did no I/O, a job missing from the output, and fio's own exit status
    (charged to every job: fio does not say which job made it fail)."""
    out: dict[str, list[str]] = {}
    seen = set()
    for job in (doc or {}).get("jobs", []):
        name = job.get("jobname", "?")
        seen.add(name)
        if job.get("error"):
            out.setdefault(name, []).append(f"fio job error {job['error']}"
                                            + (f" ({job['error_str']})" if job.get("error_str") else ""))
        elif not any(job.get(side, {}).get("io_bytes") for side in ("read", "write")):
            out.setdefault(name, []).append("fio job did no I/O")
    for name in jobs:
        if doc is not None and name not in seen:
            out.setdefault(name, []).append("no result from fio")
    if exit_status is None:
        for name in jobs:
            out.setdefault(name, []).append("fio did not report its exit status")
    elif exit_status != 0:
        for name in jobs:
            out.setdefault(name, []).append(f"fio exited with {exit_status}")
    return out


def fio_cells(doc: dict) -> dict:
    out = {}
    for job in doc.get("jobs", []):
        side = job["read"] if job["read"]["io_bytes"] else job["write"]
        pct = side.get("clat_ns", {}).get("percentile", {})
        out[job["jobname"]] = {"iops": side["iops"], "mb_per_s": side["bw_bytes"] / 1e6,
                               "p50_us": pct.get("50.000000", 0) / 1000,
                               "p99_us": pct.get("99.000000", 0) / 1000,
                               "errors": job.get("error", 0)}
    return out


def part_statuses(output: str) -> dict[str, int]:
    """``{part: exit status}`` from the ``PVFS-BENCH <part>-exit N`` lines of a console."""
    out = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == BENCH_MARK and words[1].endswith("-exit") \
                and words[2].lstrip("-").isdigit():
            out[words[1][:-len("-exit")]] = int(words[2])
    return out


def guest_script(chosen_parts: list[str], jobs_path: str, meta_path: str, meta_seconds: float,
                 sf_dir: str | None) -> str:
    """The guest's command: each part in turn, its exit status on the console, all of them
    run even if one fails; the script's status is 1 if any did."""
    lines = ["rc=0", f"cd {MOUNT} || exit 1"]
    commands = {
        "fio": f"fio {jobs_path} --eta=never --output-format=json --output={MOUNT}/fio.json",
        "meta": f"{GUEST_PYTHON} {meta_path} {MOUNT} {MOUNT}/meta.json {meta_seconds:g}",
        "smallfiles": f"bash {sf_dir}/smallfiles.sh {sf_dir} {MOUNT}",
    }
    for part in chosen_parts:
        lines += [commands[part], "s=$?", f'echo "{BENCH_MARK} {part}-exit $s"',
                  '[ "$s" -eq 0 ] || rc=1']
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def prepare_share(share: str, file_size: int, chosen_parts: list[str]) -> None:
    os.makedirs(share, exist_ok=True)
    if "meta" in chosen_parts:
        os.makedirs(os.path.join(share, "many"), exist_ok=True)
        for i in range(500):
            p = os.path.join(share, "many", f"n{i:03d}")
            if not os.path.exists(p):
                open(p, "wb").close()
    if "fio" in chosen_parts:
        data = os.path.join(share, "fio.bin")
        if not os.path.exists(data) or os.path.getsize(data) != file_size:
            with open(data, "wb") as f:
                block = os.urandom(1 << 20)
                for _ in range(file_size >> 20):
                    f.write(block)


def run_one(peer: peers_mod.Peer, share: str, work: str, rows: list[str], runtime: float,
            meta_seconds: float, file_size: int, timeout: float,
            fixture: sf.Fixture | None = None) -> dict:
    """One guest on ``peer``: its cells ``{row id: {...}}`` and ``problems`` ``{row id: [..]}``."""
    chosen_parts = parts(rows)
    for name in ("fio.json", "meta.json"):
        try:
            os.unlink(os.path.join(share, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(share, sf.TOP), ignore_errors=True)  # a failed run's leftovers
    jobs = [jid for jid, *_ in JOBS if jid in rows]
    jobs_path, meta_path = os.path.join(work, "jobs.fio"), os.path.join(work, "meta.py")
    with open(jobs_path, "w") as f:
        f.write(job_file(f"{MOUNT}/fio.bin", f"{file_size >> 20}M", runtime, jobs))
    with open(meta_path, "w") as f:
        f.write(META_SCRIPT)
    script = os.path.join(work, "guest.sh")
    with open(script, "w") as f:
        f.write(guest_script(chosen_parts, guest.guest_path(jobs_path), guest.guest_path(meta_path),
                             meta_seconds, guest.guest_path(fixture.directory) if fixture else None))
    sock = os.path.join(work, f"{peer.name}.sock")
    backend = guest.Backend(peer.command(sock, share), sock, os.path.join(work, f"{peer.name}.log"))
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    with backend:
        result = guest.boot(f"sh {guest.guest_path(script)}", sock, tag="share",
                            frontend="qemu72", flavor="bookworm", mount_point=MOUNT,
                            timeout=timeout,
                            console_path=os.path.join(work, f"{peer.name}.console"))
    out: dict = {"load": load, "seconds": round(time.monotonic() - t0, 1), "problems": {}}
    problems: dict[str, list[str]] = out["problems"]
    output = result.output
    statuses = part_statuses(output)
    tail = "\n".join(output.splitlines()[-20:])
    if "fio" in chosen_parts:
        doc = None
        try:
            with open(os.path.join(share, "fio.json")) as f:
                doc = parse_fio_output(f.read())
        except (OSError, ValueError) as e:
            for jid in jobs:
                problems.setdefault(jid, []).append(f"fio output: {e}")
        for jid, msgs in fio_problems(doc, statuses.get("fio"), jobs).items():
            problems.setdefault(jid, []).extend(msgs)
        if doc is not None:
            out.update(fio_cells(doc))
    if "meta" in chosen_parts:
        try:
            with open(os.path.join(share, "meta.json")) as f:
                meta = json.load(f)
            for key, value in meta.items():
                out[key] = {"iops": value}
        except (OSError, ValueError) as e:
            for rid, _ in META_ROWS:
                problems.setdefault(rid, []).append(f"metadata loop: {e}")
        if statuses.get("meta") != 0:
            for rid, _ in META_ROWS:
                problems.setdefault(rid, []).append(
                    f"metadata loop exited with {statuses.get('meta')}:\n{tail}")
    if "smallfiles" in chosen_parts:
        parsed = sf.parse_console(output)
        out.update(sf.cells(parsed))
        msgs = sf.check(parsed, fixture)
        if statuses.get("smallfiles") != 0 and not parsed["failed"]:
            msgs.append(f"small-file script exited with {statuses.get('smallfiles')}:\n{tail}")
        for rid in sf.ROW_IDS:
            if msgs:
                problems.setdefault(rid, []).extend(msgs)
    if result.exit_status != 0 and not problems:
        problems.setdefault(rows[0], []).append(
            f"guest command failed ({result.exit_status}):\n{tail}")
    return out


def problem_lines(found: dict[str, list[str]], rows: list[str], where: str) -> list[str]:
    """One line per distinct message of one run, naming the rows it hit ("every row" when
    it hit them all: a back-end that did not start, a guest that did not boot)."""
    by_message: dict[str, list[str]] = {}
    for rid, msgs in found.items():
        for m in dict.fromkeys(msgs):
            by_message.setdefault(m, []).append(rid)
    out = []
    for m, rids in by_message.items():
        if set(rids) >= set(rows) and len(rows) > 1:
            what = "every row"
        elif set(rids) == set(sf.ROW_IDS):
            what = "smallfiles-*"
        else:
            what = ", ".join(rids)
        out.append(f"{what} {where}: {m}")
    return out


def _value(cell: dict) -> float:
    return cell["iops"] if "iops" in cell else cell["seconds"]


def _median_run(rs: list[dict]) -> dict:
    """One result per row: the run with the median value (ops/s, or seconds for the
    small-file rows), plus the spread of the runs."""
    out = {"load": max(r["load"] for r in rs), "seconds": sum(r["seconds"] for r in rs)}
    keys = list(dict.fromkeys(k for r in rs for k in r))
    for key in keys:
        if key == "problems" or not isinstance(next((r[key] for r in rs if key in r), None), dict):
            continue
        cells = sorted((r[key] for r in rs if key in r), key=_value)
        mid = dict(cells[len(cells) // 2])
        if len(cells) > 1 and _value(mid):
            mid["spread"] = (_value(cells[-1]) - _value(cells[0])) / _value(mid)
            mid["runs"] = [round(_value(c), 3 if "seconds" in c else 1) for c in cells]
        if "seconds" in mid and len(cells) > 1:
            mid["seconds"] = statistics.median(c["seconds"] for c in cells)
        out[key] = mid
    return out


def _print_table(head: list[str], body: list[list[str]], out) -> None:
    widths = [max(len(x[i]) if i < len(x) else 0 for x in [head] + body) for i in range(len(head))]
    for k, x in enumerate([head] + body):
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths).rstrip(), file=out)


def rate_table(rows: list[tuple[str, str]], results: dict, names: list[str],
               bad: set[str]) -> tuple[list[str], list[list[str]]]:
    """The fio and metadata rows: ops/s (higher is better), ratio to the first back-end."""
    head = ["row (in a QEMU 7.2 TCG guest)"] + [n + (f" (ratio to {names[0]})" if i else "")
                                                for i, n in enumerate(names)]
    if "ours" in names and len(names) > 1:
        head.append("ours/best peer")
    head.append("")
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
        if "ours" in names and len(names) > 1:
            peers_best = max(results[n].get(rid, {}).get("iops", 0) for n in names if n != "ours")
            ours_v = results["ours"].get(rid, {}).get("iops", 0)
            line.append(f"{ours_v / peers_best:.2f}x" if peers_best else "")
        line.append("PROBLEM" if rid in bad else "")
        body.append(line)
    return head, body


def time_table(rows: list[tuple[str, str]], results: dict, names: list[str],
               bad: set[str]) -> tuple[list[str], list[list[str]]]:
    """The small-file rows: seconds (lower is better) and the speed relative to the C
    virtiofsd (its time / this one's: >1 is faster), or to the first back-end without it."""
    ref = "c-virtiofsd" if "c-virtiofsd" in names else names[0]
    head = ["small-file phase (seconds)"] + [n + (f" (speed vs {ref})" if n != ref else "")
                                             for n in names]
    if "ours" in names and len(names) > 1:
        head.append("ours/best peer")
    head.append("")
    body = []
    for rid, title in rows:
        line = [title]
        base = results[ref].get(rid, {}).get("seconds") or 0
        for n in names:
            c = results[n].get(rid)
            if not c:
                line.append("-")
                continue
            text = f"{c['seconds']:.2f} s"
            if c.get("spread"):
                text += f" ±{c['spread'] * 50:.0f}%"
            if n != ref and base and c["seconds"]:
                text += f" ({base / c['seconds']:.2f}x)"
            line.append(text)
        if "ours" in names and len(names) > 1:
            times = [results[n].get(rid, {}).get("seconds") for n in names if n != "ours"]
            times = [t for t in times if t]
            ours_t = results["ours"].get(rid, {}).get("seconds")
            line.append(f"{min(times) / ours_t:.2f}x" if times and ours_t else "")
        line.append("PROBLEM" if rid in bad else "")
        body.append(line)
    return head, body


def main(args) -> int:
    if args.list_rows:
        for rid, title, part in ROWS:
            print(f"{rid:22} {title} ({part})")
        return 0
    try:
        rows = select_rows(args.rows)
    except ValueError as e:
        print(f"pyvirtiofsd-bench: {e}", file=sys.stderr)
        return 2
    chosen_parts = parts(rows)
    specs = args.backend or ["ours", "c-virtiofsd", "rust-virtiofsd"]
    try:
        chosen = [peers_mod.parse_peer(s) for s in specs]
    except ValueError as e:
        print(f"pyvirtiofsd-bench: {e}", file=sys.stderr)
        return 2
    extra = args.ours_args.split() if args.ours_args else []
    chosen = [peers_mod.ours(*extra) if p.name == "ours" else p for p in chosen]
    names = [p.name for p in chosen]
    if len(set(names)) != len(names):
        print("pyvirtiofsd-bench: back-end names must differ", file=sys.stderr)
        return 2
    for p in chosen:
        why = peers_mod.missing(p)
        if why:
            print(f"pyvirtiofsd-bench: back-end {p.name} cannot run: {why}", file=sys.stderr)
            return 2
    runtime = 0.5 if args.quick else max(1.0, args.duration * 4)
    meta_seconds = 1.0 if args.quick else max(2.0, args.duration * 4)
    n_files = sf.QUICK_FILES if args.quick else sf.DEFAULT_FILES
    file_size = 64 << 20
    work = args.dir or tempfile.mkdtemp(prefix="pyvirtiofsd-guestbench-", dir="/var/tmp")
    share = os.path.join(work, "share")
    prepare_share(share, file_size, chosen_parts)
    fixture = None
    if "smallfiles" in chosen_parts:   # outside the share: reading it costs no back-end
        fixture = sf.prepare(os.path.join(work, "smallfiles"), n_files)
    print(f"guest assets: {guest.cache_dir()} (${guest.CACHE_ENV})", file=sys.stderr)
    guest.prepare("bookworm")
    results, t_start = {}, time.monotonic()
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {p.name: [] for p in chosen}
    orders: list[list[str]] = []
    problems: list[str] = []
    bad: set[str] = set()
    by_name = {p.name: p for p in chosen}
    try:
        for k in range(args.guest_repeat):      # interleaved and rotated, like the front-end bench
            orders.append(round_order(names, k))
            for name in orders[-1]:
                print(f"  guest {k + 1}/{args.guest_repeat} on {name}...", file=sys.stderr,
                      flush=True)
                try:
                    r = run_one(by_name[name], share, work, rows, runtime, meta_seconds,
                                file_size, timeout=600, fixture=fixture)
                except (guest.GuestError, RuntimeError, OSError) as e:
                    r = {"load": 0.0, "seconds": 0.0,
                         "problems": {rid: [f"run failed: {e}"] for rid in rows}}
                runs[name].append(r)
                bad.update(r["problems"])
                problems += problem_lines(r["problems"], rows, f"on {name} (round {k + 1})")
                if fixture is not None and "smallfiles-total" in r:
                    print("    small files: " + ", ".join(
                        f"{p} {r[f'smallfiles-{p}']['seconds']:.2f}"
                        for p in (*sf.PHASES, "total")) + " s", file=sys.stderr, flush=True)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    for name, rs in runs.items():
        results[name] = _median_run(rs)
    out = sys.stderr if args.json == "-" else sys.stdout
    rate_rows = [(rid, title) for rid, title, part in ROWS
                 if rid in rows and part in ("fio", "meta")]
    time_rows = [(rid, title) for rid, title, part in ROWS if rid in rows and part == "smallfiles"]
    if rate_rows:
        _print_table(*rate_table(rate_rows, results, names, bad), out)
    if time_rows:
        if rate_rows:
            print(file=out)
        _print_table(*time_table(time_rows, results, names, bad), out)
    elapsed = time.monotonic() - t_start
    what = []
    if "fio" in chosen_parts:
        what.append(f"fio {runtime:g} s per job (direct=1, libaio, end_fsync)")
    if "meta" in chosen_parts:
        what.append(f"metadata {meta_seconds:g} s per loop")
    if fixture is not None:
        what.append(f"small files: {fixture.files} files in {fixture.dirs} directories "
                    f"({fixture.tarball_bytes / 2**20:.1f} MiB tarball), per phase the median "
                    "and total the median of the runs' totals")
    print("; ".join(what) + f"; {args.guest_repeat} run(s) per back-end, order rotated each "
          f"round, the median shown (± half the spread)"
          + ("; p50/p99 = fio completion latency" if "fio" in chosen_parts else "")
          + f"; total {elapsed:.0f} s; load average before {load_before[0]:.2f} "
          f"({os.cpu_count()} CPUs, guests under TCG)", file=out)
    for p in problems:
        print(f"PROBLEM: {p}", file=out)
    if args.json:
        doc = {"guest": True, "frontend": "qemu72", "load_before": load_before,
               "elapsed_s": round(elapsed, 1), "columns": names, "rows": rows, "orders": orders,
               "backends": {p.name: p.command("{socket}", "{dir}") for p in chosen},
               "results": results, "runs": runs, "problems": problems}
        if fixture is not None:
            doc["smallfiles"] = {"files": fixture.files, "dirs": fixture.dirs, "seed": sf.SEED,
                                 "tarball_bytes": fixture.tarball_bytes,
                                 "tree_md5": fixture.tree_sum, "rewrite_md5": fixture.rewrite_sum}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 1 if problems else 0
