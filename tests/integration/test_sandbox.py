"""The sandbox as the host sees it: what the real daemon process can reach in each mode, its
capabilities, limits and seccomp state (read from /proc/PID), every FUSE operation served in
every mode under the default seccomp kill action, and the supervisor's lifecycle.

The daemon in a confining mode is the supervisor's child: ``served_pid`` finds it."""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from pyvirtiofsd import caps, limits, sandbox
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.frontend import VhostUserFrontend
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID
MODES = ("namespace", "chroot", "none")
CONFINING = ("namespace", "chroot")


def host_supports_tmpfile(directory) -> bool:
    """Whether the host file system under ``directory`` makes O_TMPFILE files (ext4, xfs,
    btrfs, tmpfs do; some others answer EOPNOTSUPP)."""
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600))
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return False
        raise
    return True


def served_pid(daemon, mode: str) -> int:
    """The pid of the process that serves, checking the sandbox shape ``mode`` implies."""
    pid = daemon.serving_pid()
    assert (pid == daemon.proc.pid) == (mode == "none"), f"{mode}: supervisor {daemon.proc.pid}, server {pid}"
    return pid


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def interfaces(pid: int) -> set[str]:
    with open(f"/proc/{pid}/net/dev") as f:
        return {line.split(":")[0].strip() for line in f.readlines()[2:]}


def mount_points(pid: int) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split()[4] for line in f]


def proc_fd_of(pid: int) -> str:
    """The path, from the host, of the daemon's /proc/self/fd descriptor (the passthrough's)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/proc/") and target.endswith("/fd"):
            return f"/proc/{pid}/fd/{fd}"
    raise AssertionError(f"no /proc/self/fd descriptor in {os.listdir(f'/proc/{pid}/fd')}")


# -- what the daemon can reach ------------------------------------------------------------


def test_namespace_daemon_sees_only_the_share_and_its_own_proc(shared, start_daemon, connect):
    (shared / "file").write_text("shared\n")
    d = start_daemon()
    connect(d)
    pid = served_pid(d, "namespace")
    # pid 1 of its own pid namespace, a child of the supervisor in ours.
    assert status(pid)["NSpid"].split() == [str(pid), "1"]
    assert status(pid)["PPid"] == str(d.proc.pid)
    # Network: its own namespace, loopback only.
    assert interfaces(pid) == {"lo"}
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    # File system: a read-only root holding the share and a proc, nothing else.
    root = f"/proc/{pid}/root"
    assert sorted(os.listdir(root)) == ["proc", "shared"]
    assert (open(f"{root}/shared/file").read()) == "shared\n"
    assert sorted(mount_points(pid)) == ["/", "/proc", "/shared"]
    with pytest.raises(OSError) as e:
        open(f"{root}/new", "w")
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    # Its /proc shows its own pid namespace: one process.
    assert {n for n in os.listdir(f"{root}/proc") if n.isdigit()} == {"1"}
    with open(f"{root}/proc/1/status") as f:
        inside = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert inside["Pid"] == "1" and inside["Tgid"] == "1" and inside["PPid"] == "0"
    assert inside["CapEff"] == status(pid)["CapEff"]


def test_namespace_proc_descriptor_leads_nowhere_else(start_daemon, connect):
    """Walking up from the passthrough's /proc/self/fd descriptor, as far as ``..`` goes,
    ends at the daemon's own root: the host's root was detached from under it."""
    d = start_daemon()
    connect(d)
    pid = served_pid(d, "namespace")
    assert sorted(os.listdir(proc_fd_of(pid) + "/../../../../../../..")) == ["proc", "shared"]


RESOLVE_AS = """
import json, os, sys
root, names = sys.argv[1], sys.argv[2:]
os.chroot(root)
os.chdir("/")
out = {}
for name in names:
    try:
        with open(name) as f:
            out[name] = f.read()
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
"""


def resolve_in_root_of(pid: int, *paths: str) -> dict:
    """Open ``paths`` from inside the daemon's root (a process chrooted to /proc/PID/root
    resolves names, absolute symlinks included, exactly as the daemon would); a file's
    content or the errno."""
    r = subprocess.run([sys.executable, "-c", RESOLVE_AS, f"/proc/{pid}/root", *paths],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("mode", MODES)
def test_symlinks_to_host_files_resolve_to_nothing_in_the_daemons_root(shared, start_daemon,
                                                                       connect, mode):
    """The guest makes symlinks to host files; followed inside the daemon's root (where the
    daemon would follow them, were it ever tricked into it) they find nothing.  ``none``
    is the control: there the same names reach the host's /etc/passwd."""
    host = open("/etc/passwd").read()
    targets = {"abs": "/etc/passwd", "rel": "../" * 12 + "etc/passwd",
               "init": "/proc/1/root/etc/passwd", "self": "/proc/self/root/etc/passwd",
               "cwd": "/proc/self/cwd/../../../../etc/passwd"}
    for name, target in targets.items():
        os.symlink(target, shared / name)
    d = start_daemon("--sandbox", mode)
    connect(d)
    pid = served_pid(d, mode)
    inside = {"namespace": "/shared", "chroot": "/", "none": str(shared)}[mode]
    got = resolve_in_root_of(pid, *(os.path.join(inside, n) for n in targets))
    if mode == "none":
        assert got[os.path.join(inside, "abs")] == host
        return
    for path, result in got.items():
        assert result in (errno.ENOENT, errno.EACCES, errno.ELOOP), (path, result)


