"""The real daemon as a child process, for the integration tests and the rootless ones."""
from __future__ import annotations

import os
import subprocess
import sys
import time


class Daemon:
    """``python -m pyvirtiofsd`` on ``socket_path``, its output in ``socket_path.log``.
    ``launcher``: what runs the module (default: this interpreter), e.g. another user's."""

    def __init__(self, shared_dir, socket_path, *args, env=None, launcher=None):
        self.shared_dir = str(shared_dir)
        self.socket_path = str(socket_path)
        self.argv = [*(launcher or [sys.executable]), "-m", "pyvirtiofsd",
                     "--socket-path", self.socket_path, "--shared-dir", self.shared_dir,
                     "--log-level", "debug", *args]
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
        if not self._log.closed:
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
