"""pyvirtiofsd-ops: the summary table, JSON, bad input, and the latency plot."""
import json
import os
import subprocess
import sys

import pytest

from pyvirtiofsd import ops

SCRIPT = os.path.join(os.path.dirname(sys.executable), "pyvirtiofsd-ops")


def write_log(path, extra_lines=()):
    """READ: 100 requests of 1..100 µs, 4096 bytes each, every 10th failing with EIO;
    LOOKUP: 10 requests of 500 µs, 3 failing; spread over 1.98 seconds."""
    lines = []
    for i in range(100):
        err = 5 if i % 10 == 0 else 0
        lines.append({"time": 1000.0 + i * 0.02, "opcode": "READ", "unique": 2 * i, "nodeid": 5,
                      "fh": 1, "offset": i * 4096, "size": 4096, "bytes": 0 if err else 4096,
                      "errno": err, "us": i + 1})
    for i in range(10):
        lines.append({"time": 1000.5 + i * 0.15, "opcode": "LOOKUP", "unique": 1000 + i,
                      "nodeid": 1, "bytes": 0, "errno": 2 if i < 3 else 0, "us": 500})
    path.write_text("".join(json.dumps(d) + "\n" for d in lines) + "".join(extra_lines))
    return path


def run_ops(*args, stdin=None):
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120,
                          input=stdin)


def test_table_has_exact_counts_errors_bytes_and_percentiles(tmp_path):
    r = run_ops(write_log(tmp_path / "ops.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()}
    # opcode count errors bytes(2 words) p50 p99 max
    assert rows["READ"] == ["READ", "100", "10", "360.0", "KiB", "50", "99", "100"]
    assert rows["LOOKUP"] == ["LOOKUP", "10", "3", "0", "B", "500", "500", "500"]
    assert rows["total"][:3] == ["total", "110", "13"]
    lines = r.stdout.splitlines()
    assert lines[2].startswith("READ"), "busiest opcode first"
    assert "110 requests over 1.980 s" in r.stdout


def test_json_summary(tmp_path):
    r = run_ops(write_log(tmp_path / "ops.jsonl"), "--json")
    out = json.loads(r.stdout)
    assert out["requests"] == 110 and out["skipped_lines"] == 0
    assert out["ops"]["READ"] == {"count": 100, "errors": 10, "bytes": 90 * 4096, "p50_us": 50,
                                  "p99_us": 99, "max_us": 100}
    assert out["total"]["max_us"] == 500


def test_lines_that_are_not_records_are_skipped_and_counted(tmp_path):
    log = write_log(tmp_path / "ops.jsonl",
                    ['{"time": 1, "opcode": "READ"\n', "garbage\n", "[1, 2]\n", "\n",
                     '{"time": "x", "opcode": "READ", "errno": 0, "us": 1}\n'])
    r = run_ops(log)
    assert r.returncode == 0
    assert "4 lines skipped" in r.stdout
    assert "110 requests" in r.stdout


def test_standard_input(tmp_path):
    log = write_log(tmp_path / "ops.jsonl")
    r = run_ops("-", stdin=log.read_text())
    assert r.returncode == 0 and "110 requests" in r.stdout


def test_empty_log_is_an_empty_table(tmp_path):
    (tmp_path / "empty").write_text("")
    r = run_ops(tmp_path / "empty")
    assert r.returncode == 0 and "0 requests" in r.stdout


def test_a_file_of_something_else_fails(tmp_path):
    (tmp_path / "other").write_text("hello\nworld\n")
    r = run_ops(tmp_path / "other")
    assert r.returncode == 1 and "2 lines skipped" in r.stdout


def test_missing_file_is_a_one_line_error(tmp_path):
    r = run_ops(tmp_path / "nope")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"pyvirtiofsd-ops: cannot read {tmp_path / 'nope'}: No such file or directory"]


def test_runs_as_a_module(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd.ops", write_log(tmp_path / "l")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "READ" in r.stdout


def test_plot_writes_a_png_with_one_series_per_opcode(tmp_path):
    import matplotlib  # noqa: F401 - setup.sh installs the [plot] extra: fail loudly without
    out = tmp_path / "latency.png"
    r = run_ops(write_log(tmp_path / "ops.jsonl"), "--plot", out)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 605)
    assert len(data) > 20000          # axes, points, legend: not a blank canvas


def test_plot_series_match_the_records(tmp_path):
    """The plot draws every record, at its time since the first one, per opcode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, _ = ops.read_file(str(write_log(tmp_path / "ops.jsonl")))
    summary = ops.summarize(records)
    drawn = {}
    real_savefig = plt.Figure.savefig

    def capture(fig, *a, **kw):
        ax = fig.axes[0]
        for coll in ax.collections:
            drawn[coll.get_label().split()[0]] = coll.get_offsets()
        assert ax.get_yscale() == "log"
        return real_savefig(fig, *a, **kw)

    plt.Figure.savefig = capture
    try:
        ops.plot(summary, str(tmp_path / "p.png"))
    finally:
        plt.Figure.savefig = real_savefig
    assert set(drawn) == {"READ", "LOOKUP"}
    assert len(drawn["READ"]) == 100 and len(drawn["LOOKUP"]) == 10
    assert drawn["READ"][0].tolist() == [0.0, 1.0]
    assert drawn["LOOKUP"][-1].tolist() == pytest.approx([0.5 + 9 * 0.15, 500.0])