def test_chroot_daemon_root_is_the_share(shared, start_daemon, connect):
    d = start_daemon("--sandbox", "chroot")
    connect(d)
    pid = served_pid(d, "chroot")
    assert os.path.samefile(f"/proc/{pid}/root", shared)
    # Its working directory is its own fd directory: how it reaches /proc inside the chroot.
    assert os.path.samefile(f"/proc/{pid}/cwd", f"/proc/{pid}/fd")
    assert status(pid)["NSpid"].split() == [str(pid)]   # no pid namespace in this mode


def test_inherited_descriptors_are_closed(tmp_path, shared):
    """A descriptor the daemon's parent left open on a host directory would be a way out."""
    path = tmp_path / "fd.sock"
    leak = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(path),
                                 "--shared-dir", str(shared)], pass_fds=(leak,),
                                stderr=subprocess.PIPE, text=True)
    finally:
        os.close(leak)
    try:
        fe = VhostUserFrontend(str(path)).connect()   # answered: the daemon is set up
        pid = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [t for t in targets if t.startswith(str(tmp_path))], targets
        fe.close()
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- capabilities, limits, seccomp ----------------------------------------------------------


def cap_sets(pid: int) -> dict[str, frozenset[str]]:
    s = status(pid)
    return {k: caps.names_of(int(s[k], 16)) for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}


@pytest.mark.parametrize("mode", MODES)
def test_capabilities_are_virtiofsds_set(start_daemon, connect, mode):
    d = start_daemon("--sandbox", mode)
    connect(d)
    sets = cap_sets(served_pid(d, mode))
    # virtiofsd's set, and CAP_DAC_READ_SEARCH for --inode-file-handles=prefer (the default)
    assert sets["CapEff"] == sets["CapPrm"] == sets["CapBnd"] == caps.DEFAULT | {"dac_read_search"}
    assert sets["CapInh"] == sets["CapAmb"] == frozenset()


def test_without_file_handles_the_set_is_virtiofsds_default(start_daemon, connect):
    d = start_daemon("--inode-file-handles", "never")
    connect(d)
    assert cap_sets(served_pid(d, "namespace"))["CapEff"] == caps.DEFAULT


def test_modcaps_adds_and_removes(start_daemon, connect):
    d = start_daemon("--modcaps=+sys_admin:-mknod:-cap_setfcap")
    connect(d)
    sets = cap_sets(served_pid(d, "namespace"))
    assert sets["CapEff"] == (caps.DEFAULT | {"sys_admin", "dac_read_search"}) - {"mknod", "setfcap"}


