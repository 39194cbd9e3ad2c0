"""The daemon loads only the daemon (ARCHITECTURE.md): a real ``python -m pyvirtiofsd`` that
serves a session (INIT, files, a directory listing, a DAX mapping) has the daemon's extension
``pyvirtiofsd._cext`` mapped and never the test kit's ``pyvirtiofsd._testkit``, and at its exit
no module of the test kits (the front-end, the benchmark, the guest runner) was ever imported.

The front-end that drives it here runs in the test process, which loads the test kit itself:
only the daemon's own process is inspected (/proc/PID/maps while serving, its sys.modules
written by an atexit hook when it has exited)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi

TEST_KITS = ("pyvirtiofsd.bench", "pyvirtiofsd.frontend", "pyvirtiofsd.guest", "pyvirtiofsd._testkit")
MiB = 1 << 20

# ``python -m pyvirtiofsd ARGS`` exactly (runpy runs the package's __main__ as -m does), plus
# an atexit hook that writes the names in sys.modules to the file given first ("-": to
# stdout, for a sandboxed daemon, which can no longer name any file of the host).
RUN_DAEMON = r"""
import atexit, json, runpy, sys
out = sys.argv.pop(1)
def dump():
    if out == "-":   # on stdout, which the sandbox keeps open: "daemon modules: [...]"
        print("daemon modules:", json.dumps(sorted(sys.modules)), flush=True)
        return
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(dump)
sys.argv[0] = "pyvirtiofsd"
runpy.run_module("pyvirtiofsd", run_name="__main__", alter_sys=True)
"""


def is_test_kit(module: str) -> bool:
    return any(module == kit or module.startswith(kit + ".") for kit in TEST_KITS)


def start(tmp_path, *args, dump=None, env=None):
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    (share / "data").write_bytes(os.urandom(4 * MiB))
    sock = tmp_path / "vfs.sock"
    argv = ([sys.executable, "-c", RUN_DAEMON, str(dump)] if dump else
            [sys.executable, "-m", "pyvirtiofsd"])
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([*argv, "--socket-path", str(sock), "--shared-dir", str(share),
                             "--cache-size", "64M", "--log-level", "info", *args],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=None if env is None else {**os.environ, **env})
    log.close()
    deadline = time.monotonic() + 20
    while "listening" not in (tmp_path / "daemon.log").read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "daemon.log").read_text(errors="replace")
        time.sleep(0.02)
    return proc, sock


def serve_a_session(sock) -> VhostUserFrontend:
    """What a guest does with the daemon: every part of it that the daemon loads lazily gets
    loaded (the queues and the C hot path, the passthrough ops, the DAX window)."""
    fe = VhostUserFrontend(str(sock), dax=True).connect()
    client = FuseClient(fe)
    client.init(flags=abi.FUSE_MAP_ALIGNMENT | abi.FUSE_HAS_INODE_DAX | abi.FUSE_DO_READDIRPLUS)
    root = abi.FUSE_ROOT_ID
    entry, _ = client.lookup(root, b"data")
    opened = client.open(entry.nodeid)
    assert len(client.read(entry.nodeid, opened.fh, 0, 128 * 1024)) == 128 * 1024
    assert client.write(entry.nodeid, opened.fh, 4096, b"x" * 4096) == 4096
    client.getattr(entry.nodeid)
    client.release(entry.nodeid, opened.fh)
    head, _, new = client.create(root, b"new")
    client.release(head.nodeid, new.fh)
    assert {b"data", b"new"} <= {e[3] for e in client.listdir(root, plus=True)}
    client.setupmapping(entry.nodeid, 0, 2 * MiB, 0, abi.FUSE_SETUPMAPPING_FLAG_READ)
    client.removemapping([(0, 2 * MiB)])
    client.statfs()
    return fe


def shared_objects(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[5] for line in f if len(line.split()) >= 6 and ".so" in line}


def serving_pid(proc) -> int:
    """The server: the pid we started with --sandbox none, else its (supervisor's) child."""
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    return children[0] if children else proc.pid


def check_maps(pid: int) -> None:
    names = {os.path.basename(p) for p in shared_objects(pid)}
    assert any(n.startswith("_cext.") for n in names), sorted(names)
    assert not [n for n in names if n.startswith("_testkit.")], sorted(names)


def serve_and_check_maps(tmp_path, sandbox: str, dump=None, env=None) -> None:
    """Start a daemon, serve a whole session, check the serving process's mappings while it
    serves, and see it exit 0 when the front-end hangs up."""
    proc, sock = start(tmp_path, "--sandbox", sandbox, dump=dump, env=env)
    try:
        fe = serve_a_session(sock)
        check_maps(proc.pid if sandbox == "none" else serving_pid(proc))
        fe.close()
        assert proc.wait(20) == 0, (tmp_path / "daemon.log").read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_serving_daemon_maps_cext_and_imported_no_test_kit(tmp_path):
    dump = tmp_path / "modules.json"
    serve_and_check_maps(tmp_path, "none", dump=dump)
    modules = json.loads(dump.read_text())
    # It did serve: the daemon's own modules are all there ...
    for needed in ("pyvirtiofsd._cext", "pyvirtiofsd.cli", "pyvirtiofsd.passthrough",
                   "pyvirtiofsd.dax", "pyvirtiofsd.vhost_user.backend", "pyvirtiofsd.sandbox",
                   "pyvirtiofsd.seccomp"):
        assert needed in modules, needed
    # ... and none of a test kit's.
    assert [m for m in modules if is_test_kit(m)] == []


def test_a_sandboxed_daemon_does_not_map_the_test_kit(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the namespace sandbox needs root (CI runs as root)")
    serve_and_check_maps(tmp_path, "namespace")


NOT_THE_DAEMON = (*TEST_KITS, "pyvirtiofsd.ops", "pyvirtiofsd.metrics", "prometheus_client",
                  "matplotlib", "structlog", "asyncio", "ssl")
"""Never imported by a daemon run with no option that needs them: the tools and test kits,
the metrics exporter (--metrics-*), plotting, and what structlog used to pull in."""



def modules_at_exit(log: str) -> list[list[str]]:
    """The sys.modules of each process of the daemon that ran Python to its end (RUN_DAEMON
    with dump "-"): the serving process -- the supervisor is a C program."""
    return [json.loads(line.split(":", 1)[1]) for line in log.splitlines()
            if line.startswith("daemon modules:")]


@pytest.mark.parametrize("sandbox", ["namespace", "none"])
def test_the_serving_daemon_imports_nothing_it_does_not_run(tmp_path, sandbox):
    """A real daemon serves a whole session and exits: none of the packages of
    :data:`NOT_THE_DAEMON` was imported by any of its processes."""
    if sandbox == "namespace" and os.geteuid() != 0:
        pytest.fail("the namespace sandbox needs root (CI runs as root)")
    serve_and_check_maps(tmp_path, sandbox, dump="-")
    dumps = modules_at_exit((tmp_path / "daemon.log").read_text(errors="replace"))
    assert len(dumps) == 1, dumps         # one Python process, whichever the sandbox
    modules = dumps[0]
    # It did serve: the daemon's own modules and the C extension are there ...
    for needed in ("pyvirtiofsd.cli", "pyvirtiofsd._cext", "pyvirtiofsd.vhost_user.backend",
                   "pyvirtiofsd.passthrough", "pyvirtiofsd.dax", "pyvirtiofsd.sandbox"):
        assert needed in modules, (needed, modules)
    # ... and none of what it does not run.
    unwanted = [m for m in modules
                if any(m == p or m.startswith(p + ".") for p in NOT_THE_DAEMON)]
    assert unwanted == []
