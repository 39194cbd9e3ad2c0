"""The small-file guest workload of ``pyvirtiofsd-bench --guest`` (rows ``smallfiles-*``).

What a user does with a source tree on a virtio-fs mount, timed phase by phase inside the
guest: (a) extract a tarball of a few thousand small files (``tar -x``, then ``sync``),
(b) drop the guest's caches and stat everything (``find -printf``: a LOOKUP and GETATTR per
name), (c) read everything (``find | sort | xargs md5sum``: OPEN/READ/RELEASE per file, and the
checksums), (d) rewrite every 10th file in place (open with O_TRUNC, write, close; then
``sync``), (e) ``rm -rf`` the tree (then ``sync``).

The tree is generated on the host, deterministically (:func:`make_tree`: a fixed seed, fixed
names, sizes and contents, a tarball with fixed metadata), into a directory *outside* the
share; the guest copies the tarball into its own RAM (its /tmp is a tmpfs) before the clock
starts, so only the back-end under test is measured. The guest prints each phase's time in
microseconds (bash's ``$EPOCHREALTIME``: no fork per timestamp) and the checksums on the
console; :func:`parse_console` reads them and :func:`check` compares the checksums of the
extracted tree and of the rewritten files with the ones computed here. A mismatch, a missing
phase or a failed command is a problem (the row is marked PROBLEM and the bench fails).
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tarfile
from dataclasses import dataclass

# 3000 files (~16 MiB, 1-16 KiB each, log-uniform: mostly small, like source files) in 150
# directories up to 4 levels deep. The count was chosen for TCG on the 2-core reference
# machine: one guest per back-end takes ~30 s (boot and the tarball into guest RAM ~5 s, the
# five phases 19-25 s, extract and read the longest), well inside the 1-2 minutes a round
# per back-end may take, so 3 rounds of the three back-ends take ~5 minutes; and each phase
# lasts long enough (stat, the shortest, ~0.8 s) that per-file costs, not the guest's fixed
# costs (starting tar, find, sync; ~10 ms each), make it up. --quick uses 500.
DEFAULT_FILES = 3000
QUICK_FILES = 500
SEED = 11
REWRITE_EVERY = 10
TOP = "tree"             # the tarball's one top-level directory, extracted into the mount
MIN_SIZE, MAX_SIZE = 1 << 10, 16 << 10
PATTERN_SLACK = 64        # rewritten file i gets PATTERN[i % 64 : i % 64 + size]
MTIME = 1_700_000_000     # every tar member's mtime: the tarball is the same bytes every time

PHASES = ("extract", "stat", "read", "rewrite", "rm")
ROWS = [(f"smallfiles-{p}", title) for p, title in (
    ("extract", "tar -x + sync"),
    ("stat", "drop caches, find -printf (stat all)"),
    ("read", "read all (find|sort|xargs md5sum)"),
    ("rewrite", "rewrite every 10th + sync"),
    ("rm", "rm -rf + sync"),
    ("total", "total"),
)]
ROW_IDS = [rid for rid, _ in ROWS]

_TOPS = ("src", "lib", "include", "tests", "docs", "tools", "drivers", "net")
_WORDS = ("core", "util", "parse", "io", "net", "fs", "mem", "sched", "log", "conf", "proto",
          "hash", "list", "tree", "queue", "buf", "str", "time", "dev", "init")
_EXTS = (".c", ".c", ".h", ".py", ".rs", ".txt", ".md", ".S")


@dataclass(frozen=True)
class Tree:
    """The generated tree: ``dirs`` and ``files`` (path, bytes) relative to the tarball's root,
    both sorted; ``pattern`` the printable text that the rewrite phase writes."""

    dirs: tuple[str, ...]
    files: tuple[tuple[str, bytes], ...]
    pattern: bytes

    def rewrites(self) -> list[tuple[int, int, str]]:
        """(pattern offset, size, path below TOP) of every REWRITE_EVERY-th file (sorted order):
        its new contents are ``pattern[offset:offset + size]``, the same size as before."""
        out = []
        for i, (path, data) in enumerate(self.files):
            if i % REWRITE_EVERY == 0:
                out.append((i % PATTERN_SLACK, len(data), path[len(TOP) + 1:]))
        return out


def make_tree(count: int = DEFAULT_FILES, seed: int = SEED) -> Tree:
    """``count`` files shaped like a source tree, the same for the same (count, seed)."""
    if count < 1:
        raise ValueError("at least one file")
    rng = random.Random(seed)
    dirs = [TOP] + [f"{TOP}/{t}" for t in _TOPS]
    depth = {d: d.count("/") for d in dirs}
    n_dirs = max(len(dirs), count // 20)
    while len(dirs) < n_dirs:
        parent = rng.choice([d for d in dirs[1:] if depth[d] < 4])
        name = f"{parent}/{rng.choice(_WORDS)}{rng.randrange(100)}"
        if name not in depth:
            dirs.append(name)
            depth[name] = name.count("/")
    files: dict[str, bytes] = {}
    while len(files) < count:
        d = rng.choice(dirs[1:])
        name = f"{d}/{rng.choice(_WORDS)}_{rng.choice(_WORDS)}{rng.randrange(1000)}{rng.choice(_EXTS)}"
        if name in files or name in depth:
            continue
        size = int(MIN_SIZE * 2 ** rng.uniform(0, 4))
        files[name] = rng.randbytes(min(size, MAX_SIZE))
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _;{}()\n"
    pattern = bytes(rng.choice(alphabet) for _ in range(MAX_SIZE + PATTERN_SLACK))
    pattern = pattern[:-1] + b"."  # bash's $(< file) would drop a trailing newline
    return Tree(tuple(sorted(dirs)), tuple(sorted(files.items())), pattern)


def tarball(tree: Tree) -> bytes:
    """The tree as a tar archive, byte-for-byte the same for the same tree (fixed owner,
    modes and mtimes; directories first, then files, each sorted)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in tree.dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for path, data in tree.files:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def md5sum_lines(entries) -> str:
    """What ``md5sum`` prints for (name, data) entries, in the order given."""
    return "".join(f"{hashlib.md5(data).hexdigest()}  {name}\n" for name, data in entries)


