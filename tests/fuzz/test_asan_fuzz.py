"""The fuzz suite again, in a subprocess that runs the C extension built with
AddressSanitizer and UndefinedBehaviorSanitizer (scripts/asan-run.sh), with more cases.

Every out-of-bounds access, use-after-free or undefined behaviour in cext/ that a hostile
ring, memory table or request reaches aborts that subprocess (and the daemons it starts
inherit the ASan build), so this test fails with the sanitizer's report.  Bounded for CI:
PYVIRTIOFSD_ASAN_EXAMPLES cases per fuzz test (default 150, about a minute here).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

# Run by scripts/asan-run.sh exactly as the fuzz suite is.  It reports which _cext it loaded
# (and which one a child Python -- a daemon the fuzz tests start -- loads), then makes the
# extension's own code write past a buffer: pvfs_mem_gpa_to_iov() is given room for one iovec
# from the C allocator (ASan's, with a redzone behind it) but told max=2, for a guest range
# spanning two regions.  Only an instrumented _cext checks that store; without ASan the
# overflow goes unnoticed (or glibc aborts later, with no sanitizer report).
PROBE = r"""
import ctypes, os, subprocess, sys
from pyvirtiofsd import _cext
from pyvirtiofsd._cext import ffi, lib

print("extension:", _cext.__file__, flush=True)
child = subprocess.run([sys.executable, "-c", "from pyvirtiofsd import _cext; print(_cext.__file__)"],
                       capture_output=True, text=True, check=True).stdout.strip()
print("child extension:", child, flush=True)
with open("/proc/self/maps") as f:
    print("libasan mapped:", any("/libasan" in line for line in f), flush=True)

fd = os.memfd_create("asan-probe")
os.ftruncate(fd, 8192)
err = ffi.new("int *")
regions = []
for i in range(2):
    info = ffi.new("struct pvfs_region_info *",
                   {"gpa": 4096 * i, "size": 4096, "uva": 4096 * i, "mmap_offset": 4096 * i})
    regions.append(lib.pvfs_region_map(fd, info, err))
    assert regions[-1] != ffi.NULL, err[0]
mem = lib.pvfs_mem_new(ffi.new("struct pvfs_region *[]", regions), 2, err)
assert mem != ffi.NULL, err[0]
assert lib.pvfs_mem_gpa_to_iov(mem, 0, 8192, ffi.new("struct iovec[2]"), 2) == 2  # honest call

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
one = libc.malloc(ffi.sizeof("struct iovec"))
print("overflowing", flush=True)
n = lib.pvfs_mem_gpa_to_iov(mem, 0, 8192, ffi.cast("struct iovec *", one), 2)
print("overflow unnoticed:", n, flush=True)
"""


def asan_env(tmp_path, **extra) -> dict:
    env = {**os.environ, "PYVIRTIOFSD_ASAN_DIR": str(tmp_path / "asan"), "PYTHON": sys.executable,
           **extra}
    env.pop("PYTHONPATH", None)
    return env


def check_probe(out: str, returncode: int, asan_dir: pathlib.Path) -> None:
    """The probe's output proves the ASan build of _cext was loaded, by it and its children,
    and that its code is instrumented."""
    ext = f"{asan_dir}/pyvirtiofsd/_cext"
    assert f"\nextension: {ext}" in "\n" + out, out[-5000:]
    assert f"\nchild extension: {ext}" in out, out[-5000:]
    assert "\nlibasan mapped: True" in out, out[-5000:]
    assert "overflowing" in out and "overflow unnoticed" not in out, out[-5000:]
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in out, out[-5000:]
    assert "WRITE of size 8" in out, out[-5000:]
    # the bad store is caught in the extension's own frame, not by a libc interceptor
    assert " in pvfs_mem_gpa_to_iov " in out.split("WRITE of size 8", 1)[1].split("\n")[1], \
        out[-5000:]
    assert returncode != 0


def test_fuzz_suite_under_address_sanitizer(tmp_path):
    # First: the sanitizer build really is what asan-run.sh loads, so a clean run below
    # means something (a plain _cext would pass the fuzz suite just as quietly).
    env = asan_env(tmp_path)
    probe = subprocess.run([str(REPO / "scripts" / "asan-run.sh"), "-c", PROBE],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    check_probe(probe.stdout + probe.stderr, probe.returncode, tmp_path / "asan")

    report = tmp_path / "fuzz.json"
    env = asan_env(tmp_path,
                   PYVIRTIOFSD_FUZZ_EXAMPLES=os.environ.get("PYVIRTIOFSD_ASAN_EXAMPLES", "150"),
                   PYVIRTIOFSD_FUZZ_REPORT=str(report))
    proc = subprocess.run(
        [str(REPO / "scripts" / "asan-run.sh"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/fuzz", "--ignore", "tests/fuzz/test_asan_fuzz.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert "AddressSanitizer" not in out and "runtime error:" not in out, out[-20000:]
    assert proc.returncode == 0, out[-20000:]
    figures = json.loads(report.read_text())
    # Every fuzz test ran, under the sanitizer, with its cases.
    assert figures["exitstatus"] == 0
    assert set(figures["cases"]) >= {"codec_stream", "backend_sequences", "descriptor_chains",
                                     "indirect_long", "fuse_server", "fuse_daemon"}
    assert figures["total"] >= 6 * 100
    print(f"ASan fuzz run: {figures['total']} cases, 0 crashes ({figures['cases']})")
