"""The seccomp filter itself: each action refuses (or logs) a call outside the allow-list,
calls on the list keep working, and the list is what scripts/gen-seccomp.py derived.

The refused call is chroot(2): a real system call the daemon never makes once running (it
chroots before the filter goes on, in --sandbox chroot), checked to be off the list.  The
programs run in a fresh interpreter because a filter cannot be taken off again.

That the list is complete is proven elsewhere: every daemon in the integration suite runs
with the default --seccomp kill (test_sandbox.py::test_defaults_are_namespace_and_kill), and
test_sandbox.py serves every FUSE operation under it in each sandbox mode.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvirtiofsd import seccomp

REFUSED = "chroot"
CHROOT_NR = seccomp.syscall_number(REFUSED)

PROGRAM = """
import os, sys, time
from pyvirtiofsd import logs, seccomp
logs.configure("off")
seccomp.install(sys.argv[1])
print("filtered", os.getpid(), flush=True)      # write(2) etc. are on the list
for _ in range(int(sys.argv[2])):
    os.chroot("/")
    time.sleep(0.3)
print("survived", flush=True)
"""


def run_program(action: str, repeat: int = 1, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, action, str(repeat)],
                          capture_output=True, text=True, timeout=timeout)


def test_the_refused_call_is_really_off_the_list():
    assert CHROOT_NR is not None
    assert REFUSED not in seccomp.ALLOWED


def test_kill_kills_the_whole_process_at_the_first_refused_call():
    r = run_program("kill")
    assert r.stdout.startswith("filtered ")
    assert "survived" not in r.stdout
    assert r.returncode == -signal.SIGSYS


def test_trap_names_the_refused_call_and_dies_of_sigsys():
    r = run_program("trap")
    assert r.stdout.startswith("filtered ")
    assert "survived" not in r.stdout
    assert f"pyvirtiofsd: seccomp refused system call {REFUSED} ({CHROOT_NR})" in r.stderr
    assert r.returncode == -signal.SIGSYS


def _audit_records(pid: int) -> list[str]:
    out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=20).stdout
    return [line for line in out.splitlines() if "type=1326" in line and f" pid={pid} " in line]


def test_log_lets_the_call_through_and_the_kernel_records_it():
    """The record goes to the kernel log (audit type 1326, code 0x7ffc0000 = SECCOMP_RET_LOG).
    The kernel rate-limits those lines, so the program repeats the call until one shows."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, "log", "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().split()
        assert first[0] == "filtered", proc.stderr.read()
        pid = int(first[1])
        deadline = time.monotonic() + 12
        records: list[str] = []
        while not records and time.monotonic() < deadline:
            records = [r for r in _audit_records(pid) if f" syscall={CHROOT_NR} " in r]
            time.sleep(0.3)
        assert records, "no audit record of the logged call in the kernel log"
        assert "code=0x7ffc0000" in records[0]
    finally:
        proc.kill()
        proc.wait()


def test_log_does_not_stop_the_program():
    r = run_program("log", repeat=2)
    assert r.returncode == 0, r.stderr
    assert "survived" in r.stdout


def test_none_loads_nothing():
    code = ("from pyvirtiofsd import seccomp; seccomp.install('none'); "
            "print(open('/proc/self/status').read())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert "Seccomp:\t0" in r.stdout


def test_unknown_mode_is_an_error():
    with pytest.raises(seccomp.SeccompError):
        seccomp.install("errno")


# -- the list ----------------------------------------------------------------------------

# Calls that would give a taken-over daemon new powers or a way out of its sandbox.
NEVER = {
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "setns", "move_mount", "open_tree",
    "fsopen", "fsmount", "mount_setattr", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "reboot", "swapon", "swapoff", "capset", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "socket", "socketpair", "connect",
    "bind", "listen", "userfaultfd", "acct",
    "settimeofday", "clock_settime", "sethostname", "setdomainname", "iopl", "ioperm",
    "personality", "seccomp", "prctl", "setrlimit", "prlimit64",
}


def test_the_list_holds_no_dangerous_call():
    assert not seccomp.ALLOWED & NEVER, sorted(seccomp.ALLOWED & NEVER)


def killed_by_filter(*lines: str) -> subprocess.CompletedProcess:
    """Run ``lines`` in a fresh interpreter (logs off; ctypes, seccomp and the C library at
    hand), then print 'reached': the filter must kill it with SIGSYS before that."""
    code = "\n".join(["import ctypes", "from pyvirtiofsd import logs, seccomp",
                      "from pyvirtiofsd._cext import lib", "logs.configure('off')", *lines,
                      "print('reached', flush=True)"])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stdout, r.stderr)
    return r