def tree_manifest(tree: Tree) -> str:
    """What the guest's read phase prints: ``cd TOP; find . -type f -print0 | LC_ALL=C sort -z
    | xargs -0 md5sum``."""
    names = sorted(("./" + path[len(TOP) + 1:], data) for path, data in tree.files)
    return md5sum_lines(names)


def rewrite_manifest(tree: Tree) -> str:
    """What ``md5sum`` prints for the rewritten files after the rewrite phase (list order)."""
    return md5sum_lines((path, tree.pattern[off:off + size]) for off, size, path in tree.rewrites())


def digest(text: str) -> str:
    """``md5sum < file`` of a manifest: the figure the guest prints."""
    return hashlib.md5(text.encode()).hexdigest()


@dataclass(frozen=True)
class Fixture:
    """The files the guest reads (in ``directory``, outside the share) and what it must print."""

    directory: str
    files: int
    dirs: int
    tree_sum: str
    rewrite_sum: str
    tree_manifest: str
    tarball_bytes: int


def prepare(directory: str, count: int = DEFAULT_FILES, seed: int = SEED) -> Fixture:
    """Write ``tree.tar``, ``pattern``, ``rewrite.list``, ``tree.md5`` and the guest script
    ``smallfiles.sh`` into ``directory`` (created; it must not be inside the share)."""
    tree = make_tree(count, seed)
    os.makedirs(directory, exist_ok=True)
    data = tarball(tree)
    manifest = tree_manifest(tree)
    rewrites = rewrite_manifest(tree)
    for name, content in (("tree.tar", data), ("pattern", tree.pattern),
                          ("rewrite.list", "".join(f"{o} {s} {p}\n" for o, s, p in tree.rewrites()).encode()),
                          ("tree.md5", manifest.encode()), ("rewrite.md5", rewrites.encode()),
                          ("smallfiles.sh", GUEST_SCRIPT.encode())):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)
    return Fixture(directory, len(tree.files), len(tree.dirs), digest(manifest), digest(rewrites),
                   manifest, len(data))


