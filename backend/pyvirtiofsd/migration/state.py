"""The migration state: its format, what the source saves and how the destination loads it.

What a destination needs to go on with the guest's FUSE session:

* the session (what INIT negotiated: minor, flags, max_write, max_read);
* every inode the guest holds: its nodeid, its lookup count, its file type, and how to find
  the file again -- its path relative to the shared directory (``find-paths``) or a file
  handle (``file-handles``), or both (``--migration-verify-handles``);
* every open handle: fh, the nodeid it was opened on, its open flags;
* the counters for the next nodeid and fh, so new numbers never collide with old ones.

Format (version 1)::

    b"PVFSMIG\\0"  u32 version  u32 reserved (0)  u64 body length  body

all little-endian; the body is UTF-8 JSON, exactly ``body length`` bytes, nothing after it::

    {"session": null | {"minor", "flags", "max_write", "max_read"},
     "next_nodeid": int, "next_fh": int,
     "inodes": [{"n": nodeid, "l": lookups, "t": S_IFMT bits,
                 "p": base64 path (optional), "h": [mount_id, type, base64 handle] (optional),
                 "e": why the source could not describe it (optional)}, ...],
     "handles": [{"f": fh, "n": nodeid, "o": open flags,
                  "e": why the source could not describe it (optional)}, ...]}

The stream is read to EOF with a cap (:data:`MAX_STATE_BYTES`); no buffer is sized by a
number the stream claims.  Every field is checked before it is used; a state that does
not parse is refused whole.  Paths are relative, without ``..`` and opened with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` from the shared directory, so no
state -- hostile or confused -- opens anything outside it (symlinks included); a file
opened by handle must be found inside the shared directory too.

On a state that parses but whose files cannot all be found (renamed or removed on the
host in between): ``--migration-on-error=abort`` refuses the whole state (the front-end's
CHECK_DEVICE_STATE fails, and QEMU the migration); ``guest-error`` loads what it can and
keeps the rest as *lost* inodes and handles, which answer the guest EIO until it forgets
or releases them.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

from pyvirtiofsd import logs
from pyvirtiofsd.passthrough import file_handle, syscalls
from pyvirtiofsd.passthrough.common import PATH_FLAGS, RESOLVE, STAT_EMPTY, STRIP_OPEN, inode_key
from pyvirtiofsd.passthrough.file_handle import FileHandle

log = logs.get_logger("pyvirtiofsd.migration")

MAGIC = b"PVFSMIG\0"
VERSION = 1
_HEAD = struct.Struct("<8sIIQ")
MAX_STATE_BYTES = 512 << 20
"""The most a state may be (about 3 million inodes with paths); more is refused."""
MAX_ENTRIES = 1 << 24
MAX_PATH = 4096
MAX_ID = (1 << 63) - 1
MODES = ("find-paths", "file-handles")
ON_ERROR = ("abort", "guest-error")
# A handle's flags are its host fd's F_GETFL, which keeps O_NOFOLLOW (CREATE opens with it):
# reopened through the /proc magic link it would fail with ELOOP, so it goes with the rest.
_OPEN_KEEP = ~(STRIP_OPEN | os.O_TRUNC)


class MigrationError(Exception):
    """The state cannot be saved or loaded; the message says why."""


@dataclass(frozen=True)
class MigrationOptions:
    mode: str = "find-paths"
    on_error: str = "abort"
    verify_handles: bool = False
    confirm_paths: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"migration mode must be one of {MODES}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"migration on-error must be one of {ON_ERROR}")


# -- the stream ---------------------------------------------------------------------------

def read_stream(fd: int, limit: int = MAX_STATE_BYTES) -> bytes:
    """Everything until EOF; more than ``limit`` bytes is refused."""
    buf = bytearray()
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise MigrationError(f"state larger than {limit} bytes")


def write_stream(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def encode(state: dict) -> bytes:
    body = json.dumps(state, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, VERSION, 0, len(body)) + body


def decode(data: bytes) -> dict:
    """Parse and check a state; MigrationError on anything malformed."""
    if len(data) < _HEAD.size:
        raise MigrationError(f"state too short ({len(data)} bytes)")
    magic, version, reserved, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise MigrationError("not a pyvirtiofsd migration state (bad magic)")
    if version != VERSION:
        raise MigrationError(f"state version {version}, this daemon reads {VERSION}")
    if reserved != 0:
        raise MigrationError("reserved header field is not 0")
    if length != len(data) - _HEAD.size:
        raise MigrationError(f"state body claims {length} bytes, has {len(data) - _HEAD.size}")
    try:
        raw = json.loads(data[_HEAD.size:].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MigrationError(f"state body is not valid JSON: {e}") from None
    return _check_state(raw)


def _int(v: Any, what: str, lo: int = 0, hi: int = MAX_ID) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise MigrationError(f"{what}: expected an integer in [{lo}, {hi}], got {v!r:.60}")
    return v


def _b64(v: Any, what: str, limit: int) -> bytes:
    if type(v) is not str or len(v) > 4 * limit // 3 + 4:
        raise MigrationError(f"{what}: expected base64 of at most {limit} bytes")
    try:
        out = base64.b64decode(v, validate=True)
    except ValueError:
        raise MigrationError(f"{what}: not base64") from None
    if len(out) > limit:
        raise MigrationError(f"{what}: longer than {limit} bytes")
    return out


def _check_path(p: bytes, what: str) -> bytes:
    if not p or p.startswith(b"/") or b"\0" in p:
        raise MigrationError(f"{what}: path {p!r:.80} is not a relative path")
    if any(c in (b"..", b"") for c in p.split(b"/")):
        raise MigrationError(f"{what}: path {p!r:.80} has '..' or empty components")
    return p


def _check_state(raw: Any) -> dict:
    if type(raw) is not dict:
        raise MigrationError("state body is not an object")
    for key in ("session", "next_nodeid", "next_fh", "inodes", "handles"):
        if key not in raw:
            raise MigrationError(f"state has no {key!r}")
    s = raw["session"]
    if s is not None:
        if type(s) is not dict:
            raise MigrationError("session is not an object")
        s = {k: _int(s.get(k), f"session.{k}", 0, (1 << 64) - 1)
             for k in ("minor", "flags", "max_write", "max_read")}
    inodes, handles = raw["inodes"], raw["handles"]
    if type(inodes) is not list or type(handles) is not list:
        raise MigrationError("inodes and handles must be lists")
    if len(inodes) > MAX_ENTRIES or len(handles) > MAX_ENTRIES:
        raise MigrationError(f"more than {MAX_ENTRIES} inodes or handles")
    if s is None and (inodes or handles):
        raise MigrationError("inodes or handles without a FUSE session")
    out_inodes, seen = [], set()
    for k, e in enumerate(inodes):
        what = f"inode #{k}"
        if type(e) is not dict:
            raise MigrationError(f"{what} is not an object")
        nodeid = _int(e.get("n"), f"{what} nodeid", 2)
        if nodeid in seen:
            raise MigrationError(f"nodeid {nodeid} appears twice")
        seen.add(nodeid)
        ino = {"n": nodeid, "l": _int(e.get("l"), f"{what} lookups", 1),
               "t": _int(e.get("t"), f"{what} type", 0, 0o170000)}
        if stat.S_IFMT(ino["t"]) != ino["t"] or not ino["t"]:
            raise MigrationError(f"{what}: {ino['t']:#o} is not a file type")
        if "e" in e:
            if type(e["e"]) is not str:
                raise MigrationError(f"{what}: error is not a string")
            ino["e"] = e["e"][:200]
        if "p" in e:
            ino["p"] = _check_path(_b64(e["p"], f"{what} path", MAX_PATH), what)
        if "h" in e:
            h = e["h"]
            if type(h) is not list or len(h) != 3:
                raise MigrationError(f"{what}: handle is not [mount_id, type, data]")
            ino["h"] = FileHandle(_int(h[0], f"{what} mount id", 0, (1 << 31) - 1),
                                  _int(h[1], f"{what} handle type", -(1 << 31), (1 << 31) - 1),
                                  _b64(h[2], f"{what} handle", file_handle.MAX_HANDLE_SZ))
        if "e" not in ino and "p" not in ino and "h" not in ino:
            raise MigrationError(f"{what}: neither path nor handle")
        out_inodes.append(ino)
    out_handles, fhs = [], set()
    for k, e in enumerate(handles):
        what = f"handle #{k}"
        if type(e) is not dict:
            raise MigrationError(f"{what} is not an object")
        fh = _int(e.get("f"), f"{what} fh", 1)
        if fh in fhs:
            raise MigrationError(f"fh {fh} appears twice")
        fhs.add(fh)
        h = {"f": fh, "n": _int(e.get("n"), f"{what} nodeid", 1),
             "o": _int(e.get("o"), f"{what} flags", 0, (1 << 32) - 1)}
        if "e" in e:
            if type(e["e"]) is not str:
                raise MigrationError(f"{what}: error is not a string")
            h["e"] = e["e"][:200]
        out_handles.append(h)
    return {"session": s, "next_nodeid": _int(raw["next_nodeid"], "next_nodeid", 2),
            "next_fh": _int(raw["next_fh"], "next_fh", 1),
            "inodes": out_inodes, "handles": out_handles}


# -- the source ---------------------------------------------------------------------------

def _root_prefix(fs) -> bytes:
    return os.readlink(str(fs.store.root_fd).encode(), dir_fd=fs._proc_fd)


def _path_of(fs, fd: int, prefix: bytes) -> bytes:
    """fd's path relative to the shared directory, from /proc/self/fd."""
    link = os.readlink(str(fd).encode(), dir_fd=fs._proc_fd)
    if not link.startswith(b"/"):
        raise OSError(errno.ENOENT, f"not a path ({link!r:.60})")
    if prefix == b"/":
        rel = link[1:]
    elif link.startswith(prefix + b"/"):
        rel = link[len(prefix) + 1:]
    else:
        raise OSError(errno.EXDEV, "outside the shared directory")
    if not rel:
        raise OSError(errno.EINVAL, "the shared directory itself")
    if link.endswith(b" (deleted)"):
        # The name it was reached by is gone (another may remain), or a file is really
        # called so: only the latter is a path, and only if it leads to this very file.
        if os.fstat(fd).st_nlink == 0:
            raise OSError(errno.ENOENT, "unlinked on the host")
        _confirm(fs, _check_path(rel, "path"), _key_of(fd)[0])
    return _check_path(rel, "path")