def test_without_cap_mknod_device_nodes_are_refused(shared, start_daemon, connect):
    rdev = os.makedev(1, 3)  # /dev/null's numbers
    d = start_daemon("--modcaps=-mknod")
    client = connect(d)
    with pytest.raises(PermissionError):
        client.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, rdev)
    client.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644)  # needs no capability
    assert stat.S_ISFIFO(os.lstat(shared / "fifo").st_mode)
    assert not os.path.lexists(shared / "null")


def test_without_cap_setuid_a_guest_user_cannot_create_as_themself(shared, start_daemon, connect):
    """setfsuid needs CAP_SETUID: without it the create is refused, never done as root."""
    d = start_daemon("--modcaps=-setuid")
    client = connect(d)
    client.mkdir(ROOT, b"open", mode=0o777)
    os.chmod(shared / "open", 0o777)
    with pytest.raises(PermissionError):
        client.mknod(client.lookup(ROOT, b"open")[0].nodeid, b"f", stat.S_IFREG | 0o644,
                     uid=1000, gid=1000)
    assert os.listdir(shared / "open") == []


def test_bad_modcaps_is_a_command_line_error(shared, tmp_path):
    for bad, message in (("sys_admin", "expected +name or -name"), ("+nonsense", "unknown capability"),
                         ("+mknod:-mknod", "both added and removed")):
        r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--socket-path",
                            str(tmp_path / "s"), "--shared-dir", str(shared), "--modcaps", bad],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 2 and message in r.stderr, (bad, r.stderr)


def open_file_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_rlimit_nofile_default_and_explicit(start_daemon, connect):
    d = start_daemon()
    connect(d)
    soft, hard = open_file_limit(served_pid(d, "namespace"))
    # The default when CAP_SYS_RESOURCE lets the hard limit rise; the hard limit otherwise.
    may_raise = "sys_resource" in caps.names_of(caps.current()[0])
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert soft == hard == (limits.default_nofile() if may_raise else max(ours, soft))
    d2 = start_daemon("--rlimit-nofile", "4096", socket_name="b.sock")
    connect(d2)
    assert open_file_limit(served_pid(d2, "namespace")) == (4096, 4096)


@pytest.mark.parametrize("mode", MODES)
def test_seccomp_filter_is_on_in_every_mode(start_daemon, connect, mode):
    d = start_daemon("--sandbox", mode)
    connect(d)
    s = status(served_pid(d, mode))
    assert s["Seccomp"] == "2" and s["NoNewPrivs"] == "1"
    assert int(s["Seccomp_filters"]) >= 1


def test_seccomp_none_loads_no_filter(start_daemon, connect):
    d = start_daemon("--seccomp", "none")
    connect(d)
    assert status(served_pid(d, "namespace"))["Seccomp"] == "0"


def test_defaults_are_namespace_and_kill():
    """Every other integration test runs the daemon with these defaults: the whole suite
    passing is the proof that the allow-list covers it."""
    from pyvirtiofsd.cli import build_parser

    args = build_parser().parse_args(["--shared-dir", "/"])
    assert (args.sandbox, args.seccomp) == ("namespace", "kill")


# -- every FUSE operation in every mode, under seccomp kill ----------------------------------


