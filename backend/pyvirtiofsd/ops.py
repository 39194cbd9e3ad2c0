"""``pyvirtiofsd-ops FILE``: summarize an ops log written by ``pyvirtiofsd --ops-log FILE``.

Prints one row per opcode -- requests, errors, bytes moved, p50/p99/max latency in µs --
busiest first, with a total row.  ``--plot out.png`` also draws every request's latency
over time, one colour per opcode (needs matplotlib: ``pip install 'pyvirtiofsd[plot]'``).
``--json`` prints the summary as JSON instead of a table.

Percentiles here are exact (nearest rank over every record), unlike the daemon's live
statistics, which bucket latencies to keep memory bounded.  Lines that are not ops-log
records (a truncated last line, another program's output) are skipped and counted.
Also runnable as ``python -m pyvirtiofsd.ops``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Iterable

_KEYS = ("time", "opcode", "errno", "us")


@dataclass
class Record:
    time: float
    opcode: str
    errno: int
    us: int
    bytes: int


@dataclass
class OpSummary:
    opcode: str
    count: int = 0
    errors: int = 0
    bytes: int = 0
    latencies: list[int] = field(default_factory=list, repr=False)

    def percentile(self, p: float) -> int:
        """Nearest-rank percentile of the latencies (0 when there are none)."""
        if not self.latencies:
            return 0
        ordered = sorted(self.latencies)
        return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]

    def as_dict(self) -> dict:
        return {"count": self.count, "errors": self.errors, "bytes": self.bytes,
                "p50_us": self.percentile(50), "p99_us": self.percentile(99),
                "max_us": max(self.latencies, default=0)}


@dataclass
class Summary:
    ops: dict[str, OpSummary]
    records: list[Record] = field(repr=False)
    skipped: int = 0

    @property
    def total(self) -> OpSummary:
        t = OpSummary("total")
        for s in self.ops.values():
            t.count += s.count
            t.errors += s.errors
            t.bytes += s.bytes
            t.latencies.extend(s.latencies)
        return t

    @property
    def seconds(self) -> float:
        if not self.records:
            return 0.0
        times = [r.time for r in self.records]
        return max(times) - min(times)


def parse_line(line: str) -> Record | None:
    """One ops-log line as a :class:`Record`, or ``None`` if it is not one."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if not isinstance(d, dict) or any(k not in d for k in _KEYS):
        return None
    try:
        return Record(float(d["time"]), str(d["opcode"]), int(d["errno"]), int(d["us"]),
                      int(d.get("bytes", 0)))
    except (TypeError, ValueError):
        return None


def read_records(lines: Iterable[str]) -> tuple[list[Record], int]:
    """(records, number of non-blank lines that were not records)."""
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        rec = parse_line(line)
        if rec is None:
            skipped += 1
        else:
            records.append(rec)
    return records, skipped


def summarize(records: list[Record], skipped: int = 0) -> Summary:
    ops: dict[str, OpSummary] = {}
    for r in records:
        s = ops.get(r.opcode)
        if s is None:
            s = ops[r.opcode] = OpSummary(r.opcode)
        s.count += 1
        s.errors += r.errno != 0
        s.bytes += r.bytes
        s.latencies.append(r.us)
    return Summary(ops, records, skipped)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(summary: Summary) -> str:
    """The summary as a fixed-width text table, busiest opcode first."""
    head = ("opcode", "count", "errors", "bytes", "p50 µs", "p99 µs", "max µs")
    rows = []
    for s in [*sorted(summary.ops.values(), key=lambda s: (-s.count, s.opcode)), summary.total]:
        d = s.as_dict()
        rows.append((s.opcode, str(d["count"]), str(d["errors"]), human_bytes(d["bytes"]),
                     str(d["p50_us"]), str(d["p99_us"]), str(d["max_us"])))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    lines = [fmt(head), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])]
    footer = f"{summary.total.count} requests over {summary.seconds:.3f} s"
    if summary.skipped:
        footer += f"; {summary.skipped} lines skipped (not ops-log records)"
    return "\n".join(lines + [footer])


def plot(summary: Summary, path: str) -> None:
    """Draw latency over time per opcode into ``path`` (PNG, SVG or PDF by its suffix)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("pyvirtiofsd-ops: --plot needs matplotlib: "
                         "pip install 'pyvirtiofsd[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min((r.time for r in summary.records), default=0.0)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    by_op: dict[str, tuple[list[float], list[int]]] = {}
    for r in summary.records:
        xs, ys = by_op.setdefault(r.opcode, ([], []))
        xs.append(r.time - start)
        ys.append(max(r.us, 1))              # log scale: 0 µs drawn at 1 µs
    markers = "o^sDv<>pXh*"
    order = sorted(by_op, key=lambda op: -len(by_op[op][0]))
    for i, op in enumerate(order):
        xs, ys = by_op[op]
        s = summary.ops[op]
        ax.scatter(xs, ys, s=10, alpha=0.6, marker=markers[i % len(markers)],
                   color=plt.cm.tab10(i % 10) if i < 10 else plt.cm.tab20b(i % 20),
                   label=f"{op} (n={s.count}, p99 {s.percentile(99)} µs)")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("latency (µs, log scale)")
    ax.set_title(f"FUSE request latency by opcode: {summary.total.count} requests")
    ax.grid(True, which="both", alpha=0.3)
    if order:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_file(path: str) -> tuple[list[Record], int]:
    """:func:`read_records` of a file, or of standard input for ``-``."""
    if path == "-":
        return read_records(sys.stdin)
    with open(path, encoding="utf-8", errors="replace") as f:
        return read_records(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pyvirtiofsd-ops",
                                description="Summarize a pyvirtiofsd ops log (--ops-log FILE).")
    p.add_argument("file", help="the ops log ('-' for standard input)")
    p.add_argument("--plot", metavar="OUT.png", help="also draw latency over time per opcode")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    try:
        records, skipped = read_file(args.file)
    except OSError as e:
        print(f"pyvirtiofsd-ops: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return 1
    summary = summarize(records, skipped)
    if args.json:
        out = {"requests": summary.total.count, "seconds": round(summary.seconds, 6),
               "skipped_lines": skipped, "total": summary.total.as_dict(),
               "ops": {op: s.as_dict() for op, s in sorted(summary.ops.items())}}
        print(json.dumps(out, indent=2))
    else:
        print(table(summary))
    if args.plot:
        plot(summary, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if records or not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
