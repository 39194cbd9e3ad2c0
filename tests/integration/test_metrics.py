"""Prometheus metrics of the real daemon (``--metrics-address``, ``--metrics-file``), in its
default sandbox (namespace + seccomp kill), driven through our front-end: a known workload,
then the exposition text parsed with prometheus_client's own parser must count it exactly."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_imports import RUN_DAEMON

from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi

MiB = 1 << 20
N_LOOKUPS, N_MISSES, N_READS, READ_SIZE = 7, 3, 5, 64 * 1024


def metrics_address(daemon, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(r"metrics listening\s.*address=(\S+)", daemon.log())
        if m:
            return m.group(1)
        assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log()
        time.sleep(0.02)


def scrape(address: str, accept: str | None = None) -> str:
    req = urllib.request.Request(f"http://{address}/metrics",
                                 headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, through prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def op(opcode: str, **more) -> tuple:
    return tuple(sorted({"opcode": opcode, **more}.items()))


def workload(client, shared) -> tuple[int, int]:
    """N_LOOKUPS + N_MISSES LOOKUPs (the misses fail), an OPEN and N_READS READs of
    READ_SIZE bytes; the file stays open.  Returns (nodeid, fh)."""
    (shared / "data.bin").write_bytes(os.urandom(N_READS * READ_SIZE))
    for _ in range(N_LOOKUPS):
        entry, _ = client.lookup(1, b"data.bin")
    for _ in range(N_MISSES):
        with pytest.raises(FileNotFoundError):
            client.lookup(1, b"no-such-file")
    fh = client.open(entry.nodeid, os.O_RDONLY).fh
    for i in range(N_READS):
        assert len(client.read(entry.nodeid, fh, i * READ_SIZE, READ_SIZE)) == READ_SIZE
    return entry.nodeid, fh


def check_workload(s: dict) -> None:
    assert s[("pyvirtiofsd_requests_total", op("LOOKUP"))] == N_LOOKUPS + N_MISSES
    assert s[("pyvirtiofsd_request_errors_total", op("LOOKUP"))] == N_MISSES
    assert s[("pyvirtiofsd_requests_total", op("READ"))] == N_READS
    assert s[("pyvirtiofsd_request_errors_total", op("READ"))] == 0
    assert s[("pyvirtiofsd_request_bytes_total", op("READ"))] == N_READS * READ_SIZE
    assert s[("pyvirtiofsd_requests_total", op("OPEN"))] == 1
    assert s[("pyvirtiofsd_requests_total", op("INIT"))] == 1
    for opcode, n in (("LOOKUP", N_LOOKUPS + N_MISSES), ("READ", N_READS), ("INIT", 1)):
        assert s[("pyvirtiofsd_request_duration_seconds_count", op(opcode))] == n
        assert s[("pyvirtiofsd_request_duration_seconds_bucket", op(opcode, le="+Inf"))] == n
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s.items()
                         if k[0] == "pyvirtiofsd_request_duration_seconds_bucket"
                         and dict(k[1])["opcode"] == opcode)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and counts[-1] == n
        assert buckets[0] == (1e-6, counts[0]) and len(buckets) == 27   # 2**0..2**25 µs, +Inf
        assert s[("pyvirtiofsd_request_duration_seconds_sum", op(opcode))] > 0
    assert s[("pyvirtiofsd_ops_log_dropped_records_total", ())] == 0


def test_scrape_counts_a_known_workload_exactly(tmp_path, shared, start_daemon, connect):
    d = start_daemon("--metrics-address", "127.0.0.1:0")   # default sandbox and filter
    address = metrics_address(d)
    before = samples(scrape(address))
    assert not [k for k in before if k[0] == "pyvirtiofsd_requests_total"]
    assert before[("pyvirtiofsd_inodes", ())] == 1           # the root
    client = connect(d)
    nodeid, fh = workload(client, shared)
    s = samples(scrape(address))
    check_workload(s)
    assert s[("pyvirtiofsd_inodes", ())] == 2                # the root and data.bin
    assert s[("pyvirtiofsd_handles", ())] == 1
    assert s[("pyvirtiofsd_requests_in_flight", (("queue", "0"),))] == 0
    # What Prometheus itself asks for (OpenMetrics) says the same.
    om = samples(scrape(address, "application/openmetrics-text; version=1.0.0"))
    assert om[("pyvirtiofsd_requests_total", op("READ"))] == N_READS
    client.release(nodeid, fh)
    assert samples(scrape(address))[("pyvirtiofsd_handles", ())] == 0
    # Serving never disturbed the daemon: it ends cleanly when the front-end hangs up.
    client.fe.close()
    assert d.wait() == 0, d.log()
    assert "Traceback" not in d.log()


def test_a_client_that_sends_nothing_or_garbage_does_not_stop_the_endpoint(
        tmp_path, shared, start_daemon, connect):
    d = start_daemon("--metrics-address", "127.0.0.1:0")
    address = metrics_address(d)
    host, port = address.rsplit(":", 1)
    for junk in (b"", b"\x00\xff garbage\r\n\r\n", b"GET /" + b"x" * 100000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as c:
            c.sendall(junk)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
    client = connect(d)
    workload(client, shared)
    check_workload(samples(scrape(address)))
    assert d.proc.poll() is None


def test_a_silent_client_does_not_hold_up_the_daemon_at_exit(tmp_path, shared, start_daemon,
                                                            connect):
    d = start_daemon("--metrics-address", "127.0.0.1:0")
    host, port = metrics_address(d).rsplit(":", 1)
    client = connect(d)
    with socket.create_connection((host, int(port)), timeout=10):   # connects, sends nothing
        time.sleep(0.3)             # accepted: the endpoint now waits for its request
        t = time.monotonic()
        client.fe.close()
        assert d.wait() == 0, d.log()
        assert time.monotonic() - t < 5     # not the handler's 10 s timeout


def read_file_while_rewritten(path, stop: threading.Event, seen: dict, versions: set) -> None:
    """Read ``path`` over and over until ``stop``: ``seen`` counts each distinct text,
    ``versions`` collects the (inode, mtime) of each file read."""
    while not stop.wait(0.0005):
        try:
            with open(path) as f:
                st = os.fstat(f.fileno())
                text = f.read()
        except FileNotFoundError:
            continue
        seen[text] = seen.get(text, 0) + 1
        versions.add((st.st_ino, st.st_mtime_ns))


def test_metrics_file_is_rewritten_atomically_and_counts_the_workload(
        tmp_path, shared, start_daemon, connect):
    out = tmp_path / "textfile"
    out.mkdir()
    prom = out / "pyvirtiofsd.prom"
    d = start_daemon("--metrics-file", str(prom), "--stats-interval", "0.05")
    client = connect(d)
    seen: dict[str, int] = {}
    versions: set = set()
    stop = threading.Event()
    reader = threading.Thread(target=read_file_while_rewritten, args=(prom, stop, seen, versions))
    reader.start()
    try:
        nodeid, fh = workload(client, shared)
        deadline = time.monotonic() + 10
        while samples(prom.read_text()).get(("pyvirtiofsd_requests_total", op("READ"))) != N_READS:
            assert time.monotonic() < deadline, prom.read_text()
            time.sleep(0.02)
        time.sleep(0.3)      # a few more rewrites under the reader
    finally:
        stop.set()
        reader.join()
    check_workload(samples(prom.read_text()))
    # Every read found a whole file: the last family is always there, and the text parses.
    assert sum(seen.values()) > 100 and len(versions) > 3   # many reads, across rewrites
    for text in seen:
        assert text.rstrip().splitlines()[-1].startswith("pyvirtiofsd_handles ")
        samples(text)
    client.release(nodeid, fh)
    client.fe.close()
    assert d.wait() == 0, d.log()
    # Written once more at exit (RELEASE counted), and no temporary file left behind.
    assert samples(prom.read_text())[("pyvirtiofsd_requests_total", op("RELEASE"))] == 1
    assert sorted(p.name for p in out.iterdir()) == ["pyvirtiofsd.prom"]


def test_the_metrics_file_replaces_what_is_in_the_way_of_its_temporary(tmp_path, shared,
                                                                       start_daemon, connect):
    """The temporary name taken by a symlink to a file, a FIFO: the daemon neither writes
    through the link nor blocks on the FIFO (a directory a guest can write to is a bad
    choice, but not one that hands the guest the daemon's writes)."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    d = start_daemon("--metrics-file", str(out / "m.prom"), "--stats-interval", "0.05")
    pid = d.serving_pid()    # the sandboxed daemon is pid 1 of its namespace: the name has 1
    names = {f".m.prom.{p}.tmp" for p in (1, pid, d.proc.pid)}
    client = connect(d)
    for name in names:
        os.symlink(victim, out / name)
    time.sleep(0.3)
    for name in names:
        if os.path.lexists(out / name):
            os.unlink(out / name)
        os.mkfifo(out / name)
    time.sleep(0.3)
    workload(client, shared)
    deadline = time.monotonic() + 10
    while samples((out / "m.prom").read_text()).get(
            ("pyvirtiofsd_requests_total", op("READ"))) != N_READS:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.02)
    assert victim.read_text() == "untouched\n"
    client.fe.close()
    assert d.wait() == 0, d.log()