# Run in the guest as ``bash smallfiles.sh FIXTURE_DIR MOUNT``: FIXTURE_DIR is the host
# directory of :func:`prepare` as the guest sees it (through the 9p host root).
GUEST_SCRIPT = r"""#!/bin/bash
# pyvirtiofsd-bench --guest: the small-file workload (pyvirtiofsd/bench/smallfiles.py).
set -u -o pipefail
export LC_ALL=C
src=$1 mnt=$2
tree=$mnt/tree
tmp=${PVFS_SF_TMP:-/tmp}   # the guest's /tmp is a tmpfs: guest RAM
say() { echo "PVFS-SF $*"; }
fail() { say "FAIL $*"; exit 1; }
drop() { echo 3 > /proc/sys/vm/drop_caches || fail "drop_caches"; }
lap() { local t1=${EPOCHREALTIME/./}; say "PHASE $1 $((t1 - t0))"; }
# Into guest RAM first: reading them costs the back-end nothing.
cp "$src/tree.tar" "$src/rewrite.list" "$tmp/" || fail "copy the fixture into guest RAM"
pat=$(< "$src/pattern") || fail "read the pattern"
[ ! -e "$tree" ] || fail "$tree exists before the run"
sync; drop

t0=${EPOCHREALTIME/./}
tar -xf "$tmp/tree.tar" -C "$mnt" --no-same-owner || fail "tar -x"
sync
lap extract

drop
t0=${EPOCHREALTIME/./}
find "$tree" -printf '%m %n %s %T@ %p\n' > "$tmp/stat.out" || fail "find -printf"
lap stat
say "ENTRIES $(wc -l < "$tmp/stat.out")"

t0=${EPOCHREALTIME/./}
(cd "$tree" && find . -type f -print0 | sort -z | xargs -0 md5sum) > "$tmp/tree.md5" || fail "read"
lap read
say "TREESUM $(md5sum < "$tmp/tree.md5")"

t0=${EPOCHREALTIME/./}
while read -r off size path; do
    printf '%s' "${pat:off:size}" > "$tree/$path" || fail "rewrite $path"
done < "$tmp/rewrite.list"
sync
lap rewrite
drop
(cd "$tree" && cut -d' ' -f3- "$tmp/rewrite.list" | xargs -d '\n' md5sum) > "$tmp/rewrite.md5" || fail "re-read"
say "REWRITESUM $(md5sum < "$tmp/rewrite.md5")"

t0=${EPOCHREALTIME/./}
rm -rf "$tree" || fail "rm -rf"
sync
lap rm
[ ! -e "$tree" ] || fail "$tree still there after rm -rf"
say DONE
"""

_LINE = re.compile(r"^PVFS-SF (\w+) ?(.*)$")


def parse_console(text: str) -> dict:
    """The workload's lines on a guest console: ``{"phases": {name: seconds}, "entries": int,
    "tree_sum": hex, "rewrite_sum": hex, "failed": message or None, "done": bool}``."""
    out: dict = {"phases": {}, "entries": None, "tree_sum": None, "rewrite_sum": None,
                 "failed": None, "done": False}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        key, rest = m.groups()
        if key == "PHASE":
            name, _, us = rest.partition(" ")
            if us.strip().isdigit():
                out["phases"][name] = int(us) / 1e6
        elif key == "ENTRIES" and rest.strip().isdigit():
            out["entries"] = int(rest)
        elif key in ("TREESUM", "REWRITESUM"):
            out["tree_sum" if key == "TREESUM" else "rewrite_sum"] = (rest.split() or [None])[0]
        elif key == "FAIL":
            out["failed"] = rest or "(no message)"
        elif key == "DONE":
            out["done"] = True
    return out


def check(parsed: dict, fixture: Fixture) -> list[str]:
    """What is wrong with one run (empty: every phase ran and every checksum matches)."""
    problems = []
    if parsed["failed"]:
        problems.append(f"guest: {parsed['failed']}")
    missing = [p for p in PHASES if p not in parsed["phases"]]
    if missing:
        problems.append("no time for " + ", ".join(missing))
    want = fixture.files + fixture.dirs
    if parsed["entries"] is not None and parsed["entries"] != want:
        problems.append(f"stat saw {parsed['entries']} entries, the tree has {want}")
    if parsed["tree_sum"] is not None and parsed["tree_sum"] != fixture.tree_sum:
        problems.append(f"extracted tree checksum {parsed['tree_sum']} != {fixture.tree_sum}")
    if parsed["rewrite_sum"] is not None and parsed["rewrite_sum"] != fixture.rewrite_sum:
        problems.append(f"rewritten files checksum {parsed['rewrite_sum']} != {fixture.rewrite_sum}")
    if not problems and not parsed["done"]:
        problems.append("the workload did not finish")
    return problems


def cells(parsed: dict) -> dict:
    """The rows' cells of one run: ``{row id: {"seconds": s}}`` with the total."""
    out = {f"smallfiles-{p}": {"seconds": s} for p, s in parsed["phases"].items() if p in PHASES}
    if all(p in parsed["phases"] for p in PHASES):
        out["smallfiles-total"] = {"seconds": sum(parsed["phases"][p] for p in PHASES)}
    return out
