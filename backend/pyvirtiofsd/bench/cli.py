"""``pyvirtiofsd-bench``: run vhost-user-fs back-ends side by side and print one table.

Every back-end is started, connected to by our front-end (no VM) and given FUSE_INIT as a
Linux guest would; then each row runs ``--repeat`` times, interleaved across back-ends.
``--guest`` runs the guest benchmark instead (:mod:`pyvirtiofsd.bench.guestbench`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time

from .._testkit import lib
from . import peers as peers_mod
from .report import HOST, LEGEND, aggregate, ours_vs_best_peer, ratios, table
from .workloads import (
    WRITE_TAG, Driver, Fixture, NativeDriver, Row, check_file, default_rows,
)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    value = int(t[:-1] if t[-1:] in units else t) * mult
    if value < 1 << 20 or value % (1 << 20):
        raise argparse.ArgumentTypeError("a whole number of MiB, at least 1M")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyvirtiofsd-bench",
        description="Benchmark vhost-user-fs back-ends side by side through our front-end "
                    "(no VM), or from inside QEMU guests with --guest.")
    p.add_argument("-b", "--backend", action="append", metavar="NAME[=COMMAND]",
                   help="a back-end: ours, c-virtiofsd, rust-virtiofsd, NAME@THREADS (one of "
                        "those with --thread-pool-size=THREADS), or NAME=COMMAND with {socket} "
                        "and {dir} (repeatable; default: the three built-in ones at their "
                        "defaults; ratios are to the first)")
    p.add_argument("--ours-args", default="", metavar="ARGS",
                   help="extra arguments for our daemon, e.g. '--thread-pool-size 4'")
    p.add_argument("--rows", metavar="IDS", help="comma-separated row ids or prefixes "
                   "(default all; --list-rows shows them)")
    p.add_argument("--list-rows", action="store_true", help="print the row ids and exit")
    p.add_argument("--duration", type=float, default=0.5, metavar="S",
                   help="seconds per run of one row on one back-end (default 0.5)")
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="runs per row and back-end; the median is reported (default 3)")
    p.add_argument("--file-size", type=_size, default=128 << 20, metavar="SIZE",
                   help="size of the files the data rows read and write (default 128M)")
    p.add_argument("--dir-entries", type=int, default=10000, metavar="N",
                   help="entries of the READDIRPLUS directory (default 10000)")
    p.add_argument("--verify-every", type=int, default=16, metavar="N",
                   help="compare the whole data of every N-th read (every read's 4 KiB block "
                        "tags are always checked; 1: all data of every read)")
    p.add_argument("--no-host", action="store_true", help="leave out the host-native column")
    p.add_argument("--dir", metavar="DIR", help="work directory (default: a new one in /var/tmp, "
                   "removed afterwards); the fixture is reused when it is already there")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout, "
                   "and the table goes to stderr)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 0.05 s runs, 1 repeat, 8M files, 300 entries")
    p.add_argument("--stall", type=float, default=20.0, metavar="S",
                   help="give up on a back-end that answers nothing for this long")
    p.add_argument("--guest", action="store_true",
                   help="the guest benchmark: fio and a metadata loop inside QEMU guests, one "
                        "per back-end (see pyvirtiofsd.bench.guestbench)")
    p.add_argument("--guest-repeat", type=int, default=1, metavar="N",
                   help="with --guest: guests per back-end, interleaved; the median run is "
                        "shown (default 1: ~30 s per back-end)")
    return p


def select_rows(spec: str | None) -> list[Row]:
    rows = default_rows()
    if not spec:
        return rows
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    chosen = [r for r in rows if any(r.id == w or r.id.startswith(w) for w in wanted)]
    if not chosen:
        raise SystemExit(f"pyvirtiofsd-bench: no row matches {spec!r}; rows: "
                         + ", ".join(r.id for r in rows))
    return chosen


def machine() -> dict:
    info = {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.guest:
        from .guestbench import main as guest_main
        return guest_main(args)
    if args.list_rows:
        for r in default_rows():
            print(f"{r.id:22} {r.title}")
        return 0
    if args.quick:
        args.duration, args.repeat = min(args.duration, 0.05), 1
        args.file_size, args.dir_entries = 8 << 20, 300
    rows = select_rows(args.rows)
    extra = shlex.split(args.ours_args)
    specs = args.backend or ["ours", "c-virtiofsd", "rust-virtiofsd"]
    try:
        chosen = [peers_mod.parse_peer(s) for s in specs]
    except ValueError as e:
        print(f"pyvirtiofsd-bench: {e}", file=sys.stderr)
        return 2
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
    out = sys.stderr if args.json == "-" else sys.stdout

    workdir = args.dir or tempfile.mkdtemp(prefix="pyvirtiofsd-bench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    fixture = Fixture(os.path.join(workdir, "share"), args.file_size, args.dir_entries)
    t_start = time.monotonic()
    load_before = os.getloadavg()
    sessions, drivers, native = [], {}, None
    results: dict[str, dict] = {}
    raw: dict[str, dict[str, list]] = {}
    try:
        fixture.prepare(names)
        dax_rows = [r for r in rows if r.kind == "dax"]
        if dax_rows and "ours" in names:
            dax_peer = peers_mod.ours(*extra, "--cache-size", "1G", name="ours-dax", dax=True)
        else:
            dax_peer, rows = None, [r for r in rows if r.kind != "dax"]
        for p in chosen + ([dax_peer] if dax_peer else []):
            s = peers_mod.Session(p, fixture.directory, workdir).start()
            sessions.append(s)
            drivers[p.name] = Driver(s, fixture, args.verify_every, args.stall)
        if not args.no_host and any(r.native for r in rows):
            native = NativeDriver(fixture, args.verify_every)
            native.run(Row("warm", "", lib.PVFS_BENCH_READ, 1, 1 << 20), 0.2)  # page cache warm
        for row in rows:
            runs: dict[str, list] = {}
            for k in range(args.repeat):
                # The order rotates each round: a back-end run right after another's writes
                # pays for their writeback (10-50% on the write rows, same code either way).
                order = [dax_peer.name] if row.only else names[k % len(names):] + names[:k % len(names)]
                for name in order:
                    runs.setdefault("ours" if row.only else name, []).append(
                        drivers[name].run(row, args.duration))
                if native is not None and row.native:
                    runs.setdefault(HOST, []).append(native.run(row, args.duration))
            raw[row.id] = runs
            results[row.id] = {n: aggregate(r) for n, r in runs.items()}
            print(f"  {row.id}: " + ", ".join(f"{n} {c.ops_per_s:,.0f}/s"
                                               for n, c in results[row.id].items()),
                  file=sys.stderr, flush=True)
        rss = {s.peer.name: peers_mod.memory_kib(s.pid) for s in sessions}
    finally:
        for d in drivers.values():
            d.close()
        for s in sessions:
            s.close()
        if native is not None:
            native.close()
    # Data written through each back-end must be the pattern everywhere.
    write_check = {}
    if any(r.kind == lib.PVFS_BENCH_WRITE for r in rows):
        for name, fname in fixture.write_files.items():
            write_check[name] = check_file(fixture.path(fname), WRITE_TAG)
    elapsed = time.monotonic() - t_start
    load_after = os.getloadavg()
    if not args.keep and not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)

    print(table(rows, results, names, native is not None), file=out)
    print(LEGEND, file=out)
    print(f"{len(rows)} rows x {len(names)} back-ends x {args.repeat} runs of {args.duration:g} s; "
          f"total {elapsed:.0f} s; load average before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f} ({os.cpu_count()} CPUs)", file=out)
    print("start to listening, idle memory after INIT (PSS without guest RAM; RSS), memory "
          "after the run: " + "; ".join(
              f"{s.peer.name} {s.start_seconds * 1000:.0f} ms, {s.idle_memory['pss_private'] / 1024:.1f}"
              f"/{s.idle_memory['rss'] / 1024:.1f} MiB, {rss[s.peer.name]['pss_private'] / 1024:.1f}"
              f"/{rss[s.peer.name]['rss'] / 1024:.1f} MiB" for s in sessions), file=out)
    problems = []
    for row in rows:
        for n, c in results[row.id].items():
            if c.errors or c.bad_data or c.bad_replies or c.ops == 0:
                problems.append(f"{row.id} on {n}: {c.ops} ops, {c.errors} errors ({c.first_error}), "
                                f"{c.bad_data} bad data, {c.bad_replies} bad replies")
    for name, bad in write_check.items():
        if bad:
            problems.append(f"written file of {name}: {bad} blocks do not hold the written data")
    for p in problems:
        print(f"PROBLEM: {p}", file=out)

    if args.json:
        doc = {
            "machine": machine(), "load_before": load_before, "load_after": load_after,
            "elapsed_s": round(elapsed, 1),
            "config": {"backends": {p.name: p.command("{socket}", "{dir}") for p in chosen},
                       "duration_s": args.duration, "repeat": args.repeat,
                       "file_size": args.file_size, "dir_entries": args.dir_entries,
                       "verify_every": args.verify_every},
            "columns": names + ([HOST] if native is not None else []),
            "rows": [{"id": r.id, "title": r.title, "qd": r.qd, "block": r.block,
                      "data": r.data, "only": r.only,
                      "results": {n: c.as_dict() for n, c in results[r.id].items()},
                      "ratio_to_first": ratios(results[r.id], names),
                      "ours_vs_best_peer": ours_vs_best_peer(results[r.id], names)}
                     for r in rows],
            "memory_kib_after": rss,
            "idle_memory_kib": {s.peer.name: s.idle_memory for s in sessions},
            "start_to_listening_ms": {s.peer.name: round(s.start_seconds * 1000, 1) for s in sessions},
            "write_check_bad_blocks": write_check, "problems": problems,
        }
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