@pytest.mark.parametrize("sandbox", ["chroot", "none"])
def test_both_forms_in_the_other_sandboxes(tmp_path, shared, start_daemon, connect, sandbox):
    prom = tmp_path / "m.prom"
    d = start_daemon("--sandbox", sandbox, "--metrics-address", "127.0.0.1:0",
                     "--metrics-file", str(prom), "--stats-interval", "0.05")
    address = metrics_address(d)
    client = connect(d)
    workload(client, shared)
    check_workload(samples(scrape(address)))
    deadline = time.monotonic() + 10
    while samples(prom.read_text()).get(("pyvirtiofsd_requests_total", op("READ"))) != N_READS:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.fe.close()
    assert d.wait() == 0, d.log()


def test_dax_window_gauges(tmp_path, shared, start_daemon):
    (shared / "big").write_bytes(os.urandom(4 * MiB))
    d = start_daemon("--cache-size", "64M", "--metrics-address", "127.0.0.1:0")
    address = metrics_address(d)
    fe = VhostUserFrontend(d.socket_path, dax=True).connect()
    try:
        client = FuseClient(fe)
        client.init(flags=abi.FUSE_MAP_ALIGNMENT)
        entry, _ = client.lookup(1, b"big")
        fh = client.open(entry.nodeid, os.O_RDONLY).fh
        client.setupmapping(entry.nodeid, 0, 2 * MiB, 0, fh=fh)
        client.setupmapping(entry.nodeid, 2 * MiB, 2 * MiB, 4 * MiB, fh=fh)
        s = samples(scrape(address))
        assert s[("pyvirtiofsd_dax_window_bytes", ())] == 64 * MiB
        assert s[("pyvirtiofsd_dax_mappings", ())] == 2
        assert s[("pyvirtiofsd_dax_mapped_bytes", ())] == 4 * MiB
        assert s[("pyvirtiofsd_dax_maps_total", ())] == 2
        assert s[("pyvirtiofsd_dax_map_failures_total", ())] == 0
        client.removemapping([(0, 2 * MiB)])
        s = samples(scrape(address))
        assert (s[("pyvirtiofsd_dax_mappings", ())], s[("pyvirtiofsd_dax_mapped_bytes", ())],
                s[("pyvirtiofsd_dax_unmaps_total", ())]) == (1, 2 * MiB, 1)
        assert s[("pyvirtiofsd_requests_total", op("SETUPMAPPING"))] == 2
    finally:
        fe.close()
    assert d.wait() == 0, d.log()


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pyvirtiofsd", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_names_the_options():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "--metrics-address ADDR:PORT" in r.stdout and "--metrics-file PATH" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--metrics-address", "localhost"], "not ADDR:PORT"),
    (["--metrics-address", "127.0.0.1:http"], "not a port number"),
    (["--metrics-address", "127.0.0.1:70000"], "not a port number"),
    (["--metrics-address", "::1:9101"], "in brackets"),
    (["--metrics-file", "/no/such/dir/m.prom"], "not a file in an existing directory"),
])
def test_bad_metrics_options_are_one_line_errors(tmp_path, shared, args, message):
    r = run_cli("--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(shared), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("address", ["in-use", "no.such.host.invalid:9101", "192.0.2.1:9101"])
def test_unbindable_metrics_address_is_a_clear_startup_error(tmp_path, shared, address):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    if address == "in-use":
        address = "127.0.0.1:%d" % holder.getsockname()[1]
    try:
        r = run_cli("--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(shared),
                    "--metrics-address", address)
    finally:
        holder.close()
    assert r.returncode == 1, r.stderr
    assert "--metrics-address" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("sandbox", ["namespace", "none"])
def test_a_metrics_file_that_cannot_be_written_is_a_clear_startup_error(tmp_path, shared,
                                                                         sandbox):
    (tmp_path / "out" / "m.prom" / "in-the-way").mkdir(parents=True)   # a full directory
    r = run_cli("--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(shared),
                "--sandbox", sandbox, "--metrics-file", str(tmp_path / "out" / "m.prom"))
    assert r.returncode == 1, r.stderr
    assert "--metrics-file: cannot write m.prom" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.prom"]
    assert not (tmp_path / "s.sock").exists()


def test_the_daemon_imports_prometheus_client_only_for_a_metrics_option(tmp_path, shared):
    """The daemon loads only the daemon: without a metrics option prometheus_client stays
    out of the process; with one it is there (and serving needed nothing more)."""
    for args, wanted in (([], False), (["--metrics-file", str(tmp_path / "m.prom")], True)):
        dump = tmp_path / "modules.json"
        sock = tmp_path / "vfs.sock"
        proc = subprocess.Popen([sys.executable, "-c", RUN_DAEMON, str(dump), "--socket-path",
                                 str(sock), "--shared-dir", str(shared), "--sandbox", "none",
                                 *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            fe = VhostUserFrontend(str(sock)).connect()
            FuseClient(fe).init()
            fe.close()
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        loaded = [m for m in json.loads(dump.read_text()) if m.startswith("prometheus_client")]
        assert bool(loaded) == wanted, (args, loaded)