def _confirm(fs, rel: bytes, key: tuple) -> None:
    """rel (beneath the shared directory) leads to the file with identity key."""
    try:
        fd = _open_beneath(fs, rel)
    except OSError as e:
        raise OSError(e.errno, f"its path does not lead to it any more ({e.strerror})") from None
    try:
        if _key_of(fd)[0] != key:
            raise OSError(errno.ESTALE, "its path leads to another file now")
    finally:
        os.close(fd)


def _open_beneath(fs, rel: bytes) -> int:
    return syscalls.openat2(fs.store.root_fd, rel, PATH_FLAGS, RESOLVE)


def _key_of(fd: int) -> tuple:
    stx = syscalls.statx(fd, b"", STAT_EMPTY, syscalls.STATX_BASIC_STATS | syscalls.STATX_MNT_ID)
    return inode_key(stx), stx.mode


def save(server, opts: MigrationOptions) -> bytes:
    """The state of ``server`` (its file system a PassthroughFs), encoded.  Call with the
    queues stopped."""
    fs = server.fs
    s = server.session
    session = None if s is None else {"minor": s.minor, "flags": s.flags,
                                      "max_write": s.max_write, "max_read": s.max_read}
    next_nodeid, next_fh = fs.store.next_ids()
    prefix = _root_prefix(fs)
    inodes, failed = [], 0
    for nodeid, lookups in fs.inodes.list():
        e: dict[str, Any] = {"n": nodeid, "l": lookups}
        try:
            with fs.inodes.borrow(nodeid) as i:
                e["t"] = stat.S_IFMT(i.mode)
                if opts.mode == "find-paths":
                    rel = _path_of(fs, i.fd, prefix)
                    if opts.confirm_paths:
                        _confirm(fs, rel, i.key)
                    e["p"] = base64.b64encode(rel).decode()
                if opts.mode == "file-handles" or opts.verify_handles:
                    h = file_handle.handle_of(i.fd)
                    e["h"] = [h.mount_id, h.type, base64.b64encode(h.data).decode()]
        except OSError as err:
            failed += 1
            e.setdefault("t", stat.S_IFREG)
            e.pop("p", None)
            e["e"] = err.strerror or str(err)
            log.warning("migration: cannot describe an inode", nodeid=nodeid, reason=e["e"])
        inodes.append(e)
    handles = []
    for fh, nodeid in fs.handles.list():
        e = {"f": fh, "n": nodeid, "o": 0}
        try:
            with fs.handles.borrow(fh) as h:
                e["o"] = _fcntl_getfl(h.fd)
        except OSError as err:
            if err.errno == errno.EBADF:
                continue                       # released meanwhile
            e["e"] = err.strerror or str(err)  # lost in an earlier migration: still lost
        handles.append(e)
    log.info("migration state saved", inodes=len(inodes), handles=len(handles),
             undescribed=failed, mode=opts.mode)
    return encode({"session": session, "next_nodeid": next_nodeid, "next_fh": next_fh,
                   "inodes": inodes, "handles": handles})


