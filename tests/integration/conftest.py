"""Fixtures that run the real daemon (``python -m pyvirtiofsd``) and drive it through our
front-end over its socket: no VM, real syscalls on a real directory."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend


class Daemon:
    def __init__(self, shared_dir, socket_path, *args, env=None):
        self.shared_dir = str(shared_dir)
        self.socket_path = str(socket_path)
        self.argv = [sys.executable, "-m", "pyvirtiofsd", "--socket-path", self.socket_path,
                     "--shared-dir", self.shared_dir, "--log-level", "debug", *args]
        self.log_path = str(socket_path) + ".log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.wait_listening()

    def wait_listening(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon did not listen:\n{self.log()}")
            time.sleep(0.01)

    def serving_pid(self, timeout=10.0) -> int:
        """The process that serves the front-end: with a confining ``--sandbox`` the pid we
        started is a supervisor and the server is its child; with ``--sandbox none`` it is
        the pid we started.  Waits until the daemon says it is listening."""
        deadline = time.monotonic() + timeout
        while "listening" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon not listening:\n{self.log()}")
            time.sleep(0.01)
        pid = self.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
        return children[0] if children else pid

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait(self, timeout=10.0) -> int:
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def shared(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    return d


@pytest.fixture
def start_daemon(tmp_path, shared):
    started = []

    def start(*args, shared_dir=None, socket_name="vfs.sock", env=None):
        d = Daemon(shared_dir or shared, tmp_path / socket_name, *args, env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def connect():
    opened = []

    def make(daemon, *, init=True, **kw):
        fe = VhostUserFrontend(daemon.socket_path, **kw).connect()
        opened.append(fe)
        client = FuseClient(fe)
        if init:
            client.init()
        return client

    yield make
    for fe in opened:
        fe.close()


@pytest.fixture
def fuse(start_daemon, connect):
    """A FuseClient (after INIT) on a daemon serving ``shared``."""
    daemon = start_daemon()
    client = connect(daemon)
    client.daemon = daemon
    return client
