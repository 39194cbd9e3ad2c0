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


def test_fuzz_suite_under_address_sanitizer(tmp_path):
    report = tmp_path / "fuzz.json"
    env = {**os.environ,
           "PYVIRTIOFSD_FUZZ_EXAMPLES": os.environ.get("PYVIRTIOFSD_ASAN_EXAMPLES", "150"),
           "PYVIRTIOFSD_FUZZ_REPORT": str(report),
           "PYVIRTIOFSD_ASAN_DIR": str(tmp_path / "asan"), "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
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
