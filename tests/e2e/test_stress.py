"""Stress with a real guest: several guest processes hammer the share with random
operations (stress_workload.py), then every surviving file is checksummed in the guest and
compared with the host's view; the daemon's fds return to their baseline once the guest
unmounts, and its RSS stays bounded.

``PYVIRTIOFSD_STRESS_SECONDS`` sets the workload's length (default 60 s: the CI run);
SECURITY.md has the figures of a 10-minute run (``PYVIRTIOFSD_STRESS_SECONDS=600``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from guest_harness import parse_lines
from pyvirtiofsd import guest

GUEST_PYTHON = "/usr/bin/python3"   # the host's python3, run by the guest through 9p
TAG, MOUNT_POINT = "share", "/mnt"

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "stress_workload.py"
FRONTEND, FLAVOR = "qemu72", "bookworm"
RSS_GROWTH_LIMIT = 64 << 20     # bytes the daemon may grow between idle and after unmount


def _tree(pid: int) -> list[int]:
    """The daemon and its descendants (a sandbox may put the server in a child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def measure(pid: int) -> dict:
    """fds, RSS, and its anonymous part: guest RAM the daemon touched (a shared mapping)
    counts in RSS but is the guest's memory, so growth is judged on RssAnon."""
    out = {"fds": 0, "rss": 0, "rss_anon": 0}
    for p in _tree(pid):
        try:
            out["fds"] += len(os.listdir(f"/proc/{p}/fd"))
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key = {"VmRSS:": "rss", "RssAnon:": "rss_anon"}.get(line.split(" ")[0].split("\t")[0])
                if key:
                    out[key] += int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


def wait_line(g: guest.Guest, marker: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for obj in parse_lines(g.console).get(marker, []):
            return obj
        if g._proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"guest never printed {marker}:\n" + g.console[-4000:])


def wait_phase(g: guest.Guest, phase: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(o.get("phase") == phase for o in parse_lines(g.console).get("PVFS-STRESSPHASE", [])):
            return
        assert g._proc.poll() is None, f"guest ended before phase {phase}:\n" + g.console[-4000:]
        time.sleep(0.1)
    raise AssertionError(f"guest never reached phase {phase}:\n" + g.console[-4000:])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_concurrent_random_workload(tmp_path):
    seconds = float(os.environ.get("PYVIRTIOFSD_STRESS_SECONDS", "60"))
    procs = int(os.environ.get("PYVIRTIOFSD_STRESS_PROCS", "4"))
    share = tmp_path / "share"
    share.mkdir()
    sock = tmp_path / "vhost-user.sock"
    backend = guest.Backend(guest.backend_command("ours", sock, share, TAG), sock,
                            tmp_path / "backend.log").start()
    command = (f"cd / && {GUEST_PYTHON} {guest.guest_path(WORKLOAD)} {MOUNT_POINT} "
               f"--seconds {seconds} --procs {procs} --seed {int(time.time()) % 100000}")
    samples = {"listening": measure(backend.proc.pid)}
    g = guest.Guest(command, sock, tag=TAG, frontend=FRONTEND, flavor=FLAVOR,
                    mount_point=MOUNT_POINT, console_path=tmp_path / "console.log")
    try:
        g.start()
        wait_phase(g, "mounted", 300)
        samples["idle"] = measure(backend.proc.pid)
        (share / ".go-mounted").write_bytes(b"")
        peak = dict(samples["idle"])
        deadline = time.monotonic() + seconds + 900
        while not parse_lines(g.console).get("PVFS-STRESS"):
            assert time.monotonic() < deadline and g._proc.poll() is None, g.console[-4000:]
            m = measure(backend.proc.pid)
            peak = {k: max(peak[k], m[k]) for k in m}
            time.sleep(0.5)
        samples["peak"] = peak
        summary = wait_line(g, "PVFS-STRESS", 10)
        wait_phase(g, "unmounted", 600)
        time.sleep(1.0)     # the DESTROY and FORGETs of the unmount are served
        samples["unmounted"] = measure(backend.proc.pid)
        result = g.wait(120)
    finally:
        g.kill()
        status = backend.stop()
    print(f"\n[stress] {json.dumps(summary, sort_keys=True)}\n[stress] daemon {samples}")

    assert summary["failures"] == [], summary["failures"]
    assert result.exit_status == 0, result.console[-4000:]
    assert status == 0, backend.log[-4000:]
    assert summary["ops_total"] > 50 * procs and summary["files_checked"] > 10, summary

    # The guest's view of every file equals the host's, byte for byte.
    blob = (share / "stress-result.json").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == summary["result_sha256"]
    guest_files = json.loads(blob)["files"]
    host_files = {str(p.relative_to(share)): sha256(p) for p in (share / "stress").rglob("*")
                  if p.is_file() and not p.is_symlink()}
    assert guest_files == host_files, {
        "only in guest": sorted(set(guest_files) - set(host_files))[:10],
        "only on host": sorted(set(host_files) - set(guest_files))[:10],
        "different": [k for k in guest_files if host_files.get(k, guest_files[k]) != guest_files[k]][:10]}

    # Every inode and handle the guest held is released with the mount.
    assert samples["unmounted"]["fds"] == samples["idle"]["fds"], samples
    assert samples["unmounted"]["rss_anon"] - samples["idle"]["rss_anon"] < RSS_GROWTH_LIMIT, samples
    log = backend.log
    for bad in ("[error", "Traceback", "AddressSanitizer"):
        assert bad not in log, log[log.index(bad) - 1000:log.index(bad) + 3000]
