"""pyvirtiofsd-bench as a user runs it: short runs of every row on all three back-ends
(ours, QEMU 7.2's C virtiofsd, the Rust virtiofsd 1.14), the JSON parsed and checked for
sane, verified results.  No timing is asserted: the machine is shared."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from pyvirtiofsd import guest
from pyvirtiofsd._testkit import ffi, lib
from pyvirtiofsd.bench import peers, workloads

BACKENDS = ["ours", "c-virtiofsd", "rust-virtiofsd"]
# rust-virtiofsd runs from the sid tree in the guest runner's cache: the repository's .cache
# (scripts/setup.sh), unless PYVIRTIOFSD_CACHE says otherwise.
CACHE = os.environ.get(guest.CACHE_ENV) or str(pathlib.Path(__file__).resolve().parents[2] / ".cache")


@pytest.fixture(autouse=True)
def repository_cache(monkeypatch):
    monkeypatch.setenv(guest.CACHE_ENV, CACHE)


def run_bench(tmp_path, *args, timeout=240):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pyvirtiofsd.bench", "--quick", "--dir",
                           str(tmp_path / "work"), "--json", str(out), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, guest.CACHE_ENV: CACHE})
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_every_row_on_all_three_back_ends(tmp_path):
    for p in BACKENDS:
        assert peers.missing(peers.parse_peer(p)) is None, f"{p} is not installed (scripts/setup.sh)"
    proc, doc = run_bench(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["columns"] == BACKENDS + ["host"]
    assert doc["problems"] == []
    assert all(v == 0 for v in doc["write_check_bad_blocks"].values())
    rows = {r["id"]: r for r in doc["rows"]}
    assert set(rows) == {r.id for r in workloads.default_rows()}
    for rid, row in rows.items():
        expected = ["ours"] if row["only"] else BACKENDS
        if row["data"]:
            expected = expected + ["host"]
        assert sorted(row["results"]) == sorted(expected), rid
        for name, cell in row["results"].items():
            assert cell["ops"] > 0 and cell["ops_per_s"] > 0, (rid, name)
            assert cell["errors"] == cell["bad_data"] == cell["bad_replies"] == 0, (rid, name, cell)
            assert 0 < cell["p50_us"] <= cell["p99_us"], (rid, name)
            if row["data"]:
                # bytes/s is ops/s times the block size (the runs' medians, so loosely)
                assert cell["mb_per_s"] == pytest.approx(cell["ops_per_s"] * row["block"] / 1e6,
                                                         rel=0.5), (rid, name)
        if not row["only"]:
            assert set(row["ratio_to_first"]) == set(BACKENDS[1:])
            assert row["ours_vs_best_peer"] > 0
    # Reads were checked against the data, not just counted.
    assert rows["seq-read-1m-qd1"]["results"]["ours"]["verified"] > 0
    assert rows["readdirplus-10k"]["results"]["c-virtiofsd"]["entries_per_s"] > 0
    # The table went to stdout with one column per back-end.
    head = proc.stdout.splitlines()[0]
    assert all(name in head for name in BACKENDS) and "host-native" in head


def test_a_back_end_given_as_a_command_template(tmp_path):
    template = f"mine={sys.executable} -m pyvirtiofsd --socket-path {{socket}} --shared-dir {{dir}}"
    proc, doc = run_bench(tmp_path, "-b", "c-virtiofsd", "-b", template, "--rows", "getattr",
                          "--no-host")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["columns"] == ["c-virtiofsd", "mine"]
    for row in doc["rows"]:
        assert row["results"]["mine"]["ops"] > 0
        assert "mine" in row["ratio_to_first"]


def test_a_peer_at_a_given_thread_pool_size():
    for name in peers.BUILTIN:
        p = peers.parse_peer(f"{name}@3")
        assert p.name == f"{name}@3"
        assert p.argv == (*peers.parse_peer(name).argv, "--thread-pool-size=3")
    with pytest.raises(ValueError, match="thread-pool size"):
        peers.parse_peer("c-virtiofsd@many")


def test_bad_back_end_specs_are_refused(tmp_path):
    proc, _ = run_bench(tmp_path, "-b", "nosuch")
    assert proc.returncode == 2 and "unknown back-end" in proc.stderr
    proc, _ = run_bench(tmp_path, "-b", "x=/bin/true")
    assert proc.returncode == 2 and "{socket}" in proc.stderr


def test_the_pattern_check_finds_a_misplaced_or_corrupt_block():
    base = ffi.from_buffer(workloads.BASE_PAGE)
    buf = bytearray(64 * 1024)
    lib.pvfs_bench_fill(ffi.from_buffer(buf), len(buf), 1 << 20, 7, base)
    assert lib.pvfs_bench_check(ffi.from_buffer(buf), len(buf), 1 << 20, 7, base, 1) == 0
    # The same bytes claimed for another offset: every block's tag is wrong.
    assert lib.pvfs_bench_check(ffi.from_buffer(buf), len(buf), 2 << 20, 7, base, 0) == 16
    # One flipped byte inside block 3: only the full check sees it.
    buf[3 * 4096 + 100] ^= 1
    assert lib.pvfs_bench_check(ffi.from_buffer(buf), len(buf), 1 << 20, 7, base, 0) == 0
    assert lib.pvfs_bench_check(ffi.from_buffer(buf), len(buf), 1 << 20, 7, base, 1) == 1


def test_host_native_loop_reads_and_writes_the_pattern(tmp_path):
    fx = workloads.Fixture(str(tmp_path / "share"), 4 << 20, 10)
    fx.prepare([])
    native = workloads.NativeDriver(fx, verify_every=1, threads=2)
    try:
        for row in workloads.default_rows():
            if row.native:
                cell = native.run(row, 0.02, max_ops=200)
                assert cell.ops > 0 and cell.errors == 0 and cell.bad_data == 0, row.id
    finally:
        native.close()
    assert workloads.check_file(fx.path("write-host.bin"), workloads.WRITE_TAG) == 0
    assert os.path.getsize(fx.path(workloads.DATA_FILE)) == 4 << 20