def exercise_every_operation(client, shared) -> None:
    """One of each FUSE request the server handles, checked on the host side."""
    # names, directories, files
    sub = client.mkdir(ROOT, b"dir", mode=0o755)[0].nodeid
    head, attr, opened = client.create(sub, b"file", mode=0o640)
    f, fh = head.nodeid, opened.fh
    assert client.write(f, fh, 0, b"hello world" * 1000) == 11000
    assert client.read(f, fh, 6, 5) == b"world"
    client.flush(f, fh)
    client.fsync(f, fh)
    client.fsync(f, fh, datasync=True)
    fa = abi.fuse_fallocate_in.build(fh=fh, offset=0, length=1 << 20, mode=0)
    client.check(Opcode.FUSE_FALLOCATE, f, fa)
    seek = client.check(Opcode.FUSE_LSEEK, f, abi.fuse_lseek_in.build(fh=fh, offset=0, whence=os.SEEK_DATA),
                        abi.fuse_lseek_out.size)
    assert abi.fuse_lseek_out.parse(seek).offset == 0
    copy_head, _, copy_open = client.create(sub, b"copy")
    cfr = abi.fuse_copy_file_range_in.build(fh_in=fh, off_in=0, nodeid_out=copy_head.nodeid,
                                            fh_out=copy_open.fh, off_out=0, len=11, flags=0)
    assert abi.fuse_write_out.parse(client.check(Opcode.FUSE_COPY_FILE_RANGE, f, cfr,
                                                 abi.fuse_write_out.size)).size == 11
    client.release(copy_head.nodeid, copy_open.fh)
    client.release(f, fh)
    assert (shared / "dir" / "copy").read_bytes() == b"hello world"
    fh = client.open(f, os.O_RDONLY).fh
    assert client.read(f, fh, 0, 5) == b"hello"
    client.release(f, fh)
    # attributes
    client.getattr(f)
    sx = abi.fuse_statx_in.build(getattr_flags=0, fh=0, sx_flags=0, sx_mask=0x7ff)
    client.check(Opcode.FUSE_STATX, f, sx, abi.FUSE_STATX_OUT_SIZE)
    client.setattr(f, valid=abi.FATTR_MODE, mode=stat.S_IFREG | 0o600)
    client.setattr(f, valid=abi.FATTR_SIZE, size=5)
    client.setattr(f, valid=abi.FATTR_UID | abi.FATTR_GID, uid=1234, gid=4321)
    client.setattr(f, valid=abi.FATTR_ATIME | abi.FATTR_MTIME, atime=1_000_000, mtime=2_000_000)
    st = os.stat(shared / "dir" / "file")
    assert (stat.S_IMODE(st.st_mode), st.st_size, st.st_uid, st.st_gid, int(st.st_mtime)) == \
        (0o600, 5, 1234, 4321, 2_000_000)
    client.check(Opcode.FUSE_ACCESS, f, abi.fuse_access_in.build(mask=os.R_OK))
    # created as the calling guest user
    client.mkdir(ROOT, b"pub", mode=0o777)
    os.chmod(shared / "pub", 0o777)
    pub = client.lookup(ROOT, b"pub")[0].nodeid
    client.mknod(pub, b"users", stat.S_IFREG | 0o644, uid=1000, gid=1000)
    assert (os.stat(shared / "pub" / "users").st_uid, os.stat(shared / "pub" / "users").st_gid) == (1000, 1000)
    # extended attributes (the daemon runs with --xattr)
    set_in = abi.fuse_setxattr_in.build(size=5, flags=0)[:abi.FUSE_COMPAT_SETXATTR_IN_SIZE]
    client.check(Opcode.FUSE_SETXATTR, f, set_in + b"user.k\0" + b"value")
    got = client.check(Opcode.FUSE_GETXATTR, f, abi.fuse_getxattr_in.build(size=64) + b"user.k\0", 64)
    assert got == b"value"
    names = client.check(Opcode.FUSE_LISTXATTR, f, abi.fuse_getxattr_in.build(size=256), 256)
    assert b"user.k\0" in names
    client.check(Opcode.FUSE_REMOVEXATTR, f, b"user.k\0")
    assert os.listxattr(shared / "dir" / "file") == []
    # links, symlinks, special files, renames
    client.link(f, ROOT, b"hard")
    assert os.stat(shared / "hard").st_ino == os.stat(shared / "dir" / "file").st_ino
    ln = client.symlink(ROOT, b"sym", b"dir/file")[0].nodeid
    assert client.readlink(ln) == b"dir/file"
    # LISTXATTR on a symlink lists the link's own names (through the /proc magic link, which
    # never follows the link): exactly what the host lists for it without following, and not
    # the target's -- which gets a name of its own here to tell the two apart.
    os.setxattr(shared / "dir" / "file", "user.target_only", b"t")
    sym_names = client.call(Opcode.FUSE_LISTXATTR, ln, abi.fuse_getxattr_in.build(size=256), 256)
    own = b"".join(os.fsencode(n) + b"\0" for n in os.listxattr(shared / "sym", follow_symlinks=False))
    assert (sym_names.error, sym_names.body) == (0, own)
    assert b"user.target_only" not in sym_names.body
    os.removexattr(shared / "dir" / "file", "user.target_only")
    client.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644)
    client.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert stat.S_ISCHR(os.lstat(shared / "null").st_mode)
    client.rename(ROOT, b"hard", sub, b"moved")
    client.rename(ROOT, b"fifo", ROOT, b"sym", flags=2)  # RENAME_EXCHANGE
    assert stat.S_ISFIFO(os.lstat(shared / "sym").st_mode)
    tmp_in = abi.fuse_create_in.build(flags=os.O_RDWR, mode=stat.S_IFREG | 0o600, umask=0)
    names_before = sorted(os.listdir(shared / "dir"))
    tmp = client.call(Opcode.FUSE_TMPFILE, sub, tmp_in, abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size)
    if host_supports_tmpfile(shared / "dir"):
        # the daemon opens "." of the parent with O_TMPFILE: an unnamed, open, usable file
        assert tmp.error == 0, errno.errorcode.get(-tmp.error, tmp.error)
        head, attr = client.parse_entry(tmp.body)
        assert (stat.S_IFMT(attr.mode), stat.S_IMODE(attr.mode), attr.nlink) == (stat.S_IFREG, 0o600, 0)
        tfh = abi.fuse_open_out.parse(tmp.body, abi.FUSE_ENTRY_OUT_SIZE).fh
        assert client.write(head.nodeid, tfh, 0, b"unnamed") == 7
        assert client.read(head.nodeid, tfh, 0, 64) == b"unnamed"
        client.release(head.nodeid, tfh)
    else:
        # the host file system's own answer; ENOSYS (no handler) would be a daemon bug
        assert tmp.error == -errno.EOPNOTSUPP
    assert sorted(os.listdir(shared / "dir")) == names_before
    # directories
    listed = {e[3] for e in client.listdir(sub)} | {e[3] for e in client.listdir(ROOT, plus=True)}
    assert {b"file", b"moved", b"copy", b"dir", b"sym", b"null"} <= listed
    dfh = client.opendir(sub).fh
    client.check(Opcode.FUSE_FSYNCDIR, sub, abi.fuse_fsync_in.build(fh=dfh))
    client.release(sub, dfh, dir=True)
    client.statfs()
    client.check(Opcode.FUSE_SYNCFS, ROOT, abi.fuse_syncfs_in.build())
    # removal and forgetting
    client.unlink(sub, b"moved")
    client.unlink(sub, b"copy")
    client.unlink(ROOT, b"null")
    client.forget(ln)
    forget = abi.fuse_batch_forget_in.build(count=1) + abi.fuse_forget_one.build(nodeid=pub, nlookup=1)
    client.reap(client.submit(Opcode.FUSE_BATCH_FORGET, 0, forget, queue=0, no_reply=True))
    client.unlink(sub, b"file")
    client.rmdir(ROOT, b"dir")
    assert not (shared / "dir").exists()
    client.getattr(ROOT)  # the daemon is still there


