"""qemu-configs/: every ready setup exercised for real.

* Each QEMU config goes through ``launch.sh --check``: our daemon starts, the real QEMU (7.2,
  or sid's 11.1 for the DAX one) reads the config, realizes the device -- which connects to
  the daemon -- and reports the device's properties.  No guest runs; about a second each.
* basic, multiqueue, readonly and hugepages also boot a real guest through ``launch.sh``
  (marked e2e; ~10-20 s each under TCG).
* The libvirt domain validates against libvirt's own schema, and the command line libvirt
  builds from it starts our daemon, which then serves a front-end.
* The systemd units pass ``systemd-analyze verify``, and the unit's ExecStart runs under
  ``systemd-socket-activate`` -- systemd's own fd-3 protocol -- and serves a front-end.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pyvirtiofsd import guest
from pyvirtiofsd.cli import parse_args
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

CONFIGS = Path(__file__).resolve().parents[2] / "qemu-configs"
LAUNCH = CONFIGS / "launch.sh"
SCRIPTS = Path(sys.executable).parent          # the venv's console scripts
HOSTROOT = "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
SETUPS = ("basic", "hugepages", "multiqueue", "readonly", "dax")
HUGEPAGES_NEEDED = 512                          # 1 GiB of 2 MiB pages: the configs' RAM


def launch_env(**extra: str) -> dict[str, str]:
    """TCG (this machine's /dev/kvm refuses -cpu max); launch.sh picks one TCG thread or
    several by the guest's vCPU count against the host's cores."""
    return {**os.environ, "PYVIRTIOFSD": f"{sys.executable} -m pyvirtiofsd", "ACCEL": "tcg",
            **extra}


def run_check(setup: str, tmp_path: Path, *, env: dict[str, str] | None = None,
              backend_args: str = "") -> tuple[dict[str, str], str, str]:
    """``launch.sh --check SETUP``: (device properties, PCI BAR lines, back-end log)."""
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    sock = tmp_path / f"{setup}.sock"
    r = subprocess.run([str(LAUNCH), "--check", setup, "-d", str(share), "-s", str(sock)],
                       env={**(env or launch_env()), "BACKEND_ARGS": backend_args},
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    log = Path(f"{sock}.log").read_text() if Path(f"{sock}.log").exists() else ""
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n--- back-end log ---\n{log}"
    props = dict(re.findall(r"^(\S+) = (.*)$", r.stdout, re.M))
    bars = "\n".join(line for line in r.stdout.splitlines() if line.startswith("pci bar"))
    return props, bars, log


# --- every config is read by QEMU and connects to our daemon -----------------------------

@pytest.mark.parametrize("setup,tag,queues", [
    ("basic", '"share"', "1 (0x1)"),
    ("multiqueue", '"share"', "4 (0x4)"),
    ("readonly", '"share-ro"', "1 (0x1)"),
])
def test_qemu72_reads_the_config_and_connects(tmp_path, setup, tag, queues):
    props, _, log = run_check(setup, tmp_path)
    assert props["chardev"] == '"char0"'
    assert props["tag"] == tag
    assert props["num-request-queues"] == queues
    assert props["queue-size"] == "128 (0x80)"
    assert "front-end connected" in log and "front-end disconnected" in log


def test_dax_config_on_qemu111_gets_its_window_from_the_back_end(tmp_path):
    guest.prepare_sid()
    env = launch_env(QEMU=shlex.join(guest.sid_qemu()),
                     QEMU_MODULE_DIR=guest.sid_env()["QEMU_MODULE_DIR"])
    props, bars, log = run_check("dax", tmp_path, env=env, backend_args="--log-level debug")
    assert props["virtio-id"] == "26 (0x1a)"
    assert props["num_vqs"] == "2 (0x2)" and props["config_size"] == "40 (0x28)"
    assert "request=GET_SHMEM_CONFIG" in log
    # The 1 GiB cache window the back-end announced is a BAR of the device.
    sizes = [int(m, 16) + 2 for m in re.findall(r"\[(0x[0-9a-f]+)\]", bars)]
    assert 1 << 30 in sizes, bars


def test_dax_setup_refuses_a_qemu_without_the_window(tmp_path):
    (tmp_path / "share").mkdir()
    r = subprocess.run([str(LAUNCH), "--check", "dax", "-d", str(tmp_path / "share"),
                        "-s", str(tmp_path / "s.sock")], env=launch_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs QEMU >= 11.1" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["nosuch", "-d", "/tmp"], "unknown setup 'nosuch'"),
    (["basic"], "a shared directory is needed"),
    (["basic", "-d", "/tmp"], "a kernel (-k) and an initrd (-i) are needed"),
])
def test_launch_usage_errors(args, message):
    r = subprocess.run([str(LAUNCH), *args], env=launch_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and message in r.stderr


def test_every_config_has_a_setup_and_every_setup_a_config():
    cfgs = {p.stem for p in CONFIGS.glob("*.cfg")}
    assert cfgs == set(SETUPS)
    text = LAUNCH.read_text()
    for setup in SETUPS:
        assert re.search(rf"^\s+{setup}\)", text, re.M), f"launch.sh has no case for {setup}"


# --- huge pages ------------------------------------------------------------------------

def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture(scope="module")
def hugepages():
    """hugetlbfs on /dev/hugepages with 512 free 2 MiB pages, as hugepages.cfg expects;
    everything put back afterwards."""
    nr_path = Path("/proc/sys/vm/nr_hugepages")
    before = int(nr_path.read_text())
    mounted = any(line.split()[1:3] == ["/dev/hugepages", "hugetlbfs"]
                  for line in Path("/proc/mounts").read_text().splitlines())
    created = not os.path.exists("/dev/hugepages")
    if not mounted:
        os.makedirs("/dev/hugepages", exist_ok=True)
        subprocess.run(["mount", "-t", "hugetlbfs", "hugetlbfs", "/dev/hugepages"], check=True)
    short = HUGEPAGES_NEEDED - _meminfo("HugePages_Free")
    if short > 0:
        nr_path.write_text(str(before + short))
    try:
        free = _meminfo("HugePages_Free")
        assert free >= HUGEPAGES_NEEDED, (
            f"the host gave only {free} free huge pages of the {HUGEPAGES_NEEDED} needed")
        yield
    finally:
        nr_path.write_text(str(before))
        if not mounted:
            subprocess.run(["umount", "/dev/hugepages"], check=True)
            if created:
                os.rmdir("/dev/hugepages")


def test_hugepages_config_maps_guest_ram_from_hugetlbfs(tmp_path, hugepages):
    props, _, log = run_check("hugepages", tmp_path)
    assert props["tag"] == '"share"' and "front-end connected" in log


# --- booting real guests through launch.sh ----------------------------------------------

def _log_end(sock: Path) -> str:
    """The end of the back-end log launch.sh writes next to the socket."""
    log = Path(f"{sock}.log")
    return log.read_text()[-3000:] if log.exists() else "(none)"


def boot(setup: str, share: Path, workdir: Path, command: str, *, tag: str = "share",
         flavor: str = "bookworm", timeout: float = 300, during=None) -> guest.GuestResult:
    """``launch.sh SETUP`` with a guest that runs ``command`` (see pyvirtiofsd.guest)."""
    assets = guest.prepare(flavor)
    sock = workdir / f"{setup}.sock"
    argv = [str(LAUNCH), setup, "-d", str(share), "-s", str(sock), "-t", tag,
            "-k", str(assets.boot_image), "-i", str(assets.initrd),
            "-a", guest.kernel_cmdline(command, tag, "/mnt", ""), "--", "-virtfs", HOSTROOT]
    t0 = time.monotonic()
    # Its own process group: on a timeout QEMU and the daemon, launch.sh's children, hold the
    # pipe open, so killing launch.sh alone would leave communicate() waiting for ever.
    proc = subprocess.Popen(argv, env=launch_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    watcher = threading.Thread(target=during, args=(proc,), daemon=True) if during else None
    if watcher:
        watcher.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        raise guest.GuestTimeout(f"{setup} guest still running after {timeout} s; back-end log:\n"
                                 + _log_end(sock), out.decode(errors="replace"))
    if watcher:
        watcher.join(5)
    console = out.decode(errors="replace").replace("\r", "")
    (workdir / f"{setup}-console.log").write_text(console)
    print(f"\n[e2e] launch.sh {setup} ({flavor}): {time.monotonic() - t0:.1f} s")
    exits = re.findall(rf"^{guest.EXIT_MARKER} (\d+)", console, re.M)
    if proc.returncode != 0 or not exits or guest.ERROR_MARKER in console:
        raise guest.GuestError(f"launch.sh {setup} exited {proc.returncode}; back-end log:\n"
                               + _log_end(sock), console)
    return guest.GuestResult(int(exits[-1]), console, 0.0, time.monotonic() - t0)


@pytest.mark.e2e
def test_basic_guest_reads_and_writes(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host.txt").write_text("written by the host\n")
    result = boot("basic", share, tmp_path,
                  "cat from-host.txt && mkdir sub && echo 'written by the guest' > sub/g.txt"
                  " && ls -1 . sub && cat sub/g.txt").check()
    assert "written by the host" in result.output
    assert (share / "sub" / "g.txt").read_text() == "written by the guest\n"
    assert "g.txt" in result.output


@pytest.mark.e2e
def test_multiqueue_guest_uses_all_four_request_queues(tmp_path):
    """A 7.x guest kernel maps each vCPU to its own request queue: one request from each
    CPU must come back on four different queues (the interrupt counts per queue show it)."""
    share = tmp_path / "share"
    share.mkdir()
    command = ("for c in 0 1 2 3; do taskset -c $c sh -c \"echo cpu$c > f$c && cat f$c\"; done;"
               " grep 'requests' /proc/interrupts")
    result = boot("multiqueue", share, tmp_path, command, flavor="sid").check()
    assert [f"cpu{c}" for c in range(4)] == [l for l in result.output.split() if l.startswith("cpu")]
    counts = {}
    for line in result.output.splitlines():
        m = re.search(r"virtio\d+-requests\.(\d+)$", line.strip())
        if m:
            counts[int(m.group(1))] = sum(int(f) for f in line.split()[1:5] if f.isdigit())
    assert sorted(counts) == [0, 1, 2, 3], result.output
    assert all(n > 0 for n in counts.values()), f"unused request queues: {counts}"
    assert {f.name for f in share.iterdir()} == {"f0", "f1", "f2", "f3"}


@pytest.mark.e2e
def test_readonly_guest_reads_and_every_write_is_erofs(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "keep.txt").write_text("read-only content\n")
    command = ("cat keep.txt; for op in 'echo x > new.txt' 'mkdir d' 'rm keep.txt' "
               "'echo y >> keep.txt' 'touch keep.txt' 'mv keep.txt k2' 'ln -s a b'; do "
               "if sh -c \"$op\" 2>/tmp/err; then echo \"WROTE: $op\"; "
               "else echo \"REFUSED: $op: $(cat /tmp/err)\"; fi; done")
    result = boot("readonly", share, tmp_path, command, tag="share-ro").check()
    assert "read-only content" in result.output
    refused = [l for l in result.output.splitlines() if l.startswith("REFUSED")]
    assert "WROTE" not in result.output, result.output
    assert len(refused) == 7 and all("Read-only file system" in l for l in refused), refused
    assert sorted(p.name for p in share.iterdir()) == ["keep.txt"]
    assert (share / "keep.txt").read_text() == "read-only content\n"


@pytest.mark.e2e
def test_hugepages_guest_runs_on_huge_pages(tmp_path, hugepages):
    share = tmp_path / "share"
    share.mkdir()
    lowest = [_meminfo("HugePages_Free")]

    def watch(proc):
        while proc.poll() is None:
            lowest.append(min(lowest[-1], _meminfo("HugePages_Free")))
            time.sleep(0.1)

    result = boot("hugepages", share, tmp_path,
                  "dd if=/dev/urandom of=r.bin bs=1M count=4 2>/dev/null && sha256sum r.bin",
                  during=watch).check()
    digest = result.output.split()[0]
    assert hashlib.sha256((share / "r.bin").read_bytes()).hexdigest() == digest
    assert min(lowest) < HUGEPAGES_NEEDED, "the guest's RAM never came from the huge pages"


# --- libvirt -----------------------------------------------------------------------------

LIBVIRT_XML = CONFIGS / "libvirt-domain.xml"


def test_libvirt_domain_has_what_virtiofs_needs():
    dom = ET.parse(LIBVIRT_XML).getroot()
    assert dom.tag == "domain"
    mb = dom.find("memoryBacking")
    assert mb.find("access").get("mode") == "shared"       # the back-end maps guest RAM
    assert mb.find("source").get("type") == "memfd"
    (fs,) = dom.findall("devices/filesystem")
    assert fs.get("type") == "mount"
    assert fs.find("driver").get("type") == "virtiofs" and fs.find("driver").get("queue") == "1024"
    assert fs.find("binary").get("path") == "/usr/bin/pyvirtiofsd"
    assert fs.find("source").get("dir") and fs.find("target").get("dir") == "share"


def test_libvirt_domain_validates_against_libvirts_schema():
    r = subprocess.run(["virt-xml-validate", str(LIBVIRT_XML), "domain"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = LIBVIRT_XML.read_text().replace("<access mode='shared'/>", "<access mode='odd'/>")
    r = subprocess.run(["virt-xml-validate", "-", "domain"], input=broken, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0, "the validator accepts anything: the check above proves nothing"


def libvirt_argv(binary: str, fd: int, source: str) -> list[str]:
    """What libvirt (qemuVirtioFSBuildCommandLine) runs for our <filesystem>: --fd=N, then
    virtiofsd's -o syntax with the source dir (commas doubled) and the xattr switch, then
    the thread pool size."""
    fs = ET.parse(LIBVIRT_XML).getroot().find("devices/filesystem")
    b = fs.find("binary")
    opts = "source=" + source.replace(",", ",,")
    if b.get("xattr") == "on":
        opts += ",xattr"
    argv = [binary, f"--fd={fd}", "-o", opts]
    if b.find("thread_pool") is not None:
        argv.append(f"--thread-pool-size={b.find('thread_pool').get('size')}")
    return argv


def test_our_daemon_starts_from_libvirts_command_line(tmp_path):
    share = tmp_path / "dir,with,commas"
    share.mkdir()
    (share / "f.txt").write_text("through libvirt's command line\n")
    path = str(tmp_path / "libvirt.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.set_inheritable(True)
    argv = libvirt_argv(str(SCRIPTS / "pyvirtiofsd"), listener.fileno(), str(share))
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            pass_fds=[listener.fileno()])
    listener.close()
    try:
        with VhostUserFrontend(path) as fe:
            c = FuseClient(fe)
            c.init()
            entry, attr = c.lookup(1, b"f.txt")
            fh = c.open(entry.nodeid, os.O_RDONLY).fh
            assert c.read(entry.nodeid, fh, 0, 100) == b"through libvirt's command line\n"
            # xattr='on' reached the daemon: LISTXATTR is served, not ENOSYS.
            r = c.call(Opcode.FUSE_LISTXATTR, entry.nodeid, abi.fuse_getxattr_in.build(size=0),
                       abi.fuse_getxattr_out.size)
            assert r.error == 0
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.mark.parametrize("argv,expect", [
    (["-o", "source=/tmp"], {"shared_dir": "/tmp"}),
    (["-o", "source=/tmp,cache=none,xattr"], {"cache": "never", "xattr": True}),
    (["-o", "source=/tmp,xattr", "-o", "no_xattr,cache=always"], {"xattr": False, "cache": "always"}),
    (["-o", "source=/tmp,no_flock,no_posix_lock", "-d"], {"log_level": "debug"}),
    (["-o", "source=/tmp,log_level=err"], {"log_level": "error"}),
])
def test_virtiofsd_option_syntax(argv, expect):
    args = parse_args(["--fd=3", *argv])
    assert {k: getattr(args, k) for k in expect} == expect


def test_virtiofsd_option_syntax_unescapes_doubled_commas(tmp_path):
    d = tmp_path / "a,b"
    d.mkdir()
    assert parse_args(["--fd=3", "-o", f"source={str(d).replace(',', ',,')},xattr"]).shared_dir \
        == str(d)


@pytest.mark.parametrize("argv,message", [
    (["-o", "source=/tmp,bogus"], "-o bogus: not an option pyvirtiofsd understands"),
    (["-o", "source=/tmp,cache=sometimes"], "-o cache=sometimes"),
    (["-o", "source=/tmp", "--shared-dir", "/var"], "name different directories"),
])
def test_virtiofsd_option_syntax_errors(argv, message):
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--fd=3", *argv],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr


# --- systemd socket activation -------------------------------------------------------------

SOCKET_UNIT = CONFIGS / "pyvirtiofsd@.socket"
SERVICE_UNIT = CONFIGS / "pyvirtiofsd@.service"
INSTANCE_CONF = CONFIGS / "pyvirtiofsd-instance.conf"


def unit_value(unit: Path, key: str) -> str:
    (value,) = re.findall(rf"^{key}=(.*)$", unit.read_text(), re.M)
    return value


def installed_units(tmp_path: Path) -> Path:
    """The unit pair as an admin installs it, with ExecStart pointing at our pyvirtiofsd
    (systemd-analyze verify checks that the program exists)."""
    d = tmp_path / "units"
    d.mkdir()
    (d / SOCKET_UNIT.name).write_text(SOCKET_UNIT.read_text())
    (d / SERVICE_UNIT.name).write_text(
        SERVICE_UNIT.read_text().replace("/usr/bin/pyvirtiofsd", str(SCRIPTS / "pyvirtiofsd")))
    return d


def test_systemd_units_verify(tmp_path):
    d = installed_units(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(d / SOCKET_UNIT.name),
                        str(d / SERVICE_UNIT.name)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr          # not even a warning (unknown keys...)
    # The same check fails a unit whose program is missing: it is not a rubber stamp.
    (d / SERVICE_UNIT.name).write_text(SERVICE_UNIT.read_text())   # /usr/bin/pyvirtiofsd
    r = subprocess.run(["systemd-analyze", "verify", str(d / SOCKET_UNIT.name),
                        str(d / SERVICE_UNIT.name)], capture_output=True, text=True, timeout=120)
    if not os.path.exists("/usr/bin/pyvirtiofsd"):
        assert r.returncode != 0 and "is not executable" in r.stderr


def test_socket_unit_passes_one_listening_stream_socket():
    assert unit_value(SOCKET_UNIT, "ListenStream").startswith("/run/pyvirtiofsd/%i")
    assert unit_value(SOCKET_UNIT, "Accept") == "no"       # the daemon accepts, not systemd
    assert "--fd=3" in unit_value(SERVICE_UNIT, "ExecStart")


def exec_start(tmp_path: Path, share: Path) -> list[str]:
    """The service's ExecStart as systemd expands it, with the instance config's variables
    (SHARED_DIR pointing at ``share``)."""
    env = dict(line.split("=", 1) for line in INSTANCE_CONF.read_text().splitlines()
               if line and not line.startswith("#"))
    env["SHARED_DIR"] = str(share)
    argv = []
    for word in unit_value(SERVICE_UNIT, "ExecStart").split():
        if word.startswith("$") and not word.startswith("${"):
            argv += env[word[1:]].split()           # $VAR: split on whitespace
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    argv[0] = argv[0].replace("/usr/bin/pyvirtiofsd", str(SCRIPTS / "pyvirtiofsd"))
    return argv


def test_socket_activation_serves_a_front_end(tmp_path):
    """systemd-socket-activate listens, starts the service's command line on the first
    connection with the socket as fd 3 (LISTEN_FDS=1, LISTEN_PID), and our front-end is
    served through it -- twice, as for two boots of a VM."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("socket-activated\n")
    path = str(tmp_path / "vm1.sock")
    argv = exec_start(tmp_path, share)
    assert argv[1] == "--fd=3" and "--tag=vm1" in argv
    for boot_no in (1, 2):
        log_path = tmp_path / f"activation-{boot_no}.log"
        log = open(log_path, "wb")
        # systemd-socket-activate passes a minimal environment: keep the test's PYTHONPATH.
        keep = ["-E", "PYTHONPATH"] if "PYTHONPATH" in os.environ else []
        proc = subprocess.Popen(["systemd-socket-activate", "-l", path, *keep, *argv],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(path):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.02)
            with VhostUserFrontend(path) as fe:
                assert fe.get_config()[:3] == b"vm1"          # --tag=vm1 from the instance conf
                c = FuseClient(fe)
                c.init()
                entry, _ = c.lookup(1, b"hello.txt")
                fh = c.open(entry.nodeid, os.O_RDONLY).fh
                assert c.read(entry.nodeid, fh, 0, 64) == b"socket-activated\n"
            assert proc.wait(timeout=30) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        text = log_path.read_text()
        assert "Execing" in text and "fd:3" in text, text
        events = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
        assert {"listening", "front-end connected", "front-end disconnected"} <= {
            e.get("event") for e in events}
        os.unlink(path)        # systemd keeps its socket; systemd-socket-activate does not


def test_fd_that_is_not_a_listening_socket_is_a_clear_error(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)      # bound, never listening
    s.bind(str(tmp_path / "x.sock"))
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", f"--fd={s.fileno()}",
                        "--shared-dir", str(tmp_path)], pass_fds=[s.fileno()],
                       capture_output=True, text=True, timeout=60)
    s.close()
    assert r.returncode == 1 and "not a listening unix stream socket" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pyvirtiofsd", "--fd=3", "--shared-dir",
                        str(tmp_path)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "--fd 3: not a usable socket" in r.stderr