def test_unshare_only_for_a_private_fs_struct():
    """Worker threads unshare(CLONE_FS); any other unshare -- a user namespace in particular,
    which needs no capability -- is refused."""
    r = killed_by_filter("seccomp.install('kill')",
                         "print('fs', lib.pvfs_fs_unshare_fs(), flush=True)",
                         "lib.pvfs_sb_unshare(lib.PVFS_SB_CLONE_NEWUSER)")
    assert r.stdout.splitlines() == ["fs 0"], r.stderr


def test_file_handle_calls_can_be_left_out():
    """What the daemon does without --inode-file-handles: open_by_handle_at (with
    CAP_DAC_READ_SEARCH, a way to any file of the share's file system) is refused."""
    r = killed_by_filter("seccomp.install('kill', without=seccomp.FILE_HANDLE_CALLS)",
                         "print('filtered', flush=True)",
                         "ctypes.CDLL(None, use_errno=True).open_by_handle_at(-1, None, 0)")
    assert r.stdout.splitlines() == ["filtered"], r.stderr


def test_the_list_was_generated_and_names_real_calls():
    from pyvirtiofsd import seccomp_syscalls

    assert seccomp_syscalls.RUNS, "seccomp_syscalls.py has never been generated"
    assert len(seccomp_syscalls.TRACED) > 30
    unknown = [n for n in seccomp.ALLOWED if seccomp.syscall_number(n) is None]
    assert not unknown, unknown


