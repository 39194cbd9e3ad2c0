"""The ops log and statistics of the real daemon, driven through our front-end: what an
operator sees in the file, on SIGUSR1 and every --stats-interval, and that none of it
disturbs SIGTERM/SIGINT."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = os.path.join(os.path.dirname(sys.executable), "pyvirtiofsd-ops")


def json_events(daemon, event):
    out = []
    for line in daemon.log().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event") == event:
            out.append(d)
    return out


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def do_some_io(client, shared):
    (shared / "data.bin").write_bytes(os.urandom(300000))
    entry, _ = client.lookup(1, b"data.bin")
    fh = client.open(entry.nodeid, os.O_RDWR).fh
    assert len(client.read(entry.nodeid, fh, 0, 131072)) == 131072
    assert len(client.read(entry.nodeid, fh, 262144, 131072)) == 300000 - 262144
    assert client.write(entry.nodeid, fh, 4096, b"w" * 8192) == 8192
    client.release(entry.nodeid, fh)
    with pytest.raises(FileNotFoundError):
        client.lookup(1, b"no-such-file")
    return entry.nodeid, fh


def test_ops_log_has_one_line_per_request_with_its_details(tmp_path, shared, start_daemon,
                                                           connect):
    log = tmp_path / "ops.jsonl"
    d = start_daemon("--ops-log", str(log), "--log-format", "json")
    client = connect(d)
    nodeid, fh = do_some_io(client, shared)
    client.fe.close()
    assert d.wait() == 0
    # C's records (the C path stays on) reach the file in batches, after Python's: in the
    # order the client sent them (one at a time) once sorted by unique.
    recs = sorted((json.loads(line) for line in log.read_text().splitlines()),
                  key=lambda r: r["unique"])
    ops = [r["opcode"] for r in recs]
    assert ops == ["INIT", "LOOKUP", "OPEN", "READ", "READ", "WRITE", "RELEASE", "LOOKUP"]
    reads = [r for r in recs if r["opcode"] == "READ"]
    assert [(r["nodeid"], r["fh"], r["offset"], r["size"], r["bytes"]) for r in reads] == [
        (nodeid, fh, 0, 131072, 131072), (nodeid, fh, 262144, 131072, 300000 - 262144)]
    write = recs[ops.index("WRITE")]
    assert (write["offset"], write["size"], write["bytes"], write["errno"]) == (4096, 8192, 8192, 0)
    assert recs[-1]["errno"] == 2 and recs[1]["errno"] == 0
    assert len({r["unique"] for r in recs}) == len(recs)
    assert all(r["us"] >= 0 for r in recs)
    assert recs == sorted(recs, key=lambda r: r["time"])
    # The daemon's own end-of-run totals agree with the file.
    (total,) = json_events(d, "fuse stats")
    assert (total["why"], total["count"], total["errors"]) == ("exit", len(recs), 1)


def test_ops_log_is_appended_to_and_summarized_by_pyvirtiofsd_ops(tmp_path, shared,
                                                                  start_daemon, connect):
    log = tmp_path / "ops.jsonl"
    log.write_text('{"note": "an earlier line the daemon must keep"}\n')
    d = start_daemon("--ops-log", str(log))
    client = connect(d)
    do_some_io(client, shared)
    client.fe.close()
    assert d.wait() == 0
    assert log.read_text().startswith('{"note"')
    r = subprocess.run([SCRIPT, str(log), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["skipped_lines"] == 1
    assert summary["ops"]["READ"]["count"] == 2
    assert summary["ops"]["READ"]["bytes"] == 131072 + 300000 - 262144
    assert summary["ops"]["LOOKUP"] == {**summary["ops"]["LOOKUP"], "count": 2, "errors": 1}


def test_sigusr1_logs_totals_and_the_daemon_keeps_serving(tmp_path, shared, start_daemon,
                                                          connect):
    d = start_daemon("--stats", "--log-format", "json")
    client = connect(d)
    do_some_io(client, shared)
    d.proc.send_signal(signal.SIGUSR1)
    (ev,) = wait_for(lambda: json_events(d, "fuse stats"), what="fuse stats after SIGUSR1")
    assert (ev["scope"], ev["why"]) == ("total", "SIGUSR1")
    assert ev["ops"]["READ"]["count"] == 2 and ev["ops"]["READ"]["bytes"] == 168928
    assert ev["ops"]["LOOKUP"]["errors"] == 1
    assert set(ev["ops"]["READ"]) == {"count", "errors", "bytes", "p50_us", "p99_us", "max_us"}
    assert ev["ops"]["READ"]["p50_us"] <= ev["ops"]["READ"]["p99_us"] <= ev["ops"]["READ"]["max_us"]
    # Still serving, and a second signal gives a second report.
    assert client.lookup(1, b"data.bin")[0].nodeid
    d.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: len(json_events(d, "fuse stats")) == 2, what="second report")
    assert json_events(d, "fuse stats")[1]["ops"]["LOOKUP"]["count"] == 3
    # SIGTERM still ends it cleanly after all that.
    d.proc.terminate()
    assert d.wait() == 0
    assert not os.path.exists(d.socket_path)
    assert json_events(d, "fuse stats")[-1]["why"] == "exit"


def test_sigusr1_without_statistics_is_ignored(shared, start_daemon, connect):
    d = start_daemon()
    client = connect(d)
    d.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert d.proc.poll() is None, d.log()
    do_some_io(client, shared)
    d.proc.send_signal(signal.SIGINT)
    assert d.wait() == 0
    assert "fuse stats" not in d.log()


def test_sigusr1_before_any_front_end(start_daemon):
    d = start_daemon("--stats", "--log-format", "json")
    d.proc.send_signal(signal.SIGUSR1)
    (ev,) = wait_for(lambda: json_events(d, "fuse stats"), what="fuse stats")
    assert ev["count"] == 0 and ev["ops"] == {}
    d.proc.terminate()
    assert d.wait() == 0


def test_periodic_stats_cover_their_interval(tmp_path, shared, start_daemon, connect):
    d = start_daemon("--stats-interval", "0.2", "--log-format", "json")
    client = connect(d)
    do_some_io(client, shared)

    def quiet_after_busy():
        events = json_events(d, "fuse stats")
        busy = [i for i, e in enumerate(events) if e["count"]]
        return events if busy and len(events) >= busy[-1] + 3 else None

    events = wait_for(quiet_after_busy, what="two quiet intervals after the busy ones")
    assert all(e["scope"] == "interval" and "max_us" not in e for e in events)
    # Every request is counted in exactly one interval: INIT, LOOKUP, OPEN, READ x2, WRITE,
    # RELEASE and the failed LOOKUP.
    assert sum(e["count"] for e in events) == 8
    assert sum(e["errors"] for e in events) == 1
    assert sum(e["bytes"] for e in events) == 168928 + 8192
    assert all(0.1 < e["seconds"] < 2 for e in events[1:])
    client.fe.close()
    assert d.wait() == 0
    assert json_events(d, "fuse stats")[-1]["why"] == "exit"


@pytest.mark.parametrize("args,message", [
    (["--stats-interval", "-1"], "must be a finite number of seconds"),
    (["--stats-interval", "soon"], "not a number"),
])
def test_bad_statistics_options(shared, args, message):
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--socket-path", "/tmp/x.sock",
                        "--shared-dir", str(shared), *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unwritable_ops_log_is_a_clear_startup_error(tmp_path, shared):
    sock = tmp_path / "s.sock"
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(sock),
                        "--shared-dir", str(shared), "--ops-log", str(tmp_path / "no" / "ops")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "ops log" in r.stderr and "No such file or directory" in r.stderr
    assert "Traceback" not in r.stderr
    assert not sock.exists()


@pytest.mark.parametrize("mode", ["none", "namespace"])
def test_c_served_requests_are_logged_and_counted_inside_the_sandbox(tmp_path, shared,
                                                                     start_daemon, connect,
                                                                     mode):
    """The C path stays on with --ops-log and --stats: its recording (rings, the drain
    thread) runs confined and under the default seccomp filter (kill) like the rest."""
    log = tmp_path / "ops.jsonl"
    d = start_daemon("--sandbox", mode, "--seccomp", "kill", "--ops-log", str(log), "--stats",
                     "--log-format", "json", env={**os.environ, "PYVIRTIOFSD_HOTPATH": "1"})
    client = connect(d)
    entries = []
    for i in range(20):
        (shared / f"f{i}").write_bytes(b"%d" % i * 5000)
        entries.append(client.lookup(1, b"f%d" % i)[0].nodeid)
    for i, node in enumerate(entries):
        fh = client.open(node, os.O_RDONLY).fh
        assert client.read(node, fh, 0, 4096) == (b"%d" % i * 5000)[:4096]
        client.release(node, fh)
    d.proc.send_signal(signal.SIGUSR1)
    (ev,) = wait_for(lambda: json_events(d, "fuse stats"), what="fuse stats after SIGUSR1")
    assert ev["ops"]["READ"] == {**ev["ops"]["READ"], "count": 20, "bytes": 20 * 4096}
    client.fe.close()
    assert d.wait() == 0, d.log()
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["opcode"] for r in recs).count("READ") == 20
    assert len(recs) == 1 + 20 * 4
    assert {(r["nodeid"], r["bytes"]) for r in recs if r["opcode"] == "READ"} == {
        (node, 4096) for node in entries}
    (served,) = json_events(d, "hot path totals")     # C served them
    assert served["reads"] == 20
