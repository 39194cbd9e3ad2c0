"""End-to-end live migration: a QEMU 11.1 guest moves between two QEMUs (or through a file), each with its own
pyvirtiofsd daemon serving the same host directory, while a guest process keeps a file open
(writing and reading sequence numbers), a directory open and its cwd on the share.

QEMU migrates guest RAM itself; the daemon's part is the dirty log (every page it writes into
guest memory while the source runs) and the device state (inodes, open handles) that QEMU's
vhost-user-fs device moves with SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE.  The guest runs a
busybox script (no 9p host root: QEMU refuses to migrate a guest with a mounted 9p export).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e

TAG = "share"
RECORDS_BEFORE = 200   # records the guest writes before it says it is ready to be migrated
STOP_FILE = "stop"     # the host creates it in the share once the migration is over

# The guest's part (busybox ash, cwd = the share).  fd 3 appends records, fd 5 reads each one back
# through its own offset, fd 4 holds the directory open; all three were opened before the
# migration and are used after it.  At the end every byte is checked, through fd 5 again and
# through a fresh open of the file by name (relative to the cwd that also moved).
GUEST_SCRIPT = r"""
fail() { echo "PVFS-MIGRATION FAIL $*"; exit 1; }
mkdir -p work && cd work || fail "cd work"
exec 3>>seq.txt 5<seq.txt 4<. || fail "open"
i=0
while :; do
    echo "record $i" >&3 || fail "write $i"
    read -r line <&5 || fail "read $i: end of file"
    [ "$line" = "record $i" ] || fail "read $i: got '$line'"
    ls /proc/self/fd/4/ >/dev/null || fail "open directory at $i"
    i=$((i + 1))
    [ $i = RECORDS_BEFORE ] && echo "PVFS-MIGRATION READY"
    if [ $i -gt RECORDS_BEFORE ] && [ -e ../STOP_FILE ]; then break; fi
done
[ "$(pwd)" = "$PVFS_MOUNT/work" ] || fail "cwd is $(pwd)"
ls /proc/self/fd/4/ | grep -qx seq.txt || fail "seq.txt not listed through the open directory"
n=0
while read -r line; do
    [ "$line" = "record $n" ] || fail "record $n of seq.txt reads '$line'"
    n=$((n + 1))
