"""Turn cell runs into the table: medians, latency percentiles, run-to-run spread, ratios.

One cell = one row on one back-end, run ``repeat`` times (interleaved with the other
back-ends so that a burst of load on the shared machine hits them all alike).  Its ops/s
is the median run; p50/p99 come from the latencies of all runs pooled; ``spread`` is
(max - min) / median of the runs' ops/s, the run-to-run variation.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .workloads import CellRun, Row

HOST = "host"


@dataclass
class Cell:
    ops_per_s: float
    mb_per_s: float
    p50_us: float
    p99_us: float
    spread: float
    runs: list[float]
    ops: int
    errors: int
    first_error: str
    verified: int
    bad_data: int
    bad_replies: int
    entries_per_s: float
    load: float
    cpu_us_per_op: float

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i] / 1000.0


def aggregate(runs: list[CellRun]) -> Cell:
    rates = [r.ops_per_s for r in runs]
    med = statistics.median(rates) if rates else 0.0
    lat = sorted(x for r in runs for x in r.latencies_ns)
    return Cell(
        ops_per_s=med,
        mb_per_s=statistics.median(r.mb_per_s for r in runs) if runs else 0.0,
        p50_us=_percentile(lat, 0.50),
        p99_us=_percentile(lat, 0.99),
        spread=(max(rates) - min(rates)) / med if med and len(rates) > 1 else 0.0,
        runs=[round(r, 1) for r in rates],
        ops=sum(r.ops for r in runs),
        errors=sum(r.errors for r in runs),
        first_error=next((r.first_error for r in runs if r.first_error), ""),
        verified=sum(r.verified for r in runs),
        bad_data=sum(r.bad_data for r in runs),
        bad_replies=sum(r.bad_replies for r in runs),
        entries_per_s=(statistics.median(r.entries / r.elapsed for r in runs if r.elapsed)
                       if any(r.entries for r in runs) else 0.0),
        load=max(r.load for r in runs) if runs else 0.0,
        cpu_us_per_op=(sum(r.cpu_ns for r in runs) / sum(r.ops for r in runs) / 1000
                       if any(r.ops for r in runs) else 0.0),
    )


def _num(v: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div * 10:
            return f"{v / div:.0f}{unit}"
        if v >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _us(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:.0f}ms"
    if v >= 1000:
        return f"{v / 1000:.1f}ms"
    return f"{v:.0f}µs" if v >= 10 else f"{v:.1f}µs"


def cell_text(c: Cell | None, row: Row, ratio: float | None = None) -> str:
    if c is None:
        return "-"
    if c.ops == 0 and c.errors:
        return f"ERR {c.first_error}"
    parts = [f"{_num(c.ops_per_s)}/s"]
    if row.data:
        parts.append(f"{_num(c.mb_per_s * 1e6)}B/s")
    parts.append(f"{_us(c.p50_us)}/{_us(c.p99_us)}")
    if c.spread:
        parts.append(f"±{c.spread * 50:.0f}%")
    if c.cpu_us_per_op:
        parts.append(f"cpu {_us(c.cpu_us_per_op)}")
    if ratio is not None:
        parts.append(f"({ratio:.2f}x)")
    if c.errors or c.bad_data or c.bad_replies:
        parts.append(f"!{c.errors}err/{c.bad_data}bad")
    return " ".join(parts)


def ratios(cells: dict[str, Cell], names: list[str]) -> dict[str, float]:
    """ops/s of each back-end divided by the first back-end's."""
    first = cells.get(names[0]) if names else None
    if first is None or not first.ops_per_s:
        return {}
    return {n: cells[n].ops_per_s / first.ops_per_s for n in names[1:] if n in cells}


def ours_vs_best_peer(cells: dict[str, Cell], names: list[str], ours: str = "ours") -> float | None:
    """ops/s of ``ours`` divided by the fastest of the other back-ends in ``names``."""
    if ours not in cells:
        return None
    peers = [cells[n].ops_per_s for n in names if n != ours and n in cells]
    if not peers or not max(peers):
        return None
    return cells[ours].ops_per_s / max(peers)


FAILED = "FAILED (see PROBLEM)"


def table(rows: list[Row], results: dict[str, dict[str, Cell]], names: list[str],
          host: bool, failures: dict[str, dict[str, str]] | None = None,
          ours: str = "ours") -> str:
    """The text table: a column per back-end (ratio to the first), the host-native column,
    and ours ÷ the best peer (``ours``: the column that is ours).  A back-end that failed a
    row (``failures[row id][name]``) shows FAILED there, and that row has no ours/best
    peer figure (it would compare with a back-end that did not finish)."""
    failures = failures or {}
    lines = []
    head = ["row"] + [n + (" (ratio to " + names[0] + ")" if i == 1 else "") for i, n in enumerate(names)]
    if host:
        head.append("host-native (C pread/pwrite)")
    head.append(f"{ours}/best peer")
    body = []
    for row in rows:
        cells = results.get(row.id, {})
        failed = failures.get(row.id, {})
        r = ratios(cells, names)
        line = [row.title]
        for n in names:
            line.append(FAILED if n in failed else cell_text(cells.get(n), row, r.get(n)))
        if host:
            line.append(cell_text(cells.get(HOST), row) if row.native else "")
        v = None if any(n in failed for n in names) else ours_vs_best_peer(cells, names, ours)
        line.append("" if v is None else f"{v:.2f}x")
        body.append(line)
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    fmt = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(x) for x in body)
    return "\n".join(lines)


LEGEND = ("cell: ops/s, bytes/s (data rows), p50/p99 latency, ±half the run-to-run spread of "
          "ops/s, cpu = CPU time the back-end used per op (all its threads; independent of "
          "machine load), (ops/s ratio to the first back-end); 'ours/best peer' = ours ÷ the faster of "
          "the other back-ends (≥ 1.00x: ours is at least as fast).")
