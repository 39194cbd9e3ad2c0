"""The guest runner (pyvirtiofsd.guest) as an installed tool: where it caches, the data it
ships, and that it never runs sudo -- without root, a step that needs it stops and says what
for and which command to run."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from pyvirtiofsd import guest

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_cache_directory_follows_the_variable_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(guest.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert guest.cache_dir() == tmp_path / "home" / ".cache" / "pyvirtiofsd"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert guest.cache_dir() == tmp_path / "home" / ".cache" / "pyvirtiofsd"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert guest.cache_dir() == tmp_path / "xdg" / "pyvirtiofsd"
    monkeypatch.setenv(guest.CACHE_ENV, str(tmp_path / "mine"))
    assert guest.cache_dir() == tmp_path / "mine"
    # Everything prepared goes below it, read at each call (scripts and conftests set it late).
    assert guest.sid_dir() == tmp_path / "mine" / "sid"
    assert guest.sid_command("usr/libexec/virtiofsd")[0].startswith(str(tmp_path / "mine" / "sid") + "/")


def test_the_qemu72_config_is_the_repositorys_basic_cfg_shipped_in_the_package():
    cfg = guest.basic_cfg()
    assert cfg.is_file() and cfg.parent == pathlib.Path(guest.__file__).parent
    assert cfg.read_bytes() == (REPO / "qemu-configs" / "basic.cfg").read_bytes()
    argv = guest.qemu_command("qemu72", guest.Assets(None, pathlib.Path("/initrd"),
                                                     pathlib.Path("/kernel")),
                              "/tmp/s.sock", "share")
    assert argv[:3] == [guest.HOST_QEMU, "-readconfig", str(cfg)]


def test_the_package_finds_nothing_through_the_repository_and_runs_no_sudo():
    for path in pathlib.Path(guest.__file__).parent.glob("*.py"):
        text = path.read_text()
        # the old ways: the repository from __file__, and sudo prefixed to root's commands
        for needle in ("parents[", '"qemu-configs"', "_as_root", '_run(["sudo"'):
            assert needle not in text, (path, needle)


def test_without_root_the_sid_tree_stops_with_the_command_to_run_and_calls_no_sudo(tmp_path):
    # A real unprivileged run of the CLI, with a sudo on PATH that records any call.
    if os.geteuid() != 0:
        pytest.fail("this test drops to user nobody and needs root to do that (CI runs as root)")
    work = pathlib.Path(subprocess.run(["mktemp", "-d", "/tmp/pvfs-guest-XXXXXX"], check=True,
                                       capture_output=True, text=True).stdout.strip())
    try:
        os.chmod(work, 0o777)
        bin_dir = work / "bin"
        bin_dir.mkdir(mode=0o755)
        trip = work / "sudo-was-called"
        (bin_dir / "sudo").write_text(f"#!/bin/sh\necho \"$@\" > {trip}\nexit 1\n")
        (bin_dir / "sudo").chmod(0o755)
        cache = work / "cache"          # does not exist: nothing may be created without root
        env = {**os.environ, guest.CACHE_ENV: str(cache),
               "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               sys.executable, "-m", "pyvirtiofsd.guest", "prepare", "--flavor",
                               "sid"], env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert proc.returncode == guest.EXIT_NEEDS_ROOT, proc.stdout + proc.stderr
        err = proc.stderr
        assert "needs root" in err and "debootstrap" in err, err
        assert (f"sudo env {guest.CACHE_ENV}={cache} {sys.executable} -m pyvirtiofsd.guest "
                f"prepare --flavor sid") in err, err
        assert "Traceback" not in err, err
        assert not trip.exists(), trip.read_text()
        assert not cache.exists()
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
