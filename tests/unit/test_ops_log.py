"""The ops log and statistics as the server feeds them: every field of a record, taken from
the request and its reply, for real requests through Server.handle."""
import errno
import io
import json
import os
import random
import threading
import time

import pytest
from pyvirtiofsd.logs import capture as capture_logs
from fusewire import Client, cstr, request
from memfs import MemFs

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import BytesRequest
from pyvirtiofsd.opslog import OPNAMES, OpsRecorder, RecordedRequest
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.stats import LatencyHistogram, Stats, StatsReporter, bucket_of, bucket_value


def recorded(fs, **options):
    stream, stats = io.StringIO(), Stats()
    server = Server(fs, ServerOptions(**options), ops=OpsRecorder(stream, stats=stats))
    client = Client(server)
    assert client.init().ok
    return client, stream, stats


def records(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def last(stream):
    return records(stream)[-1]


def test_every_line_is_one_json_object_with_the_common_fields():
    c, stream, _ = recorded(MemFs({b"a": b"alpha"}))
    c.lookup(1, "a")
    (init, lookup) = records(stream)
    assert init["opcode"] == "INIT" and init["errno"] == 0
    assert lookup["opcode"] == "LOOKUP" and lookup["nodeid"] == 1
    for rec in (init, lookup):
        assert set(rec) == {"time", "opcode", "unique", "nodeid", "bytes", "errno", "us"}
        assert isinstance(rec["us"], int) and rec["us"] >= 0
        assert abs(rec["time"] - time.time()) < 60
    assert stream.getvalue().count("\n") == 2


def test_an_error_is_its_errno_and_moves_no_bytes():
    c, stream, stats = recorded(MemFs({b"a": b"alpha"}))
    r = c.call(Opcode.FUSE_LOOKUP, 1, cstr("missing"))
    assert r.error == -errno.ENOENT
    rec = last(stream)
    assert (rec["opcode"], rec["errno"], rec["bytes"]) == ("LOOKUP", errno.ENOENT, 0)
    snap = stats.snapshot()
    assert (snap["LOOKUP"].count, snap["LOOKUP"].errors) == (1, 1)


def test_read_and_write_carry_fh_offset_size_and_bytes_moved():
    c, stream, stats = recorded(MemFs({b"a": b"alpha" * 100}))
    ino = c.lookup(1, "a").nodeid
    assert c.read(ino, 7, 10, 4096) == (b"alpha" * 100)[10:]
    rec = last(stream)
    assert rec == {**rec, "opcode": "READ", "nodeid": ino, "fh": 7, "offset": 10, "size": 4096,
                   "bytes": 490, "errno": 0}
    assert c.write(ino, 9, 3, b"xyz" * 10) == 30
    rec = last(stream)
    assert rec == {**rec, "opcode": "WRITE", "fh": 9, "offset": 3, "size": 30, "bytes": 30}
    snap = stats.snapshot()
    assert (snap["READ"].bytes, snap["WRITE"].bytes) == (490, 30)


def test_read_served_from_a_file_descriptor_counts_the_bytes_the_transport_moved(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(10000))
    c, stream, _ = recorded(PassthroughFs(str(tmp_path)))
    ino = c.lookup(1, "f").nodeid
    fh, _ = c.open(ino, os.O_RDONLY)
    rec = last(stream)
    assert (rec["opcode"], rec["fh"]) == ("OPEN", fh)       # the handle comes from the reply
    assert len(c.read(ino, fh, 8192, 4096)) == 1808
    rec = last(stream)
    assert (rec["fh"], rec["offset"], rec["size"], rec["bytes"]) == (fh, 8192, 4096, 1808)
    c.release(ino, fh)
    assert (last(stream)["opcode"], last(stream)["fh"]) == ("RELEASE", fh)


def test_create_records_the_new_handle(tmp_path):
    c, stream, _ = recorded(PassthroughFs(str(tmp_path)))
    entry, fh, _ = c.create(1, "new")
    assert fh != 0
    rec = last(stream)
    assert (rec["opcode"], rec["nodeid"], rec["fh"], rec["errno"]) == ("CREATE", 1, fh, 0)


def test_getattr_and_setattr_record_fh_only_when_the_request_names_one():
    c, stream, _ = recorded(MemFs({b"a": b"alpha"}))
    ino = c.lookup(1, "a").nodeid
    c.getattr(ino)
    assert "fh" not in last(stream)
    c.getattr(ino, fh=5)
    assert last(stream)["fh"] == 5


def test_forget_has_no_reply_and_still_gets_a_record():
    c, stream, _ = recorded(MemFs({b"a": b"alpha"}))
    ino = c.lookup(1, "a").nodeid
    assert c.forget(ino, 1).used_len == 0
    rec = last(stream)
    assert (rec["opcode"], rec["nodeid"], rec["errno"]) == ("FORGET", ino, 0)


def test_readonly_refusals_and_unknown_opcodes_are_recorded():
    c, stream, _ = recorded(MemFs({b"a": b"alpha"}), readonly=True)
    assert c.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.build(mode=0o755), cstr("d")).error \
        == -errno.EROFS
    assert last(stream)["errno"] == errno.EROFS
    assert c.call(999, 1).error == -errno.ENOSYS
    assert last(stream)["opcode"] == "OPCODE_999"