def _gen_module():
    path = Path(__file__).resolve().parents[2] / "scripts" / "gen-seccomp.py"
    spec = importlib.util.spec_from_file_location("gen_seccomp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trace_parsing_keeps_only_filtered_calls():
    """The generator's parser on a made-up trace: a supervisor (100) forks the daemon (200),
    which starts a thread (namespace-local tid 2, host tid 201) and loads the filter."""
    trace = """\
100  1.0 unshare(CLONE_NEWPID) = 0
100  1.1 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD) = 200
200  1.2 mount("tmpfs", "/proc", "tmpfs", MS_NOSUID, "size=16k") = 0
100  1.3 wait4(200,  <unfinished ...>
200  1.4 clone3({flags=CLONE_VM|CLONE_THREAD, ...} => {parent_tid=[2]}, 88) = 2
201  1.5 futex(0x1, FUTEX_WAIT, 0, NULL <unfinished ...>
200  1.6 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=25, filter=0x1} <unfinished ...>
201  1.7 <... futex resumed>) = 0
200  1.8 <... seccomp resumed>) = 0
201  1.9 openat(5, "7", O_RDONLY|O_CLOEXEC) = 8
200  2.0 accept4(3, NULL, NULL, SOCK_CLOEXEC) = 6
200  2.1 --- SIGTERM {si_signo=SIGTERM, si_code=SI_USER} ---
200  2.2 rt_sigreturn({mask=[]}) = 0
100  2.3 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 200
100  2.4 unlinkat(AT_FDCWD, "/tmp/s.sock", 0) = 0
200  2.5 +++ exited with 0 +++
"""
    assert _gen_module().parse_trace(trace) == {"openat", "accept4", "rt_sigreturn"}


def test_trace_parsing_without_a_supervisor():
    trace = """\
300  1.0 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, -1, 0) = 0x7f
300  1.1 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=9, filter=0x1}) = 0
300  1.2 recvmsg(6, {msg_name=NULL}, MSG_CMSG_CLOEXEC) = 12
300  1.3 seccomp(SECCOMP_SET_MODE_FILTER, 0, NULL) = -1 EFAULT (Bad address)
"""
    assert _gen_module().parse_trace(trace) == {"recvmsg", "seccomp"}


def test_trace_parsing_with_a_filtered_supervisor():
    """The supervisor (100) forks the daemon (200) and loads its own filter at once, before
    the daemon has loaded its: each side's calls count from its own filter on."""
    trace = """\
100  1.0 unshare(CLONE_NEWPID) = 0
100  1.1 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD <unfinished ...>
200  1.2 set_robust_list(0x7f, 24) = 0
100  1.3 <... clone resumed>, child_tidptr=0x7f) = 200
100  1.4 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=30, filter=0x1}) = 0
100  1.5 close(3) = 0
200  1.6 mount("tmpfs", "/proc", "tmpfs", MS_NOSUID, "size=16k") = 0
100  1.7 wait4(200,  <unfinished ...>
200  1.8 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=90, filter=0x1}) = 0
200  1.9 accept4(3, NULL, NULL, SOCK_CLOEXEC) = 6
100  2.0 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 200
100  2.1 unlink("/tmp/s.sock") = 0
100  2.2 exit_group(0) = ?
"""
    gen = _gen_module()
    assert gen.parse_trace(trace) == {"accept4"}
    assert gen.parse_trace(trace, gen.SUPERVISOR) == {"close", "wait4", "unlink", "exit_group"}


def test_trace_parsing_threads_of_an_unsandboxed_daemon_are_the_daemon():
    """Without a sandbox ROOT is the daemon; its threads (CLONE_THREAD) are not a fork."""
    trace = """\
300  1.0 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD, ...}, 88) = 301
300  1.1 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=9, filter=0x1}) = 0
301  1.2 preadv(7, [], 1, 0) = 0
300  1.3 recvmsg(6, {msg_name=NULL}, MSG_CMSG_CLOEXEC) = 12
"""
    gen = _gen_module()
    assert gen.parse_trace(trace) == {"preadv", "recvmsg"}
    assert gen.parse_trace(trace, gen.SUPERVISOR) == set()


def test_no_filter_no_calls():
    assert _gen_module().parse_trace("400  1.0 read(0, \"\", 1) = 0\n") == set()


# -- the sandbox supervisor's filter ---------------------------------------------------------

# prlimit64 is the exception: the supervisor lowers its own core limit before it mirrors a
# daemon's death, and its filter allows that resource only (tested below).
SUPERVISOR_NEVER = (NEVER - {"prlimit64"}) | {"openat", "open", "openat2", "unshare", "clone",
                                                "clone3", "ioctl", "recvmsg", "accept4"}


def test_the_supervisor_list_is_short_and_holds_no_dangerous_call():
    """What the supervisor keeps: waiting, signals, removing the socket, logging, exiting --
    no file opening, no process creation, nothing of the daemon's own work."""
    allowed = seccomp.SUPERVISOR_ALLOWED
    assert not allowed & SUPERVISOR_NEVER, sorted(allowed & SUPERVISOR_NEVER)
    assert {"wait4", "kill", "unlink", "write", "exit_group"} <= allowed
    assert len(allowed) < 40 and len(allowed) < len(seccomp.ALLOWED) / 2
    unknown = [n for n in allowed if seccomp.syscall_number(n) is None]
    assert not unknown, unknown


def test_the_supervisor_list_was_generated():
    from pyvirtiofsd import seccomp_syscalls

    assert {"wait4", "unlink"} <= seccomp_syscalls.SUPERVISOR_TRACED


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.parametrize("mode", ["namespace", "chroot"])
def test_supervisor_is_filtered_and_forwards_signals_under_kill(start_daemon, connect, mode):
    """The real command line, default --seccomp kill: the supervisor carries a filter of its
    own (not the daemon's: the daemon, forked before, has exactly one), forwards SIGUSR1
    (statistics) and SIGTERM, removes the socket and exits 0 -- all inside its list."""
    d = start_daemon("--sandbox", mode, "--stats")
    client = connect(d)
    daemon_pid = d.serving_pid()
    supervisor = _status(d.proc.pid)
    assert daemon_pid != d.proc.pid
    assert supervisor["Seccomp"] == "2" and supervisor["NoNewPrivs"] == "1"
    assert supervisor["Seccomp_filters"] == "1"
    assert _status(daemon_pid)["Seccomp"] == "2"
    assert _status(daemon_pid)["Seccomp_filters"] == "1"
    assert "process=supervisor" in d.log() and "rules=" in d.log()

    d.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "fuse stats" not in d.log():
        assert d.proc.poll() is None, d.log()
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    client.getattr(1)           # still serving
    assert d.proc.poll() is None

    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0, d.log()
    assert not os.path.exists(d.socket_path)
    assert not os.path.exists(f"/proc/{daemon_pid}")
    assert "terminating" in d.log()


@pytest.mark.parametrize("action, seccomp_field", [("none", "0"), ("trap", "2")])
def test_the_supervisor_takes_the_daemon_s_seccomp_action(start_daemon, connect, action,
                                                           seccomp_field):
    """--seccomp applies to the supervisor too: none leaves it unfiltered."""
    d = start_daemon("--seccomp", action)
    connect(d).getattr(1)
    assert _status(d.proc.pid)["Seccomp"] == seccomp_field
    assert _status(d.serving_pid())["Seccomp"] == seccomp_field
    assert ("process=supervisor" in d.log()) == (action != "none")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0, d.log()


@pytest.mark.parametrize("mode, sig", [("namespace", signal.SIGKILL),
                                       ("chroot", signal.SIGVTALRM)])
def test_supervisor_mirrors_a_daemon_death_under_kill(start_daemon, connect, mode, sig):
    """The daemon dies of a signal: the supervisor logs it, lowers its own core limit
    (prlimit64, RLIMIT_CORE: allowed) and dies of the same signal, not of SIGSYS.  (As pid 1
    of its namespace the daemon ignores any signal it has no handler for except SIGKILL;
    in chroot mode it is not an init.)"""
    d = start_daemon("--sandbox", mode)
    connect(d)
    daemon_pid = d.serving_pid()
    assert _status(d.proc.pid)["Seccomp"] == "2"
    os.kill(daemon_pid, sig)
    assert d.wait() == -sig, d.log()
    assert "the sandboxed daemon was killed" in d.log()
    assert not os.path.exists(d.socket_path)


SUPERVISOR_PROGRAM = """
import os, resource, signal, sys, time
from pyvirtiofsd import logs, sandbox
logs.configure("off")
action, then = sys.argv[1], sys.argv[2]
parent = os.getpid()
pid = sandbox.spawn("chroot", action)
if pid == 0:                      # the "daemon": wait for a forwarded SIGTERM
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)              # the test reads the supervisor's output to its end
    os.dup2(null, 2)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    sandbox.ready()
    for _ in range(1200):         # a supervisor dead before PR_SET_PDEATHSIG: orphaned
        if os.getppid() != parent:
            os._exit(2)
        time.sleep(0.05)
    os._exit(1)
print("supervising", pid, flush=True)
# The supervisor program makes the call once its filter is loaded, then prints "reached".
then = f"kill:{sys.argv[3]}" if then == "kill-other" else then
sandbox.supervise(pid, action, extra=["--then", then])
"""


def run_supervisor(action: str, then: str, *extra: str) -> tuple[subprocess.Popen, int]:
    """Start SUPERVISOR_PROGRAM; returns it and the daemon's pid."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR_PROGRAM, action, then, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()
    assert first and first[0] == "supervising", proc.stderr.read()
    return proc, int(first[1])


@pytest.mark.parametrize("action", ["kill", "trap", "log"])
def test_the_supervisor_takes_the_daemons_action(action):
    """The supervisor program loads its filter with the action it is given: a call off the
    list (opening a file) kills it, traps it (naming the call) or is let through."""
    proc, daemon_pid = run_supervisor(action, "open")
    if action == "log":
        assert proc.stdout.readline() == "reached\n"
        proc.terminate()
        assert proc.wait(10) == 0
    else:
        assert proc.wait(10) == -signal.SIGSYS
        assert "reached" not in proc.stdout.read()
        if action == "trap":
            assert "pyvirtiofsd: seccomp refused system call openat" in proc.stderr.read()
    deadline = time.monotonic() + 10   # the daemon does not outlive its supervisor
    while os.path.exists(f"/proc/{daemon_pid}") and \
            _status(daemon_pid).get("State", "").split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_seccomp_none_leaves_the_supervisor_unfiltered():
    proc, _ = run_supervisor("none", "open")
    assert proc.stdout.readline() == "reached\n"
    assert _status(proc.pid)["Seccomp"] == "0"
    proc.terminate()
    assert proc.wait(10) == 0


@pytest.mark.parametrize("then", ["kill-other", "rlimit"])
def test_the_supervisors_kill_and_prlimit_are_narrowed(then):
    """kill() only for the daemon and itself; prlimit64 only for RLIMIT_CORE (which
    test_supervisor_mirrors_a_daemon_death_under_kill shows allowed)."""
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        proc, _ = run_supervisor("kill", then, str(bystander.pid))
        assert proc.wait(10) == -signal.SIGSYS, proc.stderr.read()
        assert "reached" not in proc.stdout.read()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