@pytest.mark.parametrize("mode", MODES)
def test_every_operation_in_every_mode(shared, start_daemon, connect, mode):
    d = start_daemon("--sandbox", mode, "--xattr")
    client = connect(d)
    exercise_every_operation(client, shared)
    client.fe.close()
    assert d.wait() == 0, d.log()
    assert "seccomp refused" not in d.log()


def test_every_operation_with_several_queues_and_no_pool(shared, start_daemon, connect):
    d = start_daemon("--xattr", "--thread-pool-size", "0", "--num-request-queues", "2")
    exercise_every_operation(connect(d), shared)


# -- lifecycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", CONFINING)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_supervisor_stops_the_daemon_cleanly(start_daemon, connect, mode, sig):
    d = start_daemon("--sandbox", mode)
    connect(d)
    pid = served_pid(d, mode)
    d.proc.send_signal(sig)
    assert d.wait() == 0
    assert not os.path.exists(d.socket_path)
    assert not os.path.exists(f"/proc/{pid}")
    assert "terminating" in d.log()


@pytest.mark.parametrize("mode", CONFINING)
def test_front_end_disconnect_exits_0(start_daemon, connect, mode):
    d = start_daemon("--sandbox", mode)
    client = connect(d)
    client.fe.close()
    assert d.wait() == 0
    assert not os.path.exists(d.socket_path)
    assert "front-end disconnected" in d.log()


