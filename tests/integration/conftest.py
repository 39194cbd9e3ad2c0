"""Fixtures that run the real daemon (``python -m pyvirtiofsd``) and drive it through our
front-end over its socket: no VM, real syscalls on a real directory."""
from __future__ import annotations

import pytest
from daemonproc import Daemon

from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend


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