def test_a_request_too_short_for_a_header_is_answered_and_not_recorded():
    stream = io.StringIO()
    server = Server(MemFs(), ops=OpsRecorder(stream))
    req = BytesRequest(b"\x01\x02\x03")
    server.handle(req)
    assert req.used_len is not None
    assert stream.getvalue() == ""


def test_the_in_area_is_read_before_the_request_is_completed():
    """After complete() the buffers are the driver's again: a record must not read them."""
    class Strict(BytesRequest):
        def read_in(self, offset, size):
            assert self.used_len is None, "read_in after complete"
            return super().read_in(offset, size)

    stream = io.StringIO()
    server = Server(MemFs({b"a": b"x"}), ops=OpsRecorder(stream))
    Client(server).init()
    req = Strict(request(Opcode.FUSE_LOOKUP, 1, cstr("a")))
    server.handle(req)
    assert req.used_len > 16
    assert last(stream)["opcode"] == "LOOKUP"


def test_a_failing_ops_log_never_costs_the_guest_its_reply():
    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    stats = Stats()
    server = Server(MemFs({b"a": b"alpha"}), ops=OpsRecorder(Full(), stats=stats))
    c = Client(server)
    with capture_logs() as logs:
        assert c.init().ok
        assert c.lookup(1, "a").nodeid
    assert [e["event"] for e in logs].count("cannot write the ops log") == 1
    assert stats.snapshot()["LOOKUP"].count == 1     # statistics still see the requests


def test_unknown_attributes_reach_the_transports_request():
    class Transport(BytesRequest):
        queue_index = 3

    wrapped = RecordedRequest(Transport(b""), OpsRecorder())
    assert wrapped.queue_index == 3


def test_off_means_the_server_sees_the_transports_request_itself():
    seen = []

    class Fs(MemFs):
        def getattr(self, ctx, inode, fh):
            return super().getattr(ctx, inode, fh)

    server = Server(Fs())
    assert server.ops is None
    orig = server._dispatch
    server._dispatch = lambda req, *rest: (seen.append(req), orig(req, *rest))[1]
    req = BytesRequest(request(Opcode.FUSE_GETATTR, 1, abi.fuse_getattr_in.build()))
    server.handle(req)
    assert seen == [req]


def test_ops_log_option_logs_structlog_events():
    server = Server(MemFs({b"a": b"alpha"}), ServerOptions(ops_log=True))
    c = Client(server)
    with capture_logs() as logs:
        c.init()
        c.lookup(1, "a")
    ops = [e for e in logs if e["event"] == "fuse op"]
    assert [e["opcode"] for e in ops] == ["INIT", "LOOKUP"]
    assert ops[1]["nodeid"] == 1 and ops[1]["errno"] == 0


def test_opcode_names_drop_the_fuse_prefix():
    assert OPNAMES[Opcode.FUSE_READDIRPLUS] == "READDIRPLUS"
    assert OPNAMES[Opcode.FUSE_SETUPMAPPING] == "SETUPMAPPING"


def test_records_from_many_threads_are_whole_lines(tmp_path):
    path = tmp_path / "ops.jsonl"
    rec = OpsRecorder.open(str(path), stats=Stats())
    server = Server(MemFs({b"a": b"alpha"}), ops=rec)
    Client(server).init()

    def work():
        c = Client(server)
        for _ in range(200):
            c.lookup(1, "a")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 801
    assert all(json.loads(line)["opcode"] in ("INIT", "LOOKUP") for line in lines)
    assert rec.stats.snapshot()["LOOKUP"].count == 800