def _fcntl_getfl(fd: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_GETFL)


# -- the destination ----------------------------------------------------------------------

def _open_by_handle(fs, h: FileHandle, prefix: bytes, mount_fd: int) -> int:
    try:
        fd = file_handle.open_handle(mount_fd, h, PATH_FLAGS)
    except OSError as e:
        if e.errno == errno.EPERM:
            raise MigrationError("--migration-mode=file-handles needs CAP_DAC_READ_SEARCH "
                                 "on the destination (open_by_handle_at: EPERM)") from None
        raise
    try:
        _path_of(fs, fd, prefix)          # it must be inside the shared directory
    except BaseException:
        os.close(fd)
        raise
    return fd


def _find(fs, ino: dict, opts: MigrationOptions, prefix: bytes,
          mount_fd: int) -> tuple[int, tuple, int]:
    """An O_PATH fd for the inode the state describes, its identity and mode."""
    if "e" in ino:
        raise OSError(errno.EIO, f"the source could not describe it: {ino['e']}")
    if "p" in ino:
        fd = _open_beneath(fs, ino["p"])
    elif opts.mode == "file-handles" or "h" in ino:
        fd = _open_by_handle(fs, ino["h"], prefix, mount_fd)
    else:
        raise OSError(errno.EINVAL, "no path")
    try:
        key, mode = _key_of(fd)
        if stat.S_IFMT(mode) != ino["t"]:
            raise OSError(errno.ESTALE, f"file type {stat.S_IFMT(mode):#o}, "
                                        f"the source had {ino['t']:#o}")
        if "p" in ino and "h" in ino and opts.verify_handles:
            h = file_handle.handle_of(fd)
            if (h.type, h.data) != (ino["h"].type, ino["h"].data):
                raise OSError(errno.ESTALE, "the path leads to another file than the handle")
    except BaseException:
        os.close(fd)
        raise
    return fd, key, mode


