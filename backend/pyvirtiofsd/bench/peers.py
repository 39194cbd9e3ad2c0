"""The back-ends a benchmark compares: how to start each, and one front-end session on it.

A back-end is a command template with ``{socket}`` and ``{dir}``; three are built in (ours,
QEMU 7.2's C virtiofsd, the Rust virtiofsd 1.14 from the sid tree), each with the options
that make them serve alike (cache=auto, no xattrs, no sandbox where root is not needed).
Each back-end serves one front-end connection, so a :class:`Session` is one process and
one :class:`~pyvirtiofsd.frontend.VhostUserFrontend` that stays connected for the whole
run: every row runs on the same connection, the way a guest would use it.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field

from .. import guest
from ..frontend import FuseClient, VhostUserFrontend
from ..fuse import abi

# What a Linux guest offers in FUSE_INIT (the flags that matter to these rows).
KERNEL_INIT_FLAGS = (abi.FUSE_ASYNC_READ | abi.FUSE_BIG_WRITES | abi.FUSE_DO_READDIRPLUS
                     | abi.FUSE_READDIRPLUS_AUTO | abi.FUSE_PARALLEL_DIROPS | abi.FUSE_MAX_PAGES
                     | abi.FUSE_ASYNC_DIO | abi.FUSE_AUTO_INVAL_DATA | abi.FUSE_ATOMIC_O_TRUNC)
DAX_INIT_FLAGS = abi.FUSE_MAP_ALIGNMENT | abi.FUSE_HAS_INODE_DAX


@dataclass(frozen=True)
class Peer:
    """A back-end to benchmark: ``argv`` is a template (``{socket}``, ``{dir}``)."""

    name: str
    argv: tuple[str, ...]
    dax: bool = False          # connect with a DAX window (needs a back-end that offers one)

    def command(self, socket: str, directory: str) -> list[str]:
        return [a.format(socket=socket, dir=directory) for a in self.argv]


def _sandbox_none() -> tuple[str, ...]:
    """``--sandbox none`` when our daemon has a sandbox switch: the Rust virtiofsd runs with
    ``--sandbox=none`` too (it needs no root then), so both serve from the same view."""
    from ..cli import build_parser

    known = {o for a in build_parser()._actions for o in a.option_strings}
    return ("--sandbox", "none") if "--sandbox" in known else ()


def ours(*extra: str, name: str = "ours", dax: bool = False) -> Peer:
    return Peer(name, (sys.executable, "-m", "pyvirtiofsd", "--socket-path", "{socket}",
                       "--shared-dir", "{dir}", *_sandbox_none(), *extra), dax=dax)


def _glibc_arena_max() -> str:
    """GLIBC_TUNABLES=glibc.malloc.arena_max=N with N the limit glibc's malloc computes for
    itself (8 arenas per CPU this process may run on, 64-bit): the same malloc, except that
    it no longer asks the kernel for that CPU count (see PEER_DEFAULT_THREADS)."""
    return f"GLIBC_TUNABLES=glibc.malloc.arena_max={8 * len(os.sched_getaffinity(0))}"


def c_virtiofsd() -> Peer:
    return Peer("c-virtiofsd", ("/usr/bin/env", _glibc_arena_max(), guest.C_VIRTIOFSD,
                                "--socket-path={socket}", "-o", "source={dir}", "-o", "cache=auto"))


def rust_virtiofsd() -> Peer:
    return Peer("rust-virtiofsd", (*guest.sid_command("usr/libexec/virtiofsd"),
                                   "--socket-path={socket}", "--shared-dir={dir}",
                                   "--cache=auto", "--sandbox=none"))


BUILTIN = {"ours": ours, "c-virtiofsd": c_virtiofsd, "rust-virtiofsd": rust_virtiofsd}

# The --thread-pool-size the peers run with when not given one (their --help: "default 0",
# no pool: each queue's own thread serves its requests).  Ours: ours_default_threads().
#
# QEMU 7.2's C virtiofsd with a pool of 8 (c-virtiofsd@8) died in the first row where its
# pool grew (seq-read-1m-qd16; create-unlink-qd1 too, whose FORGETs overlap the next
# CREATE): the kernel killed its sandboxed child with SIGSYS (audit: comm="pool"
# syscall=204, sched_getaffinity, which its seccomp filter does not allow), and the parent
# then exits 1 without a message.  The call is Debian 12's glibc 2.36 malloc: once a process
# has more than 8 arenas (main, vhost-user and queue threads, then pool threads), the next
# new thread's first malloc computes the arena limit from the CPU count, with
# sched_getaffinity(0, 4096).  Setting that limit (glibc.malloc.arena_max) to the value glibc
# would compute skips the call and changes nothing else; c_virtiofsd() does so.  Any
# back-end that dies all the same is a PROBLEM for that row, and is started again for the
# next (cli.Backends).
PEER_DEFAULT_THREADS = {"c-virtiofsd": 0, "rust-virtiofsd": 0}


def ours_default_threads() -> int:
    """Our daemon's default --thread-pool-size (its argument parser says)."""
    from ..cli import build_parser

    return build_parser().get_default("thread_pool_size")


def _threads_in(args: tuple[str, ...] | list[str]) -> int | None:
    """The --thread-pool-size given in ``args`` (the last one wins), or None."""
    value = None
    for i, a in enumerate(args):
        if a == "--thread-pool-size" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--thread-pool-size="):
            value = a.partition("=")[2]
    return int(value) if value is not None and value.isdigit() else None


def pool_size(peer: Peer) -> int | None:
    """The thread-pool size ``peer`` runs with, when known: a built-in back-end at its
    default, or one given --thread-pool-size (``NAME@N``, or ours with it in its extra
    arguments); None for a command template."""
    base = peer.name.partition("@")[0]
    if base not in BUILTIN:
        return None
    given = _threads_in(peer.argv)
    if given is not None:
        return given
    return ours_default_threads() if base == "ours" else PEER_DEFAULT_THREADS[base]