# --- statistics ------------------------------------------------------------------------------

def test_buckets_are_monotonic_and_their_values_close():
    prev = -1
    for us in range(0, 200000, 7):
        b = bucket_of(us)
        assert b >= prev
        prev = b
        v = bucket_value(b)
        assert abs(v - us) <= max(0, us) * 0.032 + 0.5, (us, v)
    assert [bucket_value(bucket_of(us)) for us in range(32)] == list(range(32))


def test_histogram_percentiles_match_exact_ones_within_bucket_error():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(5, 1.5)) for _ in range(20000)]
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    ordered = sorted(values)
    for p in (50, 90, 99, 99.9):
        exact = ordered[int(max(1, -(-len(ordered) * p // 100))) - 1]
        assert abs(h.percentile(p) - exact) <= exact * 0.032 + 1, p
    assert h.percentile(100) == h.max == max(values)
    assert LatencyHistogram().percentile(50) == 0


def test_histogram_differences_give_the_interval():
    h = LatencyHistogram()
    for v in (10, 10, 10):
        h.add(v)
    before = h.copy()
    for v in (1000, 1000):
        h.add(v)
    d = h.minus(before)
    assert d.n == 2
    assert d.percentile(1) == d.percentile(50) == 1000     # the 10 µs ones are not in it


def test_stats_from_many_threads_add_up():
    s = Stats()

    def work(i):
        for n in range(1000):
            s.add("READ", errno.EIO if n % 10 == 0 else 0, 4096, n)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = s.snapshot()["READ"]
    assert (r.count, r.errors, r.bytes) == (4000, 400, 4000 * 4096)
    assert r.latency.max == 999


def _stats_events(logs):
    return [e for e in logs if e["event"] == "fuse stats"]


def test_reporter_logs_intervals_totals_on_request_and_at_stop():
    s = Stats()
    with capture_logs() as logs:
        rep = StatsReporter(s, interval=0.05).start()
        s.add("LOOKUP", 0, 0, 40)
        s.add("READ", 0, 100, 80)
        deadline = time.monotonic() + 5
        while not any(e.get("count") for e in _stats_events(logs)):
            assert time.monotonic() < deadline, logs
            time.sleep(0.01)
        rep.request()
        while not any(e["scope"] == "total" for e in _stats_events(logs)):
            assert time.monotonic() < deadline, logs
            time.sleep(0.01)
        rep.stop()
    events = _stats_events(logs)
    interval = next(e for e in events if e["scope"] == "interval" and e["count"])
    assert interval["ops"]["READ"] == {"count": 1, "errors": 0, "bytes": 100, "p50_us": 80,
                                       "p99_us": 80}
    totals = [e for e in events if e["scope"] == "total"]
    assert [e["why"] for e in totals] == ["SIGUSR1", "exit"]
    assert totals[-1]["count"] == 2 and totals[-1]["ops"]["LOOKUP"]["max_us"] == 40
    # Later intervals hold only what happened in them.
    later = events[events.index(interval) + 1:]
    assert all(e["count"] == 0 for e in later if e["scope"] == "interval")


@pytest.mark.parametrize("interval", [0, 0.0, -1, None])
def test_reporter_without_interval_never_reports_by_itself(interval):
    with capture_logs() as logs:
        rep = StatsReporter(Stats(), interval=interval).start()
        time.sleep(0.1)
        assert not logs
        rep.stop()
    assert [e["why"] for e in _stats_events(logs)] == ["exit"]


@pytest.mark.parametrize("fields", [
    dict(fh=3, offset=0, size=131072),
    dict(fh=None, offset=None, size=None),
    dict(fh=2**64 - 1, offset=2**63, size=None),
])
def test_a_record_line_is_the_json_of_its_fields(fields):
    from pyvirtiofsd.opslog import OpRecord
    rec = OpRecord(1795607563.5697734, Opcode.FUSE_READ, 8, 2, fields["fh"], fields["offset"],
                   fields["size"], 6, 0, 70)
    assert json.loads(rec.json()) == rec.as_dict()
    assert "\n" not in rec.json()
    assert [k for k in json.loads(rec.json())] == [k for k in rec.as_dict()]