def load(server, opts: MigrationOptions, data: bytes) -> None:
    """Load the state ``data`` into ``server`` (a fresh daemon: no session, no inodes).
    MigrationError when it cannot (for ``abort``, also when a file cannot be found; the
    server is then left without a session)."""
    state = decode(data)
    fs = server.fs
    if len(fs.inodes) > 1 or len(fs.handles):
        raise MigrationError("the destination already serves a session")
    if state["session"] is None:
        log.info("migration state loaded: no FUSE session")
        return
    if opts.mode == "file-handles":
        why = file_handle.probe(fs.store.root_fd)
        if why is not None:
            raise MigrationError(f"--migration-mode=file-handles on the destination: {why}")
    s = state["session"]
    try:
        server.restore_session(s["minor"], s["flags"], s["max_write"], s["max_read"])
    except ValueError as e:
        raise MigrationError(str(e)) from None
    prefix = _root_prefix(fs)
    problems: list[str] = []
    lost_inodes = set()
    # open_by_handle_at wants a real (not O_PATH) fd on the mount
    mount_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fs.store.root_fd)
    try:
        for ino in state["inodes"]:
            nodeid = ino["n"]
            try:
                fd, key, mode = _find(fs, ino, opts, prefix, mount_fd)
            except OSError as e:
                problems.append(f"inode {nodeid}: {e.strerror or e}")
                if opts.on_error == "abort":
                    raise MigrationError(problems[-1]) from None
                fs.inodes.insert(nodeid, ino["l"], -1, (0, 0, 0), ino["t"])
                lost_inodes.add(nodeid)
                continue
            try:
                handle = fs._handle_for(fd, mode)
            except OSError:
                os.close(fd)
                raise
            try:
                fs.inodes.insert(nodeid, ino["l"], fd, key, mode, handle)
            except OSError as e:
                raise MigrationError(f"inode {nodeid}: {e.strerror} (the state names one "
                                     "file twice?)") from None
        for h in state["handles"]:
            fd = -1
            try:
                if "e" in h:
                    raise OSError(errno.EIO, f"the source could not describe it: {h['e']}")
                if h["n"] in lost_inodes:
                    raise OSError(errno.EIO, "its inode is lost")
                flags = h["o"] & _OPEN_KEEP | os.O_CLOEXEC
                if fs.readonly and flags & os.O_ACCMODE != os.O_RDONLY:
                    raise OSError(errno.EROFS, "a write handle on a read-only daemon")
                with fs.inodes.borrow(h["n"]) as i:
                    fd = fs._reopen(i, flags)
            except OSError as e:
                problems.append(f"handle {h['f']}: {e.strerror or e}")
                if opts.on_error == "abort":
                    raise MigrationError(problems[-1]) from None
            try:
                fs.handles.insert(h["f"], fd, h["n"])
            except OSError as e:
                raise MigrationError(f"handle {h['f']}: {e.strerror}") from None
        fs.store.raise_next_ids(state["next_nodeid"], state["next_fh"])
    except BaseException:
        server.reset()                   # no half-loaded session is served
        raise
    finally:
        os.close(mount_fd)
    log.info("migration state loaded", inodes=len(state["inodes"]),
             handles=len(state["handles"]), lost=len(problems), mode=opts.mode)
    for p in problems[:20]:
        log.warning("migration: lost in transfer (the guest gets EIO)", what=p)
