"""Statistics and the ops log with the C path on (cext/opstats.c, pyvirtiofsd/hotstats.py):
requests C serves are counted and logged by C, merged into the same Stats and written to
the same file, in the same format, as those Python serves; a full ring drops records
without holding up the data path, and says so.

A device in this process on a real directory and our front-end through real virtqueues
(the Rig of test_hotpath.py); the C path's own counters (served / passed to Python) show
who served what.
"""
import json
import os
import re
import time

import pytest

from pyvirtiofsd import logs
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.hotstats import _Drain
from pyvirtiofsd.opslog import OpsRecorder
from pyvirtiofsd.server import ServerOptions
from pyvirtiofsd.stats import Stats, bucket_of

from test_hotpath import ROOT, Rig


@pytest.fixture(autouse=True)
def _c_path_on(monkeypatch):
    monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", "1")
    monkeypatch.delenv("PYVIRTIOFSD_OPSLOG_RING", raising=False)


@pytest.fixture
def rigs():
    made = []

    def make(directory, **kw):
        r = Rig(directory, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        try:
            r.close()
        except Exception:   # noqa: BLE001 - closed by the test already
            pass


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stats_count_what_c_serves_exactly(rigs, tmp_path):
    (tmp_path / "data").write_bytes(os.urandom(64 * 4096))
    stats = Stats()
    rig = rigs(tmp_path, ops=OpsRecorder(stats=stats))
    assert rig.device.hotpath.ctx is not None, "statistics must not switch the C path off"
    c = rig.client
    passed = rig.stats()["passed"]
    for _ in range(100):
        node = c.lookup(ROOT, b"data")[0].nodeid
    for i in range(7):
        with pytest.raises(FileNotFoundError):
            c.lookup(ROOT, b"missing-%d" % i)
    fh = c.open(node, os.O_RDONLY).fh
    for i in range(50):
        assert len(c.read(node, fh, i * 4096, 4096)) == 4096
    # C served all of it (only INIT went to Python, before)...
    assert rig.stats()["passed"] == passed
    # ... and counted each before its reply went out: no waiting here.
    ops = stats.snapshot()
    assert ops["LOOKUP"].count == 107 and ops["LOOKUP"].errors == 7
    assert ops["LOOKUP"].bytes == 0
    assert ops["READ"].count == 50 and ops["READ"].errors == 0
    assert ops["READ"].bytes == 50 * 4096
    assert ops["OPEN"].count == 1 and ops["OPEN"].errors == 0
    assert ops["INIT"].count == 1                       # Python's, merged with C's
    for name in ("LOOKUP", "READ", "OPEN"):
        lat = ops[name].latency
        assert lat.n == ops[name].count
        assert sum(lat.counts.values()) == lat.n
        assert 0 < lat.max < 10_000_000
        # buckets are stats.py's: the maximum's bucket holds something
        assert max(lat.counts) == bucket_of(lat.max)
        assert lat.percentile(50) <= lat.percentile(99) <= lat.max
    # a second snapshot minus the first is the interval between them (StatsReporter)
    for _ in range(3):
        c.read(node, fh, 0, 4096)
    delta = stats.snapshot()["READ"].minus(ops["READ"])
    assert (delta.count, delta.bytes, delta.latency.n) == (3, 3 * 4096, 3)


def workload(c, d):
    """A bit of everything C serves, and some it leaves to Python."""
    (d / "data").write_bytes(bytes(range(256)) * 64)          # 16 KiB
    node = c.lookup(ROOT, b"data")[0].nodeid
    fh = c.open(node, os.O_RDWR).fh
    assert len(c.read(node, fh, 0, 4096)) == 4096
    assert len(c.read(node, fh, 12288, 8192)) == 4096         # short at EOF
    assert c.write(node, fh, 100, b"x" * 300) == 300
    c.getattr(node)
    c.getattr(node, fh=fh)
    c.setattr(node, valid=abi.FATTR_SIZE | abi.FATTR_FH, fh=fh, size=5000)
    c.flush(node, fh)
    c.fsync(node, fh)
    c.release(node, fh)
    head, _, opened = c.create(ROOT, b"new")
    c.release(head.nodeid, opened.fh)
    c.mkdir(ROOT, b"dir")
    c.listdir(ROOT)
    c.listdir(ROOT, plus=True)
    c.unlink(ROOT, b"new")
    for name in (b"nope", b"nada"):
        with pytest.raises(FileNotFoundError):
            c.lookup(ROOT, name)
    c.statfs()
    c.forget(node, 1)


def test_ops_log_of_c_served_requests_is_pythons_record_for_record(rigs, tmp_path,
                                                                    monkeypatch):
    """The same workload with the C path on and off: the same lines (but time and us)."""
    logged, texts = {}, {}
    for mode in ("1", "0"):
        monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", mode)
        share = tmp_path / f"share{mode}"
        share.mkdir()
        path = tmp_path / f"ops{mode}.jsonl"
        recorder = OpsRecorder.open(str(path), stats=Stats())
        rig = rigs(share, ops=recorder)
        assert (rig.device.hotpath.ctx is not None) == (mode == "1")
        started = time.time()
        workload(rig.client, share)
        if mode == "1":
            served = rig.stats()
            assert served["reads"] == 2 and served["writes"] == 1 and served["lookups"] >= 3
        rig.close()
        recorder.close()
        # byte for byte the same lines, but the time and the latency
        texts[mode] = sorted(re.sub(r'^\{"time": \d+\.\d{6}, (.*), "us": \d+\}$', r"\1", line)
                             for line in path.read_text().splitlines())
        recs = records(path)
        for r in recs:
            assert started - 1 < r.pop("time") < time.time() + 1
            assert isinstance(r.pop("us"), int)
        logged[mode] = sorted(recs, key=lambda r: r["unique"])
        # the statistics saw what the log did
        snap = recorder.stats.snapshot()
        assert sum(s.count for s in snap.values()) == len(recs)
        assert sum(s.errors for s in snap.values()) == sum(1 for r in recs if r["errno"])
    assert logged["1"] == logged["0"]
    assert texts["1"] == texts["0"]
    assert all(t.startswith('"opcode"') for t in texts["1"])     # the pattern matched
    by_op = {}
    for r in logged["1"]:
        by_op.setdefault(r["opcode"], []).append(r)
    read = by_op["READ"][1]
    assert (read["offset"], read["size"], read["bytes"], read["errno"]) == (12288, 8192, 4096, 0)
    assert by_op["WRITE"][0]["bytes"] == 300
    assert by_op["SETATTR"][0]["size"] == 5000 and "fh" in by_op["SETATTR"][0]
    assert "fh" in by_op["OPEN"][0] and "fh" in by_op["CREATE"][0]
    assert [r["errno"] for r in by_op["LOOKUP"]][-2:] == [2, 2]
    assert "FORGET" in by_op


def test_a_full_ring_drops_records_counts_them_and_says_so(rigs, tmp_path, monkeypatch):
    monkeypatch.setenv("PYVIRTIOFSD_OPSLOG_RING", "4")
    monkeypatch.setattr(_Drain, "INTERVAL", 3600.0)    # the drain waits: the ring fills
    (tmp_path / "data").write_bytes(os.urandom(64 * 4096))
    path = tmp_path.parent / f"{tmp_path.name}-ops.jsonl"
    stats = Stats()
    recorder = OpsRecorder.open(str(path), stats=stats)
    with logs.capture() as events:
        rig = rigs(tmp_path, ops=recorder, hot_threads=1)
        c = rig.client
        node = c.lookup(ROOT, b"data")[0].nodeid
        fh = c.open(node, os.O_RDONLY).fh
        for i in range(50):
            assert len(c.read(node, fh, i * 4096, 4096)) == 4096
        assert stats.dropped_records == 0           # not drained yet
        c_served = sum(s.count for op, s in stats.snapshot().items() if op != "INIT")
        assert c_served == 52
        rig.close()
        recorder.close()                            # the last drain
    recs = records(path)
    assert [r["opcode"] for r in recs] == ["INIT", "LOOKUP", "OPEN", "READ", "READ"]
    assert stats.dropped_records == 52 - 4
    said = [e for e in events if e["event"].startswith("ops log dropped")]
    assert [e["event"] for e in said] == [f"ops log dropped {52 - 4} records"]
    assert said[0]["log_level"] == "warning"
    # the statistics lost nothing
    assert stats.snapshot()["READ"].count == 50


def test_stats_only_make_no_ring_and_no_drain_thread(rigs, tmp_path):
    rig = rigs(tmp_path, ops=OpsRecorder(stats=Stats()))
    rec = rig.device.hotpath.recording
    assert rec is not None and rec.drain is None


def test_structlog_events_still_keep_requests_in_python(rigs, tmp_path):
    """``ServerOptions(ops_log=True)`` logs every request as an event: only Python can."""
    rig = rigs(tmp_path, options=ServerOptions(ops_log=True))
    assert rig.device.hotpath.ctx is None


def test_neither_option_records_nothing(rigs, tmp_path):
    rig = rigs(tmp_path)
    assert rig.device.hotpath.ctx is not None and rig.device.hotpath.recording is None


def test_counts_and_records_survive_guest_reboots(rigs, tmp_path):
    """Each reboot stops the queue threads and starts new ones: the new threads take the
    old ones' slots over (or new ones), and nothing counted or logged is lost."""
    (tmp_path / "data").write_bytes(os.urandom(16 * 4096))
    path = tmp_path.parent / f"{tmp_path.name}-ops.jsonl"
    stats = Stats()
    recorder = OpsRecorder.open(str(path), stats=stats)
    rig = rigs(tmp_path, ops=recorder)
    c = rig.client
    for boot in range(4):
        if boot:
            rig.fe.restart()
            c.init()
        node = c.lookup(ROOT, b"data")[0].nodeid
        fh = c.open(node, os.O_RDONLY).fh
        for i in range(10):
            assert len(c.read(node, fh, i * 4096, 4096)) == 4096
        assert stats.snapshot()["READ"].count == 10 * (boot + 1)
    assert rig.stats()["reads"] == 40      # C served every one of them
    rig.close()
    recorder.close()
    recs = records(path)
    assert sum(r["opcode"] == "READ" for r in recs) == 40
    assert sum(r["opcode"] == "INIT" for r in recs) == 4
    assert stats.dropped_records == 0
