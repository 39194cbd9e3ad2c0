import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fusewire import Client  # noqa: E402

from pyvirtiofsd.passthrough import PassthroughFs  # noqa: E402
from pyvirtiofsd.server import Server, ServerOptions  # noqa: E402


@pytest.fixture
def share(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


@pytest.fixture
def passthrough(share):
    fs = PassthroughFs(share)
    yield fs
    fs.close()


@pytest.fixture
def make_client(passthrough):
    """make_client(**ServerOptions) → an INITed Client over the passthrough share."""
    def make(init: bool = True, **options):
        server = Server(passthrough, ServerOptions(**options))
        c = Client(server)
        if init:
            assert c.init().ok
        return c
    return make


@pytest.fixture
def client(make_client):
    return make_client()
