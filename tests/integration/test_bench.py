"""pyvirtiofsd-bench as a user runs it: short runs of every row on all three back-ends
(ours, QEMU 7.2's C virtiofsd, the Rust virtiofsd 1.14), the JSON parsed and checked for
sane, verified results; the equal-thread-pool table; a back-end that dies mid-row or never
starts reported as a PROBLEM while the others go on.  No timing is asserted (the machine is
shared), except that a dead back-end is noticed long before the stall timeout."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

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
    """The default run: the three at their defaults, and at our default thread-pool size."""
    for p in BACKENDS:
        assert peers.missing(peers.parse_peer(p)) is None, f"{p} is not installed (scripts/setup.sh)"
    n = peers.ours_default_threads()
    equal = ["ours", f"c-virtiofsd@{n}", f"rust-virtiofsd@{n}"]   # ours is at n by default
    proc, doc = run_bench(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["columns"] == BACKENDS + equal[1:] + ["host"]
    assert [c["columns"] for c in doc["configurations"]] == [BACKENDS, equal]
    assert doc["problems"] == [] and doc["restarts"] == {}
    assert all(v == 0 for v in doc["write_check_bad_blocks"].values())
    rows = {r["id"]: r for r in doc["rows"]}
    assert set(rows) == {r.id for r in workloads.default_rows()}
    for rid, row in rows.items():
        expected = ["ours"] if row["only"] else BACKENDS + equal[1:]
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
            for config in doc["configurations"]:
                assert config["ours_vs_best_peer"][rid] > 0
    # Reads were checked against the data, not just counted.
    assert rows["seq-read-1m-qd1"]["results"]["ours"]["verified"] > 0
    assert rows["readdirplus-10k"]["results"]["c-virtiofsd"]["entries_per_s"] > 0
    # 16 create cycles in flight: each slot finished at least one.
    for name, cell in rows["create-unlink-qd16"]["results"].items():
        assert cell["ops"] >= 16, name
    # Two tables went to stdout, a column per back-end; the host column in the first.
    heads = [line for line in proc.stdout.splitlines() if line.startswith("row ")]
    assert len(heads) == 2
    assert all(name in heads[0] for name in BACKENDS) and "host-native" in heads[0]
    assert all(name in heads[1] for name in equal) and "host-native" not in heads[1]


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
        assert peers.pool_size(p) == 3
    with pytest.raises(ValueError, match="thread-pool size"):
        peers.parse_peer("c-virtiofsd@many")
    # At their defaults: ours has a pool (its cli's default), the peers none (their --help).
    assert peers.pool_size(peers.parse_peer("ours")) == peers.ours_default_threads() > 0
    assert peers.pool_size(peers.parse_peer("c-virtiofsd")) == 0
    assert peers.pool_size(peers.parse_peer("rust-virtiofsd")) == 0
    ours = peers.parse_peer("ours", ours_args=["--thread-pool-size", "5"])
    assert peers.pool_size(ours) == 5
    assert peers.pool_size(peers.parse_peer("x=prog {socket}")) is None
    # The C virtiofsd runs with glibc's own malloc arena limit set (peers.PEER_DEFAULT_THREADS).
    assert any(a.startswith("GLIBC_TUNABLES=glibc.malloc.arena_max=")
               for a in peers.parse_peer("c-virtiofsd@8").argv)


def test_the_equal_thread_pool_table(tmp_path):
    """--equal-threads N: each built-in back-end given by plain name also runs at N (ours
    too, since its default is not N), in a second table with its own ours ÷ best peer; the
    C virtiofsd among them, whose pool grows in a QD16 row (see peers.PEER_DEFAULT_THREADS)."""
    proc, doc = run_bench(tmp_path, "-b", "ours", "-b", "c-virtiofsd", "-b", "rust-virtiofsd",
                          "--equal-threads", "2", "--no-host", "--rows", "getattr-qd16,create-unlink-qd16")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    equal_columns = ["ours@2", "c-virtiofsd@2", "rust-virtiofsd@2"]
    assert doc["columns"] == BACKENDS + equal_columns
    first, equal = doc["configurations"]
    assert first["columns"] == BACKENDS and first["ours"] == "ours"
    assert equal["columns"] == equal_columns and equal["ours"] == "ours@2"
    assert "--thread-pool-size=2" in doc["config"]["backends"]["ours@2"]
    for row in doc["rows"]:
        assert set(row["results"]) == set(doc["columns"])
        for name, cell in row["results"].items():
            assert cell["ops"] > 0 and cell["errors"] == cell["bad_replies"] == 0, (row["id"], name)
        r = row["results"]
        assert equal["ours_vs_best_peer"][row["id"]] == pytest.approx(
            r["ours@2"]["ops_per_s"] / max(r["c-virtiofsd@2"]["ops_per_s"],
                                           r["rust-virtiofsd@2"]["ops_per_s"]), rel=1e-3)
    assert "Equal thread pools: --thread-pool-size=2" in proc.stdout
    heads = [line for line in proc.stdout.splitlines() if line.startswith("row ")]
    assert len(heads) == 2 and heads[1].endswith("ours@2/best peer")


# A back-end that serves like ours until the first CREATE, then exits (as a peer killed by
# its own seccomp filter would): the wrapper replaces the create operation before our
# daemon starts.
DYING = textwrap.dedent("""
    import os, sys
    from pyvirtiofsd.passthrough import PassthroughFs

    def create(self, *args, **kwargs):
        print("fake back-end: exiting on CREATE", flush=True)
        os._exit(7)

    PassthroughFs.create = create
    os.environ["PYVIRTIOFSD_HOTPATH"] = "0"   # CREATE must reach the Python method above
    from pyvirtiofsd.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_back_end_that_dies_is_a_problem_and_restarted(tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    template = (f"dying={sys.executable} {script} --socket-path {{socket}} --shared-dir {{dir}} "
                + " ".join(peers._sandbox_none()))
    proc, doc = run_bench(tmp_path, "-b", "ours", "-b", template, "--no-host", "--stall", "60",
                          "--rows", "getattr,create-unlink,readdirplus")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {r["id"]: r for r in doc["rows"]}
    assert list(rows) == ["getattr-qd1", "getattr-qd16", "create-unlink-qd1", "create-unlink-qd16",
                          "readdirplus-10k"]
    for rid in ("create-unlink-qd1", "create-unlink-qd16"):
        why = rows[rid]["failed"]["dying"]
        assert "ended mid-run" in why and "exited with status 7" in why, why
        assert "fake back-end: exiting on CREATE" in why      # the end of its log
        assert "dying" not in rows[rid]["results"]
        assert rows[rid]["results"]["ours"]["ops"] > 0        # the others went on
    # Before and after: it served (restarted for each row after the one it died in).
    for rid in ("getattr-qd1", "getattr-qd16", "readdirplus-10k"):
        assert rows[rid]["failed"] == {}
        assert rows[rid]["results"]["dying"]["ops"] > 0
    assert doc["restarts"] == {"dying": 2}
    assert len(doc["problems"]) == 2 and all(" on dying: " in p for p in doc["problems"])
    assert "FAILED" in proc.stdout and "PROBLEM: create-unlink-qd1 on dying" in proc.stdout
    # Noticed when its process ended (its pidfd), not after the 60 s stall timeout.
    assert doc["elapsed_s"] < 40


def test_a_back_end_that_never_starts_is_a_problem(tmp_path):
    proc, doc = run_bench(tmp_path, "-b", "ours", "-b", "never=sh -c 'echo no such luck; exit 3' {socket}",
                          "--no-host", "--rows", "getattr")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for row in doc["rows"]:
        assert "could not be started" in row["failed"]["never"]
        assert "no such luck" in row["failed"]["never"]
        assert row["results"]["ours"]["ops"] > 0
    assert len(doc["problems"]) == 2


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


def test_memory_per_inode_on_all_three_back_ends(tmp_path):
    """--memory-per-inode alone (--rows none): each back-end started afresh serves N LOOKUPs
    of distinct files (distinct nodeids, checked by the bench) and its memory is read before
    and after, over all its processes.  Every back-end keeps something per inode it was
    asked about, so the memory grows (4,000 inodes hold more than a page on any of them)."""
    n = 4000
    proc, doc = run_bench(tmp_path, "--rows", "none", "--no-equal-threads",
                          "--memory-per-inode", str(n))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["problems"] == [] and doc["rows"] == []
    assert sorted(doc["memory_per_inode"]) == sorted(BACKENDS)
    for name, r in doc["memory_per_inode"].items():
        assert r["inodes"] == n and r["lookups_per_s"] > 0, (name, r)
        assert r["after_kib"]["rss"] > r["before_kib"]["rss"], (name, r)
        assert r["rss_bytes_per_inode"] == round(
            (r["after_kib"]["rss"] - r["before_kib"]["rss"]) * 1024 / n, 1)
        assert r["before_kib"]["processes"] == r["after_kib"]["processes"] >= 1
    assert f"memory per inode the guest holds ({n:,} LOOKUPs" in proc.stdout