def parse_peer(text: str, ours_args: tuple[str, ...] | list[str] = ()) -> Peer:
    """``NAME`` of a built-in back-end, ``NAME@N`` for one with ``--thread-pool-size=N``
    (all three take it), or ``NAME=COMMAND TEMPLATE`` (shell words with ``{socket}`` and
    ``{dir}``).  ``ours_args``: extra arguments for our daemon (``ours`` and ``ours@N``)."""
    if "=" not in text:
        name, at, threads = text.partition("@")
        if name not in BUILTIN:
            raise ValueError(f"unknown back-end {text!r}: one of {sorted(BUILTIN)}, NAME@THREADS "
                             "or NAME=COMMAND")
        peer = ours(*ours_args) if name == "ours" else BUILTIN[name]()
        if not at:
            return peer
        if not threads.isdigit():
            raise ValueError(f"back-end {text!r}: NAME@THREADS takes a thread-pool size")
        return Peer(text, (*peer.argv, f"--thread-pool-size={int(threads)}"), dax=peer.dax)
    name, command = text.split("=", 1)
    argv = tuple(shlex.split(command))
    if not name or not argv or not any("{socket}" in a for a in argv):
        raise ValueError(f"back-end {text!r}: NAME=COMMAND with {{socket}} in the command")
    return Peer(name, argv)


def missing(peer: Peer) -> str | None:
    """Why ``peer`` cannot run here (its program is absent), or None."""
    sid = str(guest.sid_dir()) + "/"
    for a in peer.argv:
        if a.startswith("/") and "{" not in a and ":" not in a and not os.path.exists(a):
            if a.startswith(sid):  # the guest runner's cache: $PYVIRTIOFSD_CACHE or ~/.cache
                return (f"{a} does not exist (no sid tree in the guest runner's cache "
                        f"{guest.cache_dir()}: set {guest.CACHE_ENV}, or run "
                        f"'pyvirtiofsd-guest prepare --flavor sid')")
            return f"{a} does not exist"
    return None


def _tree(pid: int) -> list[int]:
    """pid and its descendants (sandboxed daemons serve from a child process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """Memory of a back-end's process tree (a sandboxed daemon is a supervisor and a
    child): RSS summed, and PSS without shared memory -- guest RAM pages the back-end
    touched are shmem, and pages a forked child shares with its parent count once."""
    total = {"rss": 0, "pss_private": 0, "processes": 0}
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        kib = lambda k: int(fields.get(k, "0 kB").split()[0])  # noqa: E731
        total["rss"] += kib("Rss")
        total["pss_private"] += kib("Pss_Anon") + kib("Pss_File")
        total["processes"] += 1
    return total


def cpu_ns(pid: int) -> int:
    """CPU time used so far by every thread of a back-end's process tree (schedstat: ns).
    What a back-end spends per op does not depend on how loaded the machine is."""
    total = 0
    for p in _tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


@dataclass
class Session:
    """One running back-end and our front-end connected to it (after FUSE_INIT)."""

    peer: Peer
    directory: str
    workdir: str
    ram_size: int = 160 << 20
    queue_size: int = 128
    backend: guest.Backend | None = None
    fe: VhostUserFrontend | None = None
    client: FuseClient | None = None
    start_seconds: float = 0.0
    idle_memory: dict = field(default_factory=dict)
    pidfd: int = -1            # readable once the back-end's process exited
    broken: bool = False       # a run failed on it: no more requests, only stop it

    def start(self) -> "Session":
        import time

        sock = os.path.join(self.workdir, f"{self.peer.name}.sock")
        log = os.path.join(self.workdir, f"{self.peer.name}.log")
        if os.path.exists(log):      # a restart: keep the log of the run that failed
            os.replace(log, log + ".prev")
        if os.path.lexists(sock):    # left by a back-end that died
            os.unlink(sock)
        self.backend = guest.Backend(self.peer.command(sock, self.directory), sock, log)
        t0 = time.monotonic()
        self.backend.start()
        self.start_seconds = time.monotonic() - t0
        self.pidfd = os.pidfd_open(self.backend.proc.pid)
        self.fe = VhostUserFrontend(sock, ram_size=self.ram_size, queue_size=self.queue_size,
                                    dax=self.peer.dax).connect()
        self.client = FuseClient(self.fe)
        flags = KERNEL_INIT_FLAGS | (DAX_INIT_FLAGS if self.peer.dax else 0)
        self.client.init(flags=flags)
        time.sleep(0.2)        # let start-up settle: this is the idle footprint with a guest
        self.idle_memory = memory_kib(self.pid)
        return self

    @property
    def pid(self) -> int:
        return self.backend.proc.pid

    def alive(self) -> bool:
        return self.backend is not None and self.backend.proc.poll() is None

    def status(self) -> str:
        """How the back-end's process is doing: running, or how it ended."""
        import signal

        rc = self.backend.proc.poll() if self.backend and self.backend.proc else None
        if rc is None:
            return "still running"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with status {rc}"

    def close(self) -> None:
        # DESTROY only to a back-end that can answer: a dead one never would (the client
        # would wait out its 30 s timeout), nor one whose queues a failed run left in use.
        if self.client is not None and not self.broken and self.alive():
            try:
                self.client.destroy()
            except Exception:  # noqa: BLE001 - a back-end that died mid-run: just stop it
                pass
        if self.fe is not None:
            self.fe.close()
            self.fe = None
        if self.backend is not None:
            self.backend.stop()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.backend.log.splitlines()[-lines:]) if self.backend else ""
