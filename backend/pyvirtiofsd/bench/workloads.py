"""The rows of the benchmark table, the files they work on, and how one row runs once on
one back-end (a "cell run").

Data rows and metadata rows run in C (:c:func:`pvfs_bench_run`, cext/bench.c) so the
front-end costs the same, and little, for every back-end; the host-native column runs the
same reads/writes with pread/pwrite in-process (:c:func:`pvfs_bench_native`).  The DAX
row needs the front-end's backend-channel server (Python), so it is a Python loop.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field

from .._testkit import ffi, lib
from ..fuse import abi
from .peers import Session, cpu_ns

KiB, MiB = 1 << 10, 1 << 20
ROOT = abi.FUSE_ROOT_ID

DATA_FILE = "data.bin"
DIR_10K = "dir10k"
DAX_FILE = "dax.bin"
DATA_TAG = 0x5EED_0001
WRITE_TAG = 0x5EED_0002
MAX_LATENCIES = 4_000_000


@dataclass(frozen=True)
class Row:
    """One line of the table.  ``kind`` is a ``PVFS_BENCH_*`` constant or ``"dax"``."""

    id: str
    title: str
    kind: object
    qd: int = 1
    block: int = 0
    random: bool = False
    native: bool = False          # has a host-native twin
    only: str | None = None       # run on this back-end only (DAX: ours)

    @property
    def data(self) -> bool:
        return self.kind in (lib.PVFS_BENCH_READ, lib.PVFS_BENCH_WRITE)

    @property
    def dirties(self) -> bool:
        """Leaves dirty pages on the host (written back after the run, by the kernel)."""
        return self.kind in (lib.PVFS_BENCH_WRITE, lib.PVFS_BENCH_CREATE_UNLINK)


def default_rows() -> list[Row]:
    R, W = lib.PVFS_BENCH_READ, lib.PVFS_BENCH_WRITE
    rows = []
    for qd in (1, 16):
        rows.append(Row(f"seq-read-1m-qd{qd}", f"seq read 1M QD{qd}", R, qd, MiB, native=True))
    for qd in (1, 16):
        rows.append(Row(f"seq-write-1m-qd{qd}", f"seq write 1M QD{qd}", W, qd, MiB, native=True))
    for qd in (1, 16):
        rows.append(Row(f"rand-read-4k-qd{qd}", f"rand read 4K QD{qd}", R, qd, 4 * KiB, True,
                        native=True))
    for qd in (1, 16):
        rows.append(Row(f"rand-write-4k-qd{qd}", f"rand write 4K QD{qd}", W, qd, 4 * KiB, True,
                        native=True))
    for qd in (1, 16):
        rows.append(Row(f"getattr-qd{qd}", f"GETATTR QD{qd}", lib.PVFS_BENCH_GETATTR, qd))
    for qd in (1, 16):
        rows.append(Row(f"lookup-qd{qd}", f"LOOKUP QD{qd}", lib.PVFS_BENCH_LOOKUP, qd))
    # CREATE, RELEASE, UNLINK and a FORGET on the hiprio queue; at QD16 sixteen cycles at
    # once, each on its own name, in the same directory.
    for qd in (1, 16):
        rows.append(Row(f"create-unlink-qd{qd}", f"create+release+unlink QD{qd}",
                        lib.PVFS_BENCH_CREATE_UNLINK, qd))
    rows.append(Row("readdirplus-10k", "READDIRPLUS 10k dir", lib.PVFS_BENCH_READDIRPLUS, 1, 4096))
    rows.append(Row("dax-setup-remove", "DAX setup+remove 2M", "dax", 1, 2 * MiB, only="ours-dax"))
    return rows


@dataclass
class CellRun:
    """One row, once, on one back-end."""

    ops: int
    elapsed: float
    latencies_ns: list[int]
    bytes: int = 0
    requests: int = 0
    entries: int = 0
    errors: int = 0
    first_error: str = ""
    verified: int = 0
    bad_data: int = 0
    bad_replies: int = 0
    load: float = 0.0
    cpu_ns: int = 0               # CPU time the back-end (all its threads) used in the run

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_ns / self.ops / 1000 if self.ops else 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.elapsed / 1e6 if self.elapsed > 0 else 0.0


# ---- fixtures -----------------------------------------------------------------------------

def _base_page() -> bytes:
    import random
    return random.Random(0x5EED).randbytes(4096)


BASE_PAGE = _base_page()


def write_pattern(path: str, size: int, tag: int) -> None:
    """Create ``path`` holding the pattern of bench.h, unless it already does."""
    base = ffi.from_buffer(BASE_PAGE)
    if os.path.exists(path) and os.path.getsize(path) == size and check_file(path, tag, full=False) == 0:
        return
    chunk = bytearray(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for off in range(0, size, MiB):
            n = min(MiB, size - off)
            lib.pvfs_bench_fill(ffi.from_buffer(chunk), n, off, tag, base)
            os.pwrite(fd, memoryview(chunk)[:n], off)
        # On disk before any run: a file still being written back costs the back-end that
        # writes it next ~75% more CPU per 4 KiB write (measured: 6.9 vs 3.9 µs), and the
        # files are made in back-end order -- so without this the first one paid.
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file(path: str, tag: int, full: bool = True) -> int:
    """Blocks of ``path`` that do not hold the pattern (0: the file is intact)."""
    base = ffi.from_buffer(BASE_PAGE)
    bad = 0
    with open(path, "rb", buffering=0) as f:
        off = 0
        while chunk := f.read(MiB):
            bad += lib.pvfs_bench_check(ffi.from_buffer(chunk), len(chunk), off, tag, base, int(full))
            off += len(chunk)
    return bad


def make_dir(path: str, entries: int) -> None:
    """A directory of ``entries`` empty files (kept across runs when already complete)."""
    os.makedirs(path, exist_ok=True)
    if len(os.listdir(path)) == entries:
        return
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    for i in range(entries):
        os.close(os.open(os.path.join(path, f"entry-{i:05d}"), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC,
                         0o644))


@dataclass
class Fixture:
    """The shared directory every back-end serves, and what is in it."""

    directory: str
    file_size: int
    dir_entries: int
    write_files: dict[str, str] = field(default_factory=dict)

    def prepare(self, peers: list[str]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        write_pattern(self.path(DATA_FILE), self.file_size, DATA_TAG)
        for name in peers:
            self.write_files[name] = f"write-{name}.bin"
            write_pattern(self.path(self.write_files[name]), self.file_size, WRITE_TAG)
            os.makedirs(self.path(f"cu-{name}"), exist_ok=True)
        write_pattern(self.path("write-host.bin"), self.file_size, WRITE_TAG)
        write_pattern(self.path(DAX_FILE), 2 * MiB, DATA_TAG)
        make_dir(self.path(DIR_10K), self.dir_entries)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


# ---- running a row on a back-end ---------------------------------------------------------

class BackendFailed(RuntimeError):
    """A run could not complete on a back-end: it died, or stopped answering."""


class Driver:
    """Runs rows on one :class:`Session`: looks up the fixture once, keeps handles open."""

    def __init__(self, session: Session, fixture: Fixture, verify_every: int, stall: float):
        self.s = session
        self.fx = fixture
        self.verify_every = verify_every
        self.stall = stall
        self.lookups = 0
        self._lat = ffi.new("uint32_t[]", MAX_LATENCIES)
        self._res = ffi.new("struct pvfs_bench_result *")
        self._spec = ffi.new("struct pvfs_bench_spec *")
        self._dax_node = None
        self._ready = False

    def _setup(self) -> None:
        """Look up the fixture and open handles, once, on the first non-DAX row."""
        c = self.s.client
        # Names a session that died mid-cycle left behind would make CREATE (O_EXCL) fail.
        cu_dir = self.fx.path(f"cu-{self.s.peer.name}")
        for leftover in os.listdir(cu_dir):
            os.unlink(os.path.join(cu_dir, leftover))
        self.data_node = c.lookup(ROOT, DATA_FILE.encode())[0].nodeid
        self.data_fh = c.open(self.data_node, os.O_RDONLY).fh
        wname = self.fx.write_files[self.s.peer.name].encode()
        self.write_node = c.lookup(ROOT, wname)[0].nodeid
        self.write_fh = c.open(self.write_node, os.O_RDWR).fh
        self.cu_node = c.lookup(ROOT, f"cu-{self.s.peer.name}".encode())[0].nodeid
        self.dir_node = c.lookup(ROOT, DIR_10K.encode())[0].nodeid
        self.dir_fh = c.opendir(self.dir_node).fh
        self._ready = True

    def run(self, row: Row, duration: float, max_ops: int = MAX_LATENCIES) -> CellRun:
        if row.kind == "dax":
            return self._run_dax(row, duration, max_ops)
        if not self._ready:
            self._setup()
        fe = self.s.fe
        q, hi = fe.queues[1], fe.queues[0]
        block = max(row.block, 4096)
        out_off = (80 + max(block, 4096) + 4095) // 4096 * 4096
        slot_size = out_off + (16 + max(block, 4096) + 256 + 4095) // 4096 * 4096
        slots = fe.alloc.alloc(slot_size * row.qd + 4096)
        slot_gpa = (slots + 4095) // 4096 * 4096
        forget = fe.alloc.alloc(64 * hi.size)
        sp = self._spec
        sp.kind = row.kind
        sp.qd = row.qd
        sp.block = row.block or 4096
        sp.random = int(row.random)
        sp.file_size = self.fx.file_size
        sp.verify_every = self.verify_every
        sp.base = ffi.from_buffer(BASE_PAGE)
        sp.duration_ns = int(duration * 1e9)
        sp.max_ops = min(max_ops, MAX_LATENCIES)
        sp.slot_gpa = slot_gpa
        sp.slot_size = slot_size
        sp.host_delta = fe.ram.host(slot_gpa) - slot_gpa
        sp.hiprio = ffi.NULL
        sp.stall_ns = int(self.stall * 1e9)
        sp.gone_fd = self.s.pidfd
        name = b""
        if row.kind == lib.PVFS_BENCH_READ:
            sp.nodeid, sp.fh, sp.tag = self.data_node, self.data_fh, DATA_TAG
        elif row.kind == lib.PVFS_BENCH_WRITE:
            sp.nodeid, sp.fh, sp.tag = self.write_node, self.write_fh, WRITE_TAG
        elif row.kind == lib.PVFS_BENCH_GETATTR:
            sp.nodeid = self.data_node
        elif row.kind == lib.PVFS_BENCH_LOOKUP:
            sp.nodeid, name = ROOT, DATA_FILE.encode()
        elif row.kind == lib.PVFS_BENCH_CREATE_UNLINK:
            sp.nodeid, name = self.cu_node, b"cu-"
            sp.hiprio = hi._drv
            sp.hiprio_kick_fd, sp.hiprio_call_fd, sp.hiprio_size = hi.kick_fd, hi.call_fd, hi.size
            sp.forget_gpa = forget
        elif row.kind == lib.PVFS_BENCH_READDIRPLUS:
            sp.nodeid, sp.fh = self.dir_node, self.dir_fh
        cname = ffi.new("char[]", name)
        sp.name = cname
        sp.name_len = len(name)
        load = os.getloadavg()[0]
        cpu0 = cpu_ns(self.s.pid)
        try:
            rc = lib.pvfs_bench_run(q._drv, q.kick_fd, q.call_fd, sp, self._res, self._lat)
            cpu = cpu_ns(self.s.pid) - cpu0
        finally:
            fe.alloc.free(slots, slot_size * row.qd + 4096)
            fe.alloc.free(forget, 64 * hi.size)
        if rc < 0:
            if rc == -errno.EPIPE:
                raise BackendFailed("its process ended mid-run")
            if rc == -errno.ETIMEDOUT:
                raise BackendFailed(f"no reply for {self.stall:g} s")
            raise BackendFailed(f"the request loop failed: {os.strerror(-rc)}")
        if row.kind == lib.PVFS_BENCH_LOOKUP:
            self.lookups += self._res.ops
        cell = _cell(self._res, self._lat, load)
        cell.cpu_ns = cpu
        return cell

    def _run_dax(self, row: Row, duration: float, max_ops: int) -> CellRun:
        c = self.s.client
        if self._dax_node is None:
            self._dax_node = c.lookup(ROOT, DAX_FILE.encode())[0].nodeid
        window = self.s.fe.window
        lat, errors, first = [], 0, ""
        load = os.getloadavg()[0]
        cpu0 = cpu_ns(self.s.pid)
        t_end = time.perf_counter() + duration
        t_start = time.perf_counter()
        moffset = 0
        while len(lat) < max_ops and time.perf_counter() < t_end:
            t0 = time.perf_counter_ns()
            try:
                c.setupmapping(self._dax_node, 0, row.block, moffset, abi.FUSE_SETUPMAPPING_FLAG_READ)
                c.removemapping([(moffset, row.block)])
            except OSError as e:
                errors += 1
                first = first or str(e)
                continue
            lat.append(time.perf_counter_ns() - t0)
            moffset = (moffset + row.block) % window.size
        elapsed = time.perf_counter() - t_start
        cpu = cpu_ns(self.s.pid) - cpu0
        # The mapping really showed the file: map once more and compare through the window.
        c.setupmapping(self._dax_node, 0, row.block, 0, abi.FUSE_SETUPMAPPING_FLAG_READ)
        try:
            bad = lib.pvfs_bench_check(ffi.from_buffer(window.read(0, row.block)), row.block, 0,
                                       DATA_TAG, ffi.from_buffer(BASE_PAGE), 1)
        finally:
            c.removemapping([(0, row.block)])
        return CellRun(len(lat), elapsed, lat, requests=2 * len(lat), errors=errors,
                       first_error=first, verified=1, bad_data=int(bad > 0), load=load,
                       cpu_ns=cpu)

    def close(self) -> None:
        """Forget what the LOOKUP rows looked up and close the handles (best effort)."""
        c = self.s.client
        if not self._ready or self.s.broken or not self.s.alive():
            return
        try:
            if self.lookups:
                c.forget(self.data_node, self.lookups)
            c.release(self.data_node, self.data_fh)
            c.release(self.write_node, self.write_fh)
            c.release(self.dir_node, self.dir_fh, dir=True)
        except Exception:  # noqa: BLE001 - the session ends anyway
            pass


def _cell(res, lat, load: float) -> CellRun:
    n = min(res.ops, MAX_LATENCIES)
    first = ""
    if res.errors:
        from ..opslog import opname
        first = f"{opname(res.first_error_opcode)}: {os.strerror(-res.first_error)}"
    return CellRun(ops=res.ops, elapsed=res.elapsed_ns / 1e9, latencies_ns=ffi.unpack(lat, n),
                   bytes=res.bytes, requests=res.requests, entries=res.entries,
                   errors=res.errors, first_error=first, verified=res.verified,
                   bad_data=res.bad_data, bad_replies=res.bad_replies, load=load)


class NativeDriver:
    """The host-native column: the same reads/writes done in-process (C, pread/pwrite)."""

    def __init__(self, fixture: Fixture, verify_every: int, threads: int | None = None):
        self.fx = fixture
        self.verify_every = verify_every
        self.threads = threads or os.cpu_count() or 1
        self._lat = ffi.new("uint32_t[]", MAX_LATENCIES)
        self._res = ffi.new("struct pvfs_bench_result *")
        self._spec = ffi.new("struct pvfs_bench_spec *")
        self.read_fd = os.open(fixture.path(DATA_FILE), os.O_RDONLY | os.O_CLOEXEC)
        self.write_fd = os.open(fixture.path("write-host.bin"), os.O_RDWR | os.O_CLOEXEC)

    def run(self, row: Row, duration: float, max_ops: int = MAX_LATENCIES) -> CellRun:
        sp = self._spec
        write = row.kind == lib.PVFS_BENCH_WRITE
        sp.kind, sp.qd, sp.block, sp.random = row.kind, row.qd, row.block, int(row.random)
        sp.file_size = self.fx.file_size
        sp.tag = WRITE_TAG if write else DATA_TAG
        sp.verify_every = self.verify_every
        sp.base = ffi.from_buffer(BASE_PAGE)
        sp.duration_ns = int(duration * 1e9)
        sp.max_ops = min(max_ops, MAX_LATENCIES)
        load = os.getloadavg()[0]
        cpu0 = time.process_time_ns()   # the loop's threads are ours
        rc = lib.pvfs_bench_native(self.write_fd if write else self.read_fd, sp, self.threads,
                                   self._res, self._lat)
        if rc < 0:
            raise RuntimeError(f"host-native {row.id}: {os.strerror(-rc)}")
        cell = _cell(self._res, self._lat, load)
        cell.cpu_ns = time.process_time_ns() - cpu0
        return cell

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)
