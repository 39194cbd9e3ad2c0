"""``pyvirtiofsd-bench``: run vhost-user-fs back-ends side by side and print the tables.

Every back-end is started, connected to by our front-end (no VM) and given FUSE_INIT as a
Linux guest would; then each row runs ``--repeat`` times, interleaved across back-ends.

Two configurations by default (issue 11): the back-ends at their defaults, and every
built-in back-end at the same --thread-pool-size (``--equal-threads``, by default our
daemon's default): the peers' default is no pool at all, so the first table compares
designs as shipped and the second compares them with the same number of workers.  Each
table has ours ÷ the faster peer of that configuration.

A back-end that dies (or stops answering) in a row is a PROBLEM for that row, with the
end of its log; the others go on, it is started again for the next row, and the command
exits 1.  ``--guest`` runs the guest benchmark instead (:mod:`pyvirtiofsd.bench.guestbench`).
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
import textwrap
import time
from dataclasses import dataclass

from .._testkit import lib
from . import peers as peers_mod
from .report import HOST, LEGEND, aggregate, ours_vs_best_peer, ratios, table
from .workloads import (
    WRITE_TAG, BackendFailed, CellRun, Driver, Fixture, NativeDriver, Row, check_file,
    default_rows,
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
                        "and {dir} (repeatable; default: the three built-in ones; ratios are "
                        "to the first)")
    p.add_argument("--equal-threads", type=int, metavar="N",
                   help="also run each built-in back-end given by plain NAME at "
                        "--thread-pool-size=N (NAME@N; one already at N is not run twice) and "
                        "show them in a second table (default N: our daemon's default, "
                        f"{_ours_default_threads()})")
    p.add_argument("--no-equal-threads", action="store_true",
                   help="only the back-ends as given (one table)")
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
    p.add_argument("--memory-per-inode", type=int, default=0, metavar="N",
                   help="after the rows, start each back-end afresh, LOOKUP N distinct files "
                        "(no FORGET) and report its memory growth per inode (e.g. 100000; "
                        "default 0: not measured; --rows none: only this)")
    p.add_argument("--guest", action="store_true",
                   help="the guest benchmark: fio and a metadata loop inside QEMU guests, one "
                        "per back-end (see pyvirtiofsd.bench.guestbench)")
    p.add_argument("--guest-repeat", type=int, default=1, metavar="N",
                   help="with --guest: guests per back-end, interleaved; the median run is "
                        "shown (default 1: ~30 s per back-end)")
    return p


def _ours_default_threads() -> str:
    try:
        return str(peers_mod.ours_default_threads())
    except Exception:  # noqa: BLE001 - only for the help text
        return "its --thread-pool-size default"


@dataclass
class Config:
    """One table: a set of back-ends compared with each other."""

    title: str
    columns: list[str]

    @property
    def ours(self) -> str:
        """The column that is our daemon (for ours ÷ best peer)."""
        return next((n for n in self.columns if n == "ours" or n.startswith("ours@")), "ours")


def _pools(peers: list[peers_mod.Peer]) -> str:
    known = [(p.name, peers_mod.pool_size(p)) for p in peers]
    known = [f"{n} {t}" for n, t in known if t is not None]
    return (" (thread-pool size: " + ", ".join(known) + "; 0: no pool, each queue's own thread "
            "serves its requests)") if known else ""


def equal_threads_config(chosen: list[peers_mod.Peer], n: int, ours_args: list[str]
                         ) -> tuple[Config, list[peers_mod.Peer]] | None:
    """The equal-thread-pool table: each built-in back-end given by plain NAME at
    --thread-pool-size=n (itself when that is its default).  Returns the table and the
    back-ends it adds, or None when it would show nothing the first table does not."""
    given = {p.name for p in chosen}
    columns, added = [], []
    for p in chosen:
        base, at, _ = p.name.partition("@")
        if at or base not in peers_mod.BUILTIN:
            continue
        if peers_mod.pool_size(p) == n:
            columns.append(p.name)
            continue
        q = peers_mod.parse_peer(f"{base}@{n}", ours_args=ours_args)
        columns.append(q.name)
        if q.name not in given:
            added.append(q)
    if len(columns) < 2 or set(columns) <= given:
        return None
    same = [c for c in columns if "@" not in c]
    note = f"; {', '.join(same)} at {n} by default: the same runs as above" if same else ""
    return Config(f"Equal thread pools: --thread-pool-size={n} for every back-end{note}",
                  columns), added


def settle(row: Row) -> None:
    """After a run that left dirty pages: write them back now, outside every timed run.
    Otherwise the kernel does it during the next back-end's run, which then pays for them
    (the rand write 4K QD1 row was 0.78x or 1.09x for the same build, by who ran before)."""
    if row.dirties:
        os.sync()


class Backends:
    """The back-ends' sessions by name.  One that failed a run is stopped and marked down;
    :meth:`ensure` starts it again (once per row: a back-end that cannot start costs one
    try per row)."""

    def __init__(self, fixture: Fixture, workdir: str, verify_every: int, stall: float):
        self.fixture, self.workdir = fixture, workdir
        self.verify_every, self.stall = verify_every, stall
        self.peers: dict[str, peers_mod.Peer] = {}
        self.sessions: dict[str, peers_mod.Session] = {}
        self.drivers: dict[str, Driver] = {}
        self.first: dict[str, peers_mod.Session] = {}   # start time and idle memory
        self.down: dict[str, str] = {}                  # name -> why it is not running
        self.restarts: dict[str, int] = {}

    def add(self, peer: peers_mod.Peer) -> None:
        self.peers[peer.name] = peer
        self.down[peer.name] = "not started"

    def ensure(self, name: str) -> str | None:
        """Start ``name`` unless it is running.  None, or why it could not be started."""
        if name not in self.down:
            return None
        if name in self.first:
            self.restarts[name] = self.restarts.get(name, 0) + 1
        s = peers_mod.Session(self.peers[name], self.fixture.directory, self.workdir)
        try:
            s.start()
        except Exception as e:  # noqa: BLE001 - reported for the row
            s.broken = True
            s.close()       # it may be running (listening, then failing FUSE_INIT)
            first = name not in self.first
            self.down[name] = f"could not be {'started' if first else 'restarted'}: {e}"
            return self.down[name]
        del self.down[name]
        self.sessions[name] = s
        self.first.setdefault(name, s)
        self.drivers[name] = Driver(s, self.fixture, self.verify_every, self.stall)
        return None

    def run(self, name: str, row: Row, duration: float) -> CellRun:
        try:
            return self.drivers[name].run(row, duration)
        finally:
            settle(row)

    def fail(self, name: str, err: Exception) -> str:
        """A run on ``name`` failed: stop it, and say what happened (with its log's end)."""
        s = self.sessions.pop(name)
        self.drivers.pop(name)
        s.broken = True
        what = str(err) if isinstance(err, BackendFailed) else f"{type(err).__name__}: {err}"
        status = s.status()
        tail = s.log_tail(10).rstrip()
        s.close()
        why = f"{what} ({status}); " + (
            "the end of its log:\n" + textwrap.indent(tail, "      | ") if tail else "its log is empty")
        self.down[name] = why
        return why

    def close(self) -> None:
        for d in self.drivers.values():
            d.close()
        for s in self.sessions.values():
            s.close()
        self.drivers.clear()
        self.sessions.clear()


def select_rows(spec: str | None) -> list[Row]:
    rows = default_rows()
    if not spec:
        return rows
    if spec == "none":      # e.g. only --memory-per-inode
        return []
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
        chosen = [peers_mod.parse_peer(s, ours_args=extra) for s in specs]
    except ValueError as e:
        print(f"pyvirtiofsd-bench: {e}", file=sys.stderr)
        return 2
    names = [p.name for p in chosen]
    if len(set(names)) != len(names):
        print("pyvirtiofsd-bench: back-end names must differ", file=sys.stderr)
        return 2
    configs = [Config("Back-ends at their defaults" + _pools(chosen), names)]
    if not args.no_equal_threads:
        n = peers_mod.ours_default_threads() if args.equal_threads is None else args.equal_threads
        equal = equal_threads_config(chosen, n, extra)
        if equal is not None:
            configs.append(equal[0])
            chosen += equal[1]
    all_names = [p.name for p in chosen]
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
    backends = Backends(fixture, workdir, args.verify_every, args.stall)
    native = None
    results: dict[str, dict] = {}
    failures: dict[str, dict[str, str]] = {}
    try:
        fixture.prepare(all_names)
        dax_rows = [r for r in rows if r.kind == "dax"]
        if dax_rows and "ours" in names:
            dax_peer = peers_mod.ours(*extra, "--cache-size", "1G", name="ours-dax", dax=True)
        else:
            dax_peer, rows = None, [r for r in rows if r.kind != "dax"]
        for p in chosen + ([dax_peer] if dax_peer else []):
            backends.add(p)
            backends.ensure(p.name)
        if not args.no_host and any(r.native for r in rows):
            native = NativeDriver(fixture, args.verify_every)
            native.run(Row("warm", "", lib.PVFS_BENCH_READ, 1, 1 << 20), 0.2)  # page cache warm
        for row in rows:
            runs: dict[str, list] = {}
            failed = failures.setdefault(row.id, {})
            # A back-end that failed before is started again for each new row.
            for name in [dax_peer.name] if row.only else all_names:
                why = backends.ensure(name)
                if why:
                    failed["ours" if row.only else name] = why
            for k in range(args.repeat):
                # The order rotates each round: a back-end run right after another's writes
                # pays for their writeback (10-50% on the write rows, same code either way).
                order = [dax_peer.name] if row.only else all_names[k % len(all_names):] + all_names[:k % len(all_names)]
                for name in order:
                    column = "ours" if row.only else name
                    if column in failed:     # it failed this row already: not again
                        continue
                    try:
                        runs.setdefault(column, []).append(backends.run(name, row, args.duration))
                    except Exception as e:  # noqa: BLE001 - reported as a PROBLEM, the bench goes on
                        failed[column] = (f"run {k + 1} of {args.repeat} failed: "
                                          + backends.fail(name, e))
                        runs.pop(column, None)
                if native is not None and row.native:
                    try:
                        runs.setdefault(HOST, []).append(native.run(row, args.duration))
                    finally:
                        settle(row)
            results[row.id] = {n: aggregate(r) for n, r in runs.items()}
            print(f"  {row.id}: " + ", ".join(
                [f"{n} {c.ops_per_s:,.0f}/s" for n, c in results[row.id].items()]
                + [f"{n} FAILED" for n in failed]), file=sys.stderr, flush=True)
        rss = {name: peers_mod.memory_kib(s.pid) for name, s in backends.sessions.items()}
    finally:
        backends.close()
        if native is not None:
            native.close()
    per_inode: dict[str, dict] = {}
    if args.memory_per_inode > 0:
        from . import inodes

        directory = inodes.prepare(fixture.directory, args.memory_per_inode)
        for name in names:
            try:
                per_inode[name] = inodes.measure(backends.peers[name], fixture.directory,
                                                 workdir, directory, args.memory_per_inode)
            except Exception as e:  # noqa: BLE001 - reported as a PROBLEM
                per_inode[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  memory-per-inode: {name} done", file=sys.stderr, flush=True)
    # Data written through each back-end must be the pattern everywhere.
    write_check = {}
    if any(r.kind == lib.PVFS_BENCH_WRITE for r in rows):
        for name, fname in fixture.write_files.items():
            write_check[name] = check_file(fixture.path(fname), WRITE_TAG)
    elapsed = time.monotonic() - t_start
    load_after = os.getloadavg()
    if not args.keep and not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)

    host = native is not None
    for i, cfg in enumerate(configs):
        print(("\n" if i else "") + cfg.title + ":", file=out)
        # The host column and the rows of one back-end only (DAX) in the first table only.
        shown = rows if i == 0 else [r for r in rows if not r.only]
        print(table(shown, results, cfg.columns, host and i == 0, failures, cfg.ours), file=out)
    print(LEGEND, file=out)
    if len(configs) > 1:
        print("Each back-end runs once per row and repeat; a column in both tables is the same runs.",
              file=out)
    print(f"{len(rows)} rows x {len(all_names)} back-ends x {args.repeat} runs of {args.duration:g} s; "
          f"total {elapsed:.0f} s; load average before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f} ({os.cpu_count()} CPUs)", file=out)
    mib = lambda m: f"{m['pss_private'] / 1024:.1f}/{m['rss'] / 1024:.1f} MiB"  # noqa: E731
    print("start to listening, idle memory after INIT (PSS without guest RAM; RSS), memory "
          "after the run: " + "; ".join(
              f"{name} {s.start_seconds * 1000:.0f} ms, {mib(s.idle_memory)}, "
              + (mib(rss[name]) if name in rss else "not running")
              for name, s in backends.first.items()), file=out)
    if per_inode:
        print(inodes.line(per_inode, args.memory_per_inode), file=out)
    problems = [f"memory-per-inode on {n}: {r['error']}" for n, r in per_inode.items()
                if "error" in r]
    for row in rows:
        for n, why in failures.get(row.id, {}).items():
            problems.append(f"{row.id} on {n}: {why}")
        for n, c in results[row.id].items():
            if c.errors or c.bad_data or c.bad_replies or c.ops == 0:
                problems.append(f"{row.id} on {n}: {c.ops} ops, {c.errors} errors ({c.first_error}), "
                                f"{c.bad_data} bad data, {c.bad_replies} bad replies")
    for name, bad in write_check.items():
        if bad:
            problems.append(f"written file of {name}: {bad} blocks do not hold the written data")
    for p in problems:
        print(f"PROBLEM: {p}", file=out)

    def vs_best(row: Row, cfg: Config) -> float | None:
        """ours ÷ the best peer, unless a back-end of the table failed the row."""
        if any(n in failures.get(row.id, {}) for n in cfg.columns):
            return None
        return ours_vs_best_peer(results[row.id], cfg.columns, cfg.ours)

    if args.json:
        doc = {
            "machine": machine(), "load_before": load_before, "load_after": load_after,
            "elapsed_s": round(elapsed, 1),
            "config": {"backends": {p.name: p.command("{socket}", "{dir}") for p in chosen},
                       "duration_s": args.duration, "repeat": args.repeat,
                       "file_size": args.file_size, "dir_entries": args.dir_entries,
                       "verify_every": args.verify_every},
            "columns": all_names + ([HOST] if host else []),
            "configurations": [
                {"title": c.title, "columns": c.columns, "ours": c.ours,
                 "ratio_to_first": {r.id: ratios(results[r.id], c.columns) for r in rows},
                 "ours_vs_best_peer": {r.id: vs_best(r, c) for r in rows}}
                for c in configs],
            "rows": [{"id": r.id, "title": r.title, "qd": r.qd, "block": r.block,
                      "data": r.data, "only": r.only,
                      "results": {n: c.as_dict() for n, c in results[r.id].items()},
                      "failed": failures.get(r.id, {}),
                      "ratio_to_first": ratios(results[r.id], names),
                      "ours_vs_best_peer": vs_best(r, configs[0])}
                     for r in rows],
            "memory_kib_after": rss,
            "idle_memory_kib": {name: s.idle_memory for name, s in backends.first.items()},
            "start_to_listening_ms": {name: round(s.start_seconds * 1000, 1)
                                      for name, s in backends.first.items()},
            "memory_per_inode": per_inode,
            "restarts": backends.restarts,
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
