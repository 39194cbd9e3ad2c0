"""The command line listens before it imports the daemon (pyvirtiofsd.startup): parsing the
options and binding the socket need only the standard library and a few light modules, so
a VMM waiting for the socket does not wait for the server, the passthrough or the C
extension to load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from pyvirtiofsd import virtiofsd_options
from pyvirtiofsd.passthrough import file_handle
from pyvirtiofsd.server import NEGOTIATION

LIGHT = {"pyvirtiofsd", "pyvirtiofsd.cli", "pyvirtiofsd.virtiofsd_options", "pyvirtiofsd.logs",
         "pyvirtiofsd.startup"}

PARSE_AND_LISTEN = r"""
import json, sys
from pyvirtiofsd import cli, logs, startup
args = cli.parse_args(sys.argv[2:] + ["--socket-path", sys.argv[1], "--shared-dir", "/"])
logs.configure(args.log_level, args.log_format)
startup.hold_signals()
startup.listen_unix(args.socket_path).close()
print(json.dumps(sorted(sys.modules)))
"""


def _modules_to_listen(*options: str, ours: bool = True) -> set[str]:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", PARSE_AND_LISTEN, os.path.join(d, "s"),
                              *options],
                             capture_output=True, text=True, check=True).stdout
    return {m for m in json.loads(out) if m.startswith("pyvirtiofsd") or not ours}


def test_parsing_and_listening_import_only_the_light_modules():
    assert _modules_to_listen() <= LIGHT
    # Options whose defaults are checked by name, given explicitly: still light.
    assert _modules_to_listen("--posix-acl", "auto", "--inode-file-handles", "prefer",
                              "--sandbox", "chroot") <= LIGHT
    # argparse sizes its help with shutil, which brings bz2, lzma and zlib: not ours.
    assert not {"shutil", "lzma", "bz2"} & _modules_to_listen(ours=False)


def test_an_option_that_needs_a_parser_imports_it():
    """--translate-uid is checked by the passthrough's own parser, imported for it."""
    assert "pyvirtiofsd.passthrough.idmap" in _modules_to_listen("--translate-uid",
                                                                  "map:0:1000:1")


def test_the_names_the_command_line_checks_are_the_daemons():
    assert virtiofsd_options.NEGOTIATION == NEGOTIATION
    assert virtiofsd_options.FILE_HANDLE_MODES == file_handle.MODES
