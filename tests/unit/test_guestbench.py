"""The pure parts of ``pyvirtiofsd-bench --guest`` (no guest is booted): row selection, the
rotation of the back-ends, the fio job file and fio-error detection, the guest's script, and
the small-file workload's tarball, checksums and console parsing -- including its guest script
run on the host against a plain directory (bash, GNU tar and coreutils, as in the guest)."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile

import pytest

from pyvirtiofsd.bench import guestbench as gb
from pyvirtiofsd.bench import smallfiles as sf


# --- rows and order -------------------------------------------------------------------------

def test_rows_are_selected_by_id_or_prefix_and_the_small_file_phases_come_together():
    assert gb.select_rows(None) == [rid for rid, _, _ in gb.ROWS]
    assert gb.select_rows("seq-read") == ["seq-read-1m-qd1", "seq-read-1m-qd16"]
    assert gb.select_rows("smallfiles") == sf.ROW_IDS
    assert gb.select_rows("smallfiles-read,stat-cold") == ["stat-cold", *sf.ROW_IDS]
    with pytest.raises(ValueError, match="no guest row"):
        gb.select_rows("nope")
    assert gb.parts(gb.select_rows("smallfiles")) == ["smallfiles"]
    assert gb.parts(gb.select_rows(None)) == ["fio", "meta", "smallfiles"]
    assert gb.parts(["rand-read-4k-qd1", "create-unlink"]) == ["fio", "meta"]


def test_each_back_end_leads_once_in_as_many_rounds_as_there_are_back_ends():
    names = ["ours", "c-virtiofsd", "rust-virtiofsd"]
    orders = [gb.round_order(names, k) for k in range(3)]
    assert orders == [["ours", "c-virtiofsd", "rust-virtiofsd"],
                      ["c-virtiofsd", "rust-virtiofsd", "ours"],
                      ["rust-virtiofsd", "ours", "c-virtiofsd"]]
    for position in range(3):  # every back-end in every position once
        assert sorted(o[position] for o in orders) == sorted(names)
    assert gb.round_order(names, 3) == orders[0]
    assert gb.round_order([], 2) == []


# --- fio ------------------------------------------------------------------------------------

def test_the_fio_jobs_fsync_and_only_the_chosen_jobs_run():
    text = gb.job_file("/mnt/fio.bin", "64M", 2.0, ["seq-write-1m-qd1", "rand-read-4k-qd16"])
    assert "end_fsync=1" in text and "fsync_on_close=1" in text and "direct=1" in text
    assert "runtime=2000ms" in text
    sections = [l for l in text.splitlines() if l.startswith("[")]
    assert sections == ["[global]", "[seq-write-1m-qd1]", "[rand-read-4k-qd16]"]
    assert len([l for l in gb.job_file("/f", "8M", 1).splitlines() if l.startswith("[")]) == 9


def _fio_job(name, error=0, read_bytes=0, write_bytes=1 << 20, **extra):
    side = lambda n: {"io_bytes": n, "iops": 10.0, "bw_bytes": n,  # noqa: E731
                      "clat_ns": {"percentile": {"50.000000": 1000, "99.000000": 9000}}}
    return {"jobname": name, "error": error, "read": side(read_bytes), "write": side(write_bytes),
            **extra}


def test_fio_errors_are_found_per_job_and_from_the_exit_status():
    jobs = ["seq-write-1m-qd1", "rand-read-4k-qd1", "rand-write-4k-qd1"]
    doc = {"fio version": "fio-3.33", "jobs": [
        _fio_job("seq-write-1m-qd1"),
        _fio_job("rand-read-4k-qd1", error=5, error_str="Input/output error", write_bytes=0),
    ]}
    got = gb.fio_problems(doc, 0, jobs)
    assert got == {"rand-read-4k-qd1": ["fio job error 5 (Input/output error)"],
                   "rand-write-4k-qd1": ["no result from fio"]}
    clean = {"jobs": [_fio_job(j) for j in jobs]}
    assert gb.fio_problems(clean, 0, jobs) == {}
    # fio's own failure is charged to every job; so is a missing status (fio never ran).
    assert set(gb.fio_problems(clean, 1, jobs)) == set(jobs)
    assert all("exited with 1" in m[0] for m in gb.fio_problems(clean, 1, jobs).values())
    assert set(gb.fio_problems(None, None, jobs)) == set(jobs)
    idle = {"jobs": [_fio_job("seq-write-1m-qd1", write_bytes=0)]}
    assert gb.fio_problems(idle, 0, ["seq-write-1m-qd1"]) == {
        "seq-write-1m-qd1": ["fio job did no I/O"]}


def test_fio_output_is_parsed_past_warnings_and_cells_come_from_the_active_side():
    doc = {"jobs": [_fio_job("seq-read-1m-qd1", read_bytes=4 << 20, write_bytes=0)]}
    text = "fio: some warning about the file\n" + __import__("json").dumps(doc)
    parsed = gb.parse_fio_output(text)
    assert parsed == doc
    cell = gb.fio_cells(parsed)["seq-read-1m-qd1"]
    assert cell["mb_per_s"] == pytest.approx(4.194304) and cell["p99_us"] == 9
    with pytest.raises(ValueError):
        gb.parse_fio_output("fio: engine libaio not loadable\n")
    with pytest.raises(ValueError):
        gb.parse_fio_output('{"no": "jobs"}')


def test_the_guest_script_reports_every_parts_status_and_fails_if_any_failed(tmp_path):
    script = gb.guest_script(["fio", "meta", "smallfiles"], "/w/jobs.fio", "/w/meta.py", 2, "/w/sf")
    assert "--output=/mnt/fio.json" in script and "bash /w/sf/smallfiles.sh /w/sf /mnt" in script
    # Run its skeleton with stand-in commands: all parts run, each status is printed.
    stand_in = {"fio ": "true", gb.GUEST_PYTHON + " ": "false", "bash ": "true"}
    fake = "\n".join(next((v for k, v in stand_in.items() if l.startswith(k)), l)
                     for l in script.replace("cd /mnt", f"cd {tmp_path}").splitlines())
    res = subprocess.run(["sh", "-c", fake], capture_output=True, text=True)
    assert res.returncode == 1
    assert gb.part_statuses(res.stdout) == {"fio": 0, "meta": 1, "smallfiles": 0}
    assert gb.part_statuses("PVFS-BENCH fio-exit\nnoise PVFS-BENCH x-exit 3\n") == {}


def test_medians_of_rates_and_of_times_with_their_spread():
    runs = [{"load": 1.0, "seconds": 10, "problems": {}, "r": {"iops": v},
             "smallfiles-total": {"seconds": t}} for v, t in ((100, 30.0), (300, 10.0), (200, 20.0))]
    m = gb._median_run(runs)
    assert m["r"]["iops"] == 200 and m["r"]["spread"] == pytest.approx(1.0)
    assert m["smallfiles-total"]["seconds"] == 20.0 and m["smallfiles-total"]["runs"] == [10, 20, 30]
    assert m["seconds"] == 30 and "problems" not in m
    results = {"ours": m, "c-virtiofsd": gb._median_run(runs[:1])}
    head, body = gb.time_table([("smallfiles-total", "total")], results, ["ours", "c-virtiofsd"],
                               {"smallfiles-total"})
    assert "speed vs c-virtiofsd" in head[1]
    assert body[0][1].startswith("20.00 s") and "(1.50x)" in body[0][1]  # c: 30 s, ours: 20 s
    assert body[0][-1] == "PROBLEM"


def test_a_problem_that_hit_many_rows_is_reported_once():
    rows = ["seq-read-1m-qd1", "create-unlink", *sf.ROW_IDS]
    everywhere = {rid: ["run failed: back-end exited"] for rid in rows}
    assert gb.problem_lines(everywhere, rows, "on ours (round 2)") == [
        "every row on ours (round 2): run failed: back-end exited"]
    found = {rid: ["checksum differs"] for rid in sf.ROW_IDS}
    found["seq-read-1m-qd1"] = ["fio job error 5", "fio exited with 1"]
    assert gb.problem_lines(found, rows, "on x (round 1)") == [
        "smallfiles-* on x (round 1): checksum differs",
        "seq-read-1m-qd1 on x (round 1): fio job error 5",
        "seq-read-1m-qd1 on x (round 1): fio exited with 1"]


# --- the small-file workload ----------------------------------------------------------------

def test_the_tree_and_its_tarball_are_the_same_every_time_and_shaped_like_a_source_tree():
    a, b = sf.make_tree(400), sf.make_tree(400)
    assert a == b and sf.tarball(a) == sf.tarball(b)
    assert sf.make_tree(400, seed=12) != a
    assert len(a.files) == 400 and len({p for p, _ in a.files}) == 400
    assert all(sf.MIN_SIZE <= len(d) <= sf.MAX_SIZE for _, d in a.files)
    assert 2 <= max(d.count("/") for d in a.dirs) <= 4
    assert all(p.rsplit("/", 1)[0] in a.dirs for p, _ in a.files)
    with tarfile.open(fileobj=io.BytesIO(sf.tarball(a))) as tar:
        members = tar.getmembers()
        assert {m.name for m in members if m.isfile()} == {p for p, _ in a.files}
        first = next(m for m in members if m.isfile())
        assert tar.extractfile(first).read() == dict(a.files)[first.name]
        assert {m.mtime for m in members} == {sf.MTIME} and {m.uid for m in members} == {0}
    rw = a.rewrites()
    assert len(rw) == 40 and all(size == len(dict(a.files)[f"{sf.TOP}/{p}"]) for _, size, p in rw)
    assert not a.pattern.endswith(b"\n")


def test_manifests_are_what_md5sum_prints():
    tree = sf.make_tree(20)
    lines = sf.tree_manifest(tree).splitlines()
    assert len(lines) == 20 and lines == sorted(lines, key=lambda l: l.split("  ", 1)[1])
    path, data = tree.files[0]
    assert f"{hashlib.md5(data).hexdigest()}  ./{path[len(sf.TOP) + 1:]}" in lines
    assert sf.digest("x\n") == hashlib.md5(b"x\n").hexdigest()


CONSOLE = """\
PVFS-GUEST: virtiofs tag share mounted at /mnt
PVFS-SF PHASE extract 8620113
PVFS-SF PHASE stat 810000
PVFS-SF ENTRIES {entries}
PVFS-SF PHASE read 5570000
PVFS-SF TREESUM {tree}  -
PVFS-SF PHASE rewrite 1720000
PVFS-SF REWRITESUM {rewrite}  -
PVFS-SF PHASE rm 2480000
PVFS-SF DONE
PVFS-BENCH smallfiles-exit 0
"""


def test_the_console_is_parsed_and_checksums_compared(tmp_path):
    fx = sf.prepare(str(tmp_path / "fx"), 50)
    good = CONSOLE.format(entries=fx.files + fx.dirs, tree=fx.tree_sum, rewrite=fx.rewrite_sum)
    parsed = sf.parse_console(good)
    assert parsed["phases"]["extract"] == pytest.approx(8.620113) and parsed["done"]
    assert sf.check(parsed, fx) == []
    cells = sf.cells(parsed)
    assert cells["smallfiles-total"]["seconds"] == pytest.approx(19.200113)
    assert set(cells) == set(sf.ROW_IDS)
    bad = sf.parse_console(good.replace(fx.tree_sum, "0" * 32))
    assert any("extracted tree checksum" in p for p in sf.check(bad, fx))
    bad = sf.parse_console(good.replace(fx.rewrite_sum, "0" * 32))
    assert any("rewritten files checksum" in p for p in sf.check(bad, fx))
    cut = sf.parse_console("\n".join(good.splitlines()[:4]) + "\nPVFS-SF FAIL read\n")
    problems = sf.check(cut, fx)
    assert "guest: read" in problems and any("no time for read, rewrite, rm" in p for p in problems)
    assert "smallfiles-total" not in sf.cells(cut)
    assert any("did not finish" in p for p in sf.check(sf.parse_console(
        good.replace("PVFS-SF DONE\n", "")), fx))


@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("tar"), reason="bash and tar")
def test_the_guest_script_on_a_host_directory_prints_the_expected_checksums(tmp_path):
    """The script as the guest runs it, on a plain directory (drop_caches and sync made
    no-ops: this is not a guest); its checksums must be the ones computed in Python."""
    fx = sf.prepare(str(tmp_path / "fx"), 120)
    script = tmp_path / "fx" / "smallfiles.sh"
    lines = script.read_text().splitlines()
    assert sum(l.startswith("drop() {") for l in lines) == 1 and "sync" in lines
    script.write_text("\n".join(
        "drop() { :; }" if l.startswith("drop() {") else ":" if l in ("sync", "sync; drop") else l
        for l in lines) + "\n")
    mnt, scratch = tmp_path / "mnt", tmp_path / "scratch"
    mnt.mkdir()
    scratch.mkdir()
    res = subprocess.run(["bash", str(script), fx.directory, str(mnt)], capture_output=True,
                         text=True, env={**os.environ, "PVFS_SF_TMP": str(scratch)}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    parsed = sf.parse_console(res.stdout)
    assert sf.check(parsed, fx) == [], res.stdout
    assert parsed["tree_sum"] == fx.tree_sum and not os.path.exists(mnt / sf.TOP)
    assert (scratch / "tree.tar").read_bytes() == sf.tarball(sf.make_tree(120))