done < seq.txt
[ $n = $i ] || fail "seq.txt has $n records, $i written"
read -r line <&5 && fail "fd 5 reads past the last record: '$line'"
exec 3>&- 4<&- 5<&-
echo "PVFS-MIGRATION PASS $i"
""".replace("RECORDS_BEFORE", str(RECORDS_BEFORE)).replace("STOP_FILE", STOP_FILE)


class Qmp:
    """A minimal QMP client on a unix socket: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments) -> dict:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Vm:
    """A QEMU 11.1 with vhost-user-fs-pci on ``vhost_socket``, QMP on ``qmp_socket``; the console
    is collected line by line."""

    def __init__(self, name: str, workdir: Path, vhost_socket: Path, extra: list[str]):
        assets = guest.prepare("sid")
        self.qmp_path = workdir / f"{name}.qmp"
        argv = [*guest.sid_qemu(),
                "-object", f"memory-backend-memfd,id=mem,size={guest.GUEST_RAM},share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=char0,path={vhost_socket}",
                "-device", f"vhost-user-fs-pci,chardev=char0,tag={TAG}",
                "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", guest.GUEST_RAM,
                "-nodefaults", "-display", "none", "-no-reboot",
                "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-kernel", str(assets.boot_image), "-initrd", str(assets.initrd),
                "-append", guest.kernel_cmdline(GUEST_SCRIPT, TAG, "/mnt", ""), *extra]
        self.lines: list[str] = []
        self.log = open(workdir / f"{name}.console", "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=guest.sid_env())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.qmp = Qmp(self.qmp_path)

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            self.lines.append(line)
            self.log.write(line + "\n")
            self.log.flush()

    @property
    def console(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [l for l in self.lines if text in l]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                self.reader.join(5)
                found = [l for l in self.lines if text in l]
                if found:
                    return found[0]
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} on the console (QEMU exit {self.proc.poll()}):\n"
                             + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        self.log.close()


def _wait_migration(qmp: Qmp, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = qmp.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"migration not over after {timeout} s: {info}")


@pytest.mark.parametrize("transport", ["unix", "file"])
def test_live_migration_between_two_daemons(tmp_path, transport):
    """``unix``: live, the source runs until switch-over and the destination waits with
    ``-incoming defer``.  ``file``: the source saves to a file (``migrate file:PATH``) and quits;
    a new QEMU, with a new daemon, restores from it."""
    share = tmp_path / "share"
    share.mkdir()
    daemons, vms = [], []
    try:
        sockets = []
        for name in ("src", "dst"):
            sock = tmp_path / f"{name}.sock"
            argv = guest.backend_command("ours", sock, share, None)
            daemons.append(guest.Backend(argv, sock, tmp_path / f"{name}-daemon.log").start())
            sockets.append(sock)
        src = Vm("src", tmp_path, sockets[0], [])
        vms.append(src)
        src.wait_for("PVFS-MIGRATION READY", 120)
        if transport == "unix":
            dst = Vm("dst", tmp_path, sockets[1], ["-incoming", "defer"])
            vms.append(dst)
            uri = f"unix:{tmp_path / 'migration.sock'}"
            dst.qmp.execute("migrate-incoming", uri=uri)
            src.qmp.execute("migrate", uri=uri)
        else:
            uri = f"file:{tmp_path / 'guest.state'}"
            src.qmp.execute("migrate", uri=uri)
        info = _wait_migration(src.qmp, 90)
        assert info["status"] == "completed", (info, daemons[0].log[-3000:], daemons[1].log[-3000:])
        assert src.qmp.execute("query-status")["status"] == "postmigrate"
        if transport == "file":
            src.qmp.execute("quit")
            src.proc.wait(30)
            time.sleep(1)  # the guest's clock stays still; the host's does not
            dst = Vm("dst", tmp_path, sockets[1], ["-incoming", "defer"])
            vms.append(dst)
            dst.qmp.execute("migrate-incoming", uri=uri)
        deadline = time.monotonic() + 60
        while dst.qmp.execute("query-status")["status"] != "running":
            assert dst.proc.poll() is None, dst.console
            assert time.monotonic() < deadline, dst.qmp.execute("query-status")
            time.sleep(0.1)
        if transport == "unix":
            src.qmp.execute("quit")
        # The destination's guest goes on: let it write more, then tell it to stop.
        time.sleep(2)
        (share / STOP_FILE).write_text("")
        line = dst.wait_for("PVFS-MIGRATION ", 120)
        console = "\n".join(src.lines + ["--- destination ---"] + dst.lines)
        assert "PVFS-MIGRATION PASS" in line, (line, console, daemons[1].log[-3000:])
        written = int(line.split()[2])
        assert written > RECORDS_BEFORE
        expected = "".join(f"record {i}\n" for i in range(written))
        assert (share / "work" / "seq.txt").read_text() == expected
        dst.wait_for("PVFS-GUEST-EXIT 0", 60)
        assert "device state saved" in daemons[0].log and "device state loaded" in daemons[1].log
    finally:
        for vm in vms:
            vm.stop()
        for daemon in daemons:
            daemon.stop()


@pytest.mark.parametrize("on_error", ["abort", "guest-error"])
def test_failed_state_load_ends_as_migration_on_error_says(tmp_path, on_error):
    """The destination daemon serves a directory without the guest's files (as if they were
    removed on the host in between), so it cannot find the inodes the state names.

    ``abort``: it refuses the state; the destination QEMU's load fails, the source learns it
    through the return path and its guest runs on, files intact.  ``guest-error``: the state
    loads without those inodes; the guest on the destination runs and its next use of the lost
    file gets an error, never another file's data."""
    share, elsewhere = tmp_path / "share", tmp_path / "elsewhere"
    share.mkdir()
    elsewhere.mkdir()
    daemons, vms = [], []
    try:
        sockets = []
        for name, directory in (("src", share), ("dst", elsewhere)):
            sock = tmp_path / f"{name}.sock"
            argv = [*guest.backend_command("ours", sock, directory, None),
                    "--migration-on-error", on_error]
            daemons.append(guest.Backend(argv, sock, tmp_path / f"{name}-daemon.log").start())
            sockets.append(sock)
        src = Vm("src", tmp_path, sockets[0], [])
        vms.append(src)
        src.wait_for("PVFS-MIGRATION READY", 120)
        dst = Vm("dst", tmp_path, sockets[1], ["-incoming", "defer"])
        vms.append(dst)
        for vm in (src, dst):
            vm.qmp.execute("migrate-set-capabilities",
                           capabilities=[{"capability": "return-path", "state": True}])
        uri = f"unix:{tmp_path / 'migration.sock'}"
        dst.qmp.execute("migrate-incoming", uri=uri)
        src.qmp.execute("migrate", uri=uri)
        info = _wait_migration(src.qmp, 90)
        logs = f"--- src ---\n{daemons[0].log[-2000:]}\n--- dst ---\n{daemons[1].log[-2000:]}"
        if on_error == "abort":
            assert info["status"] == "failed", (info, logs)
            assert dst.proc.wait(60) != 0, dst.console
            assert "inode" in daemons[1].log and "No such file" in daemons[1].log, logs
            deadline = time.monotonic() + 30
            while src.qmp.execute("query-status")["status"] != "running":
                assert time.monotonic() < deadline, src.qmp.execute("query-status")
                time.sleep(0.1)
            # The source's guest goes on with the same fds, every byte checked.
            time.sleep(1)
            (share / STOP_FILE).write_text("")
            line = src.wait_for("PVFS-MIGRATION PASS", 120)   # fails at once on a FAIL line
            written = int(line.split()[2])
            expected = "".join(f"record {i}\n" for i in range(written))
            assert (share / "work" / "seq.txt").read_text() == expected
        else:
            assert info["status"] == "completed", (info, logs)
            deadline = time.monotonic() + 60
            while dst.qmp.execute("query-status")["status"] != "running":
                assert dst.proc.poll() is None, dst.console
                assert time.monotonic() < deadline, dst.qmp.execute("query-status")
                time.sleep(0.1)
            src.qmp.execute("quit")
            # The lost file's fds fail on the destination: the script stops at its first use.
            # which use comes first depends on where the script was when it moved: a write,
            # a read, or the open directory
            line = dst.wait_for("PVFS-MIGRATION FAIL", 120)
            assert any(w in line for w in ("write", "read", "open directory")), (line, logs)
            assert "device state loaded" in daemons[1].log, logs
            assert "lost in transfer (the guest gets EIO) what='inode" in daemons[1].log, logs
            assert not (elsewhere / "work").exists()
    finally:
        for vm in vms:
            vm.stop()
        for daemon in daemons:
            daemon.stop()
