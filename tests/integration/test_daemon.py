"""The daemon as a user runs it: command line, socket lifecycle, signals, exit codes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pyvirtiofsd.frontend import VhostUserFrontend


def run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "pyvirtiofsd", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--shared-dir", "/", "--bogus"], "unrecognized arguments: --bogus"),
    (["--socket-path", "/tmp/x.sock"], "--shared-dir is required"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/nonexistent/dir"], "does not exist"),
    (["--shared-dir", "/"], "exactly one of --socket-path and --fd"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/", "--guest-page-size", "8192x"], "not a number"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/", "--guest-page-size", "12288"], "not a power of two"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/", "--guest-page-size", "2048"], "not a power of two"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/", "--guest-page-size", "131072"], "not a power of two"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/", "--cache", "sometimes"], "invalid choice"),
    (["--socket-path", "/tmp/x.sock", "--shared-dir", "/", "--tag", "x" * 37], "--tag must be 1 to 36 bytes"),
])
def test_bad_command_lines_are_one_line_errors_with_exit_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr


def test_print_capabilities():
    r = run_cli("--print-capabilities")
    assert r.returncode == 0
    caps = json.loads(r.stdout)
    assert caps["type"] == "fs"


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("pyvirtiofsd ")


def test_disconnect_exits_0_and_removes_the_socket(start_daemon, connect):
    d = start_daemon()
    client = connect(d)
    client.fe.close()
    assert d.wait() == 0
    assert not os.path.exists(d.socket_path)
    log = d.log()
    for event in ("listening", "front-end connected", "features negotiated", "front-end disconnected"):
        assert event in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_cleanly(start_daemon, connect, sig):
    d = start_daemon()
    connect(d)
    d.proc.send_signal(sig)
    assert d.wait() == 0
    assert not os.path.exists(d.socket_path)


def test_sigterm_before_any_front_end(start_daemon):
    d = start_daemon()
    d.proc.terminate()
    assert d.wait() == 0
    assert not os.path.exists(d.socket_path)


def test_stale_socket_file_is_replaced(tmp_path, shared, start_daemon, connect):
    path = tmp_path / "vfs.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on
    d = start_daemon()
    connect(d)


def test_live_socket_is_refused(tmp_path, shared, start_daemon):
    path = tmp_path / "vfs.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    try:
        r = run_cli("--socket-path", str(path), "--shared-dir", str(shared))
        assert r.returncode == 1
        assert "another process is listening" in r.stderr
        assert path.exists()
    finally:
        s.close()


def test_non_socket_file_is_refused(tmp_path, shared):
    path = tmp_path / "file"
    path.write_text("keep me")
    r = run_cli("--socket-path", str(path), "--shared-dir", str(shared))
    assert r.returncode == 1 and "is not a socket" in r.stderr
    assert path.read_text() == "keep me"


def test_listening_fd_is_accepted(tmp_path, shared):
    path = tmp_path / "fd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtiofsd", "--fd", str(listener.fileno()),
                             "--shared-dir", str(shared)], pass_fds=[listener.fileno()])
    listener.close()
    fe = VhostUserFrontend(str(path)).connect()
    try:
        assert len(fe.queues) == 2
    finally:
        fe.close()
    assert proc.wait(10) == 0


def test_socket_group(tmp_path, shared, start_daemon):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    d = start_daemon("--socket-group", group)
    for _ in range(500):
        if "listening" in d.log():
            break
        time.sleep(0.01)
    st = os.stat(d.socket_path)
    assert st.st_gid == os.getgid() and st.st_mode & 0o777 == 0o660


def test_json_logs(start_daemon, connect):
    d = start_daemon("--log-format", "json")
    connect(d).fe.close()
    d.wait()
    events = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    assert any(e["event"] == "listening" for e in events)
    assert all("level" in e and "timestamp" in e for e in events)


def test_config_space_carries_the_tag(start_daemon):
    d = start_daemon("--tag", "myshare", "--num-request-queues", "2")
    fe = VhostUserFrontend(d.socket_path).connect()
    try:
        cfg = fe.get_config(40)
        assert cfg[:36].rstrip(b"\0") == b"myshare"
        assert int.from_bytes(cfg[36:40], "little") == 2
        assert len(fe.queues) == 3
    finally:
        fe.close()