def test_sigterm_ends_a_socket_activated_daemon(tmp_path):
    """systemctl stop sends SIGTERM (KillSignal): the daemon exits 0 while it waits for
    QEMU.  Started as systemd does: the socket as fd 3, LISTEN_FDS=1, LISTEN_PID = its pid."""
    share = tmp_path / "share"
    share.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s.sock"))
    listener.listen(1)
    fd = listener.fileno()
    as_systemd = f'LISTEN_FDS=1 LISTEN_PID=$$ exec "$@" 3<&{fd} {fd}<&-'
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "-c", as_systemd, "bash", *exec_start(tmp_path, share)],
                                pass_fds=[fd], stdout=log, stderr=subprocess.STDOUT)
    listener.close()
    try:
        deadline = time.monotonic() + 20
        while '"listening"' not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert '"fd:3"' in text and '"terminating"' in text, text


def test_a_non_blocking_listener_is_waited_on(tmp_path):
    """A supervisor may pass the socket O_NONBLOCK (systemd's NonBlocking=yes): the daemon
    still waits for the front-end instead of failing with EAGAIN."""
    share = tmp_path / "share"
    share.mkdir()
    path = str(tmp_path / "nb.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    listener.bind(path)
    listener.listen(1)
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtiofsd", f"--fd={listener.fileno()}",
                             "--shared-dir", str(share)], pass_fds=[listener.fileno()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    listener.close()
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stdout.read().decode()
        with VhostUserFrontend(path) as fe:
            c = FuseClient(fe)
            c.init()
            assert c.getattr(1).ino
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