def test_sigterm_before_the_daemon_is_ready(shared, tmp_path):
    """Signals that arrive while the daemon is still confining itself are not lost (as pid 1
    it would drop any signal it has no handler for)."""
    path = tmp_path / "early.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(path),
                             "--shared-dir", str(shared)], stderr=subprocess.PIPE)
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.001)
    proc.terminate()
    assert proc.wait(10) == 0
    assert not path.exists()


def test_the_daemon_dying_is_mirrored_by_the_supervisor(start_daemon, connect):
    d = start_daemon()
    connect(d)
    os.kill(served_pid(d, "namespace"), signal.SIGKILL)
    assert d.wait() == -signal.SIGKILL
    assert not os.path.exists(d.socket_path)


@pytest.mark.parametrize("mode", CONFINING)
def test_the_supervisor_is_a_small_c_program(start_daemon, connect, mode):
    """No second interpreter: the process that forked the daemon became the supervisor
    program, which maps no Python and no extension and holds little memory of its own."""
    d = start_daemon("--sandbox", mode)
    connect(d).getattr(ROOT)
    served_pid(d, mode)
    assert os.readlink(f"/proc/{d.proc.pid}/exe") == sandbox.SUPERVISOR
    with open(f"/proc/{d.proc.pid}/maps") as f:
        mapped = {line.split()[-1] for line in f if len(line.split()) >= 6}
    assert not [m for m in mapped if "python" in m or "_cext" in m or "libssl" in m], mapped
    with open(f"/proc/{d.proc.pid}/smaps_rollup") as f:
        kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f
                                                  if line.split(":", 1)[1].strip().endswith("kB"))}
    assert kib["Rss"] < 4096 and kib["Pss_Anon"] < 1024, kib


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_the_supervisor_logs_as_the_daemon_does(start_daemon, connect, fmt):
    """The supervisor's lines (a C program's) are the daemon's format: the death it mirrors
    as a JSON object, or as a console line with its keys, beside the daemon's own lines."""
    d = start_daemon("--log-format", fmt)
    connect(d)
    os.kill(served_pid(d, "namespace"), signal.SIGKILL)
    assert d.wait() == -signal.SIGKILL
    lines = [line for line in d.log().splitlines() if line.strip()]
    if fmt == "json":
        records = [json.loads(line) for line in lines]     # every line, ours and the C's
        loaded = [r for r in records if r["event"] == "seccomp filter loaded"
                  and r.get("process") == "supervisor"]
        assert loaded and loaded[0]["action"] == "kill" and loaded[0]["rules"] > 10
        assert loaded[0]["level"] == "debug" and loaded[0]["timestamp"].endswith("Z")
        killed = [r for r in records if r["event"] == "the sandboxed daemon was killed"]
        assert killed == [{"signal": "SIGKILL", "event": "the sandboxed daemon was killed",
                           "level": "error", "timestamp": killed[0]["timestamp"]}]
        # the same clock as the daemon's lines: UTC, ISO, microseconds
        assert abs(time.mktime(time.strptime(killed[0]["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
                   - time.mktime(time.gmtime())) < 60
    else:
        killed = [line for line in lines if "the sandboxed daemon was killed" in line]
        assert len(killed) == 1 and killed[0].endswith(" signal=SIGKILL"), killed
        assert "[error    ] the sandboxed daemon was killed " in killed[0]
        assert any("[debug    ] seccomp filter loaded          action=kill process=supervisor "
                   "rules=" in line for line in lines), lines


def test_the_daemon_does_not_outlive_its_supervisor(start_daemon, connect):
    d = start_daemon()
    connect(d)
    pid = served_pid(d, "namespace")
    d.proc.kill()
    d.proc.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and status(pid).get("State", "").split()[0] != "Z":
        assert time.monotonic() < deadline, "the daemon survived its supervisor"
        time.sleep(0.02)


def test_usr1_is_forwarded_not_fatal(start_daemon, connect):
    d = start_daemon("--stats")
    client = connect(d)
    d.proc.send_signal(signal.SIGUSR1)
    client.getattr(ROOT)
    time.sleep(0.2)
    assert d.proc.poll() is None
    client.getattr(ROOT)


def test_stale_socket_replaced_and_refusals_still_work(tmp_path, shared, start_daemon, connect):
    path = tmp_path / "vfs.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    d = start_daemon("--sandbox", "chroot")
    connect(d).getattr(ROOT)


# -- the import system after confinement ---------------------------------------------------


def test_imports_are_sealed_after_confinement(tmp_path):
    """A module the daemon had not loaded before confinement cannot be found afterwards --
    in chroot mode the file system it would be found on is the guest's."""
    (tmp_path / "planted.py").write_text("print('planted code ran')\n")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from pyvirtiofsd import sandbox\n"
            "sandbox.seal_imports()\n"
            "try:\n    import planted\nexcept ModuleNotFoundError:\n    print('sealed')\n"
            "import itertools  # built in: still fine\n") % str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                       cwd=tmp_path)
    assert "planted code ran" not in r.stdout
    assert "sealed" in r.stdout, r.stderr


# -- where namespaces are not allowed ------------------------------------------------------


def run_without(cap: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run the daemon as root but with ``cap`` out of its bounding set (what a container
    that forbids namespaces looks like), until it exits."""
    return subprocess.run(["setpriv", f"--bounding-set=-{cap}", "--inh-caps=-all", "--",
                           sys.executable, "-m", "pyvirtiofsd", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_namespace_mode_without_cap_sys_admin_is_a_clear_error(tmp_path, shared):
    r = run_without("sys_admin", "--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(shared))
    assert r.returncode == 1
    assert "sandbox: unshare(CLONE_NEWPID): Operation not permitted" in r.stderr
    assert "--sandbox chroot" in r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_chroot_mode_works_without_cap_sys_admin(tmp_path, shared):
    """The reason chroot mode exists.  The daemon is stopped by its front-end leaving."""
    path = tmp_path / "s.sock"
    proc = subprocess.Popen(["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-all", "--",
                             sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(path),
                             "--shared-dir", str(shared), "--sandbox", "chroot", "--xattr"],
                            stderr=subprocess.PIPE, text=True)
    try:
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        fe = VhostUserFrontend(str(path)).connect()
        from pyvirtiofsd.frontend import FuseClient

        client = FuseClient(fe)
        client.init()
        exercise_every_operation(client, shared)
        fe.close()
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("mode", CONFINING)
def test_the_unwinder_is_loaded_before_confinement(start_daemon, connect, mode):
    """glibc dlopens libgcc_s when a thread first calls pthread_exit (Python's threads do at
    exit); inside the sandbox that would fail and abort the daemon: it must be mapped
    already (sandbox._preload_unwinder)."""
    d = start_daemon("--sandbox", mode)
    connect(d)
    with open(f"/proc/{d.serving_pid()}/maps") as f:
        assert "libgcc_s.so.1" in f.read()
