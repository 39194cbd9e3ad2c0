"""A real Prometheus (Debian's ``prometheus``, which scripts/setup.sh installs) scrapes the
daemon's ``--metrics-address`` every second while a real QEMU guest creates and writes files
on the share; the counters read back through Prometheus's HTTP API must match what the
guest did.  The daemon runs in its default sandbox (own network namespace, seccomp kill):
the endpoint is the socket it bound before entering it."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e

FILES = 40
MARKER = "prometheus-saw-it"   # the host creates it in the share once Prometheus has the counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def query(base: str, promql: str) -> float | None:
    """One instant query; the value of its single series, None when there is none."""
    out = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert out["status"] == "success", out
    result = out["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def wait_for(predicate, timeout: float, what: str, diagnose=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{diagnose()}")
        time.sleep(0.5)


def test_prometheus_scrapes_a_daemon_serving_a_guest(tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed: run scripts/setup.sh"
    share = tmp_path / "share"
    (share / "made").mkdir(parents=True)
    sock = tmp_path / "vhost-user.sock"
    argv = [*guest.backend_command("ours", sock, share, None), "--log-level", "info",
            "--metrics-address", "127.0.0.1:0"]
    backend = guest.Backend(argv, sock, tmp_path / "backend.log").start()
    prom = g = None
    try:
        m = wait_for(lambda: re.search(r"metrics listening\s.*address=(\S+)", backend.log),
                     10, "the metrics address", lambda: backend.log)
        target = m.group(1)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: pyvirtiofsd\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        with open(tmp_path / "prometheus.log", "wb") as log:
            prom = subprocess.Popen(
                [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def prom_log():
            return (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]

        def ready():
            assert prom.poll() is None, prom_log()
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 60, "Prometheus to be ready", prom_log)
        # The guest (its working directory is the share) writes FILES new files, "data<i>\n"
        # each, then waits for the marker.
        command = (f"for i in $(seq 1 {FILES}); do echo data$i > made/f$i || exit 1; done; "
                   f"sync; echo PVFS-MADE $(ls made | wc -l); n=0; "
                   f"while [ ! -e {MARKER} ] && [ $n -lt 240 ]; do sleep 0.5; n=$((n+1)); done; "
                   f"echo PVFS-MARKER $n")
        g = guest.Guest(command, sock, tag="share", frontend="qemu72", flavor="bookworm",
                        console_path=tmp_path / "console.log").start()
        up = f'up{{instance="{target}"}}'
        creates = f'pyvirtiofsd_requests_total{{opcode="CREATE",instance="{target}"}}'
        write_bytes = f'pyvirtiofsd_request_bytes_total{{opcode="WRITE",instance="{target}"}}'

        def diagnose():
            return (f"--- console ---\n{g.console[-2000:]}\n--- daemon ---\n{backend.log[-2000:]}"
                    f"\n--- prometheus ---\n{prom_log()}")

        wait_for(lambda: (query(base, creates) or 0) >= FILES or g._proc.poll() is not None,
                 600, "Prometheus to see the guest's CREATEs", diagnose)
        assert g._proc.poll() is None, diagnose()
        wait_for(lambda: query(base, up) == 1, 30, "a successful scrape", diagnose)
        # Prometheus may see the last CREATE before the guest has synced and said so.
        wait_for(lambda: "PVFS-MADE" in g.console or g._proc.poll() is not None, 120,
                 "the guest to finish writing", diagnose)
        assert f"PVFS-MADE {FILES}" in g.console, diagnose()
        # Exactly what the guest did: one CREATE per new file, the bytes it wrote; the
        # latency histogram counted each CREATE too.
        assert query(base, creates) == FILES
        wanted = sum(len(f"data{i}\n") for i in range(1, FILES + 1))
        wait_for(lambda: query(base, write_bytes) == wanted, 30, f"{wanted} WRITE bytes",
                 diagnose)
        assert query(base, "pyvirtiofsd_request_duration_seconds_count"
                           f'{{opcode="CREATE",instance="{target}"}}') == FILES
        assert query(base, f'pyvirtiofsd_requests_in_flight{{instance="{target}"}}') is not None
        (share / MARKER).touch()
        result = g.wait(120)
        assert result.exit_status == 0, diagnose()
        assert re.search(r"^PVFS-MARKER \d+$", g.console, re.M), diagnose()
        assert backend.proc.wait(30) == 0, backend.log[-3000:]
        assert sorted(p.name for p in (share / "made").iterdir()) == sorted(
            f"f{i}" for i in range(1, FILES + 1))
    finally:
        if g is not None:
            g.kill()
        if prom is not None and prom.poll() is None:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        backend.stop()
