"""virtiofsd-compatible features on the wire, through Server + PassthroughFs on a real dir:
request extensions (security contexts, supplementary groups), SETXATTR_EXT and ACLs,
killpriv_v2, submounts, inode file handles, O_NOATIME/O_DIRECT, cache=metadata, the xattr
map and uid/gid translation."""
import errno
import os
import stat
import subprocess

import pytest
from fusewire import (
    GUEST_FLAGS, Client, FuseError, cstr, groups_ext, init_out, run, secctx_block,
    setxattr_ext, with_extensions,
)

from pyvirtiofsd.fuse import abi, extensions
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.passthrough.idmap import IdMap
from pyvirtiofsd.passthrough.xattrmap import XattrMap
from pyvirtiofsd.server import Server, ServerOptions

ALL2 = abi.FUSE_SECURITY_CTX >> 32 | abi.FUSE_CREATE_SUPP_GROUP >> 32
SEC = (b"security.pvfs_test", b"label_t\0")


def client_for(fs, flags=GUEST_FLAGS | abi.FUSE_INIT_EXT, flags2=ALL2 | 0xB, **options):
    c = Client(Server(fs, ServerOptions(**options)))
    r = c.init(flags=flags, flags2=flags2)
    return c, r


def entry_of(reply):
    assert reply.ok, -reply.error
    return abi.fuse_entry_out_head.parse(reply.body)


# --- extensions: parsing ------------------------------------------------------------------

def test_parse_secctx_block_and_groups():
    block = secctx_block((b"security.selinux", b"u:r:t:s0\0"), (b"security.x", b""))
    assert extensions.parse(block).secctx == ((b"security.selinux", b"u:r:t:s0\0"),
                                              (b"security.x", b""))
    assert extensions.parse(groups_ext(100, 200)).groups == (100, 200)
    both = extensions.parse(secctx_block() + groups_ext(7))
    assert both.secctx == () and both.groups == (7,)


@pytest.mark.parametrize("raw", [
    b"\x04\x00\x00\x00\x00\x00\x00\x00",               # size smaller than the header
    b"\x10\x00\x00\x00\x21\x00\x00\x00" + bytes(8),     # unknown type 33
    abi.fuse_ext_header.pack(24, 0) + bytes(8),         # size past the end
    abi.fuse_secctx_header.pack(16, 1) + abi.fuse_secctx.pack(100, 0),  # value past the end
    groups_ext(1) + groups_ext(2),                      # twice
    bytes(4),                                           # not even a header
])
def test_malformed_extensions_are_einval(raw):
    with pytest.raises(OSError) as ei:
        extensions.parse(raw)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("name", [b"trusted.x", b"user.x", b"security.capability"])
def test_secctx_names_outside_security_are_refused(name):
    with pytest.raises(OSError) as ei:
        extensions.parse(secctx_block((name, b"v")))
    assert ei.value.errno == errno.EPERM


# --- security contexts on create ------------------------------------------------------------

@pytest.mark.parametrize("op", ["mkdir", "mknod", "create", "symlink"])
def test_security_context_set_on_every_create(share, op):
    fs = PassthroughFs(share, xattr=True)
    c, r = client_for(fs, xattr=True, security_label="auto")
    assert init_out(r).flags2 & (abi.FUSE_SECURITY_CTX >> 32)
    args = {
        "mkdir": (Opcode.FUSE_MKDIR, abi.fuse_mkdir_in.pack(0o755, 0) + cstr("n")),
        "mknod": (Opcode.FUSE_MKNOD, abi.fuse_mknod_in.pack(stat.S_IFREG | 0o644, 0, 0, 0)
                  + cstr("n")),
        "create": (Opcode.FUSE_CREATE, abi.fuse_create_in.pack(os.O_RDWR | os.O_CREAT, 0o644,
                                                                0, 0) + cstr("n")),
        "symlink": (Opcode.FUSE_SYMLINK, cstr("n") + cstr("target")),
    }[op]
    reply = run(c.server, with_extensions(args[0], 1, args[1], secctx_block(SEC)))
    entry_of(reply)
    assert os.getxattr(share / "n", SEC[0].decode(), follow_symlinks=False) == SEC[1]
    fs.close()


def test_security_context_old_style_trailing_argument(share):
    """7.36/7.37 guests append the context after the name, total_extlen 0."""
    fs = PassthroughFs(share, xattr=True)
    c, _ = client_for(fs, xattr=True, security_label="auto")
    entry_of(c.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.pack(0o755, 0), cstr("d"),
                    secctx_block(SEC)))
    assert os.getxattr(share / "d", SEC[0].decode()) == SEC[1]
    # garbage after the name is still EINVAL
    r = c.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.pack(0o755, 0), cstr("e"), b"junk")
    assert r.error == -errno.EINVAL and not (share / "e").exists()
    fs.close()


def test_empty_security_context_from_a_guest_without_lsm(share):
    fs = PassthroughFs(share, xattr=True)
    c, _ = client_for(fs, xattr=True, security_label="auto")
    entry_of(run(c.server, with_extensions(Opcode.FUSE_MKDIR, 1,
                                           abi.fuse_mkdir_in.pack(0o755, 0) + cstr("d"),
                                           secctx_block())))
    assert (share / "d").is_dir()
    fs.close()


def test_security_context_without_negotiation_is_einval(share):
    fs = PassthroughFs(share, xattr=True)
    c, _ = client_for(fs, xattr=True)       # security_label never
    r = run(c.server, with_extensions(Opcode.FUSE_MKDIR, 1,
                                      abi.fuse_mkdir_in.pack(0o755, 0) + cstr("d"),
                                      secctx_block(SEC)))
    assert r.error == -errno.EINVAL and not (share / "d").exists()
    fs.close()


def test_failing_security_context_removes_the_new_node(share):
    """The xattr map refuses the label: the directory must not stay behind unlabelled."""
    fs = PassthroughFs(share, xattr=True, xattrmap=XattrMap(":bad:all:security.:: :ok:all:::"))
    c, _ = client_for(fs, xattr=True, security_label="auto")
    r = run(c.server, with_extensions(Opcode.FUSE_MKDIR, 1,
                                      abi.fuse_mkdir_in.pack(0o755, 0) + cstr("d"),
                                      secctx_block(SEC)))
    assert r.error == -errno.EPERM and not (share / "d").exists()
    fs.close()


def test_security_label_always_refuses_a_guest_without_it(share):
    fs = PassthroughFs(share, xattr=True)
    c = Client(Server(fs, ServerOptions(xattr=True, security_label="always")))
    assert c.init(flags2=0).error == -errno.EPROTO
    fs.close()


# --- supplementary group on create ----------------------------------------------------------

def test_supplementary_group_lets_a_group_member_create(share):
    """uid 1000 (primary gid 1000) creates in a root:4242 0775 directory: the guest vouches
    that the caller is in group 4242 by sending it as FUSE_EXT_GROUPS."""
    os.mkdir(share / "g")
    os.chown(share / "g", 0, 4242)
    os.chmod(share / "g", 0o775)
    fs = PassthroughFs(share, switch_credentials=True)
    c, r = client_for(fs)
    assert init_out(r).flags2 & (abi.FUSE_CREATE_SUPP_GROUP >> 32)
    g = c.lookup(1, "g").nodeid
    body = abi.fuse_mkdir_in.pack(0o755, 0) + cstr("without")
    denied = run(c.server, with_extensions(Opcode.FUSE_MKDIR, g, body, uid=1000, gid=1000))
    assert denied.error == -errno.EACCES
    body = abi.fuse_mkdir_in.pack(0o755, 0) + cstr("with")
    entry_of(run(c.server, with_extensions(Opcode.FUSE_MKDIR, g, body, groups_ext(4242),
                                           uid=1000, gid=1000)))
    st = os.stat(share / "g" / "with")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert os.getgroups() == os.getgroups()   # the worker's groups were restored (same thread)
    fs.close()


# --- POSIX ACLs: DONT_MASK umask, SETXATTR_EXT and ACL_KILL_SGID ------------------------------

def test_posix_acl_negotiation(share):
    fs = PassthroughFs(share, xattr=True)
    c, r = client_for(fs, xattr=True, posix_acl="auto")
    want = abi.FUSE_POSIX_ACL | abi.FUSE_DONT_MASK | abi.FUSE_SETXATTR_EXT
    assert init_out(r).flags & want == want and fs.posix_acl
    c2, r2 = client_for(PassthroughFs(share, xattr=True), xattr=True, posix_acl="auto",
                        flags=GUEST_FLAGS & ~abi.FUSE_SETXATTR_EXT)
    assert not init_out(r2).flags & abi.FUSE_POSIX_ACL        # auto: needs all three
    c3 = Client(Server(PassthroughFs(share, xattr=True),
                       ServerOptions(xattr=True, posix_acl="always")))
    assert c3.init(flags=GUEST_FLAGS & ~abi.FUSE_POSIX_ACL).error == -errno.EPROTO
    fs.close()


def test_dont_mask_applies_the_umask_unless_a_default_acl_does(share):
    fs = PassthroughFs(share, xattr=True)
    c, _ = client_for(fs, xattr=True, posix_acl="auto")
    c.mkdir(1, "plain", 0o777, umask=0o027)
    assert stat.S_IMODE(os.stat(share / "plain").st_mode) == 0o750
    os.mkdir(share / "acl")
    subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rwx,o::rwx", str(share / "acl")], check=True)
    d = c.lookup(1, "acl").nodeid
    c.mkdir(d, "sub", 0o777, umask=0o077)
    assert stat.S_IMODE(os.stat(share / "acl" / "sub").st_mode) == 0o777  # default ACL wins
    fs.close()


def test_setxattr_ext_acl_kill_sgid(share):
    f = share / "f"
    f.write_bytes(b"")
    os.chmod(f, 0o2775)
    fs = PassthroughFs(share, xattr=True)
    c, _ = client_for(fs, xattr=True, posix_acl="auto")
    n = c.lookup(1, "f").nodeid
    subprocess.run(["setfacl", "-m", "u:1234:r", str(f)], check=True)
    acl = os.getxattr(f, "system.posix_acl_access")
    os.chmod(f, 0o2775)
    c.ok(Opcode.FUSE_SETXATTR, n, setxattr_ext(b"system.posix_acl_access", acl))
    assert os.stat(f).st_mode & stat.S_ISGID                  # no flag: left alone
    c.ok(Opcode.FUSE_SETXATTR, n, setxattr_ext(b"system.posix_acl_access", acl,
                                               setxattr_flags=abi.FUSE_SETXATTR_ACL_KILL_SGID))
    assert not os.stat(f).st_mode & stat.S_ISGID
    fs.close()


# --- killpriv_v2 ---------------------------------------------------------------------------

def test_killpriv_v2_write_setattr_and_open_clear_setuid(share):
    f = share / "f"
    f.write_bytes(b"x")
    fs = PassthroughFs(share)
    c, r = client_for(fs, killpriv_v2=True)
    assert init_out(r).flags & abi.FUSE_HANDLE_KILLPRIV_V2
    n = c.lookup(1, "f").nodeid
    fh, _ = c.open(n, os.O_RDWR)
    os.chmod(f, 0o6755)
    c.write(n, fh, 0, b"y")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755         # root's write: kept
    c.write(n, fh, 0, b"z", write_flags=abi.FUSE_WRITE_KILL_SUIDGID)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    os.chmod(f, 0o6745)                                        # no group x: setgid stays
    c.setattr(n, valid=abi.FATTR_SIZE | abi.FATTR_KILL_SUIDGID, size=0)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o2745
    os.chmod(f, 0o4755)
    fh2 = abi.fuse_open_out.parse(c.ok(Opcode.FUSE_OPEN, n, abi.fuse_open_in.pack(
        os.O_WRONLY | os.O_TRUNC, abi.FUSE_OPEN_KILL_SUIDGID))).fh
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    c.release(n, fh)
    c.release(n, fh2)
    fs.close()


# --- submounts -----------------------------------------------------------------------------

def test_submount_flag_on_a_mount_point(share):
    (share / "mnt").mkdir()
    (share / "dir").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(share / "mnt")],
                   check=True)
    try:
        fs = PassthroughFs(share)
        c, r = client_for(fs, announce_submounts=True)
        assert init_out(r).flags & abi.FUSE_SUBMOUNTS
        assert c.lookup(1, "mnt").attr.flags & abi.FUSE_ATTR_SUBMOUNT
        assert not c.lookup(1, "dir").attr.flags & abi.FUSE_ATTR_SUBMOUNT
        fs.close()
        fs = PassthroughFs(share)
        c, _ = client_for(fs)                       # not announced: never flagged
        assert not c.lookup(1, "mnt").attr.flags & abi.FUSE_ATTR_SUBMOUNT
        fs.close()
    finally:
        subprocess.run(["umount", "-l", str(share / "mnt")], check=True)


# --- inode file handles ------------------------------------------------------------------

def test_file_handles_keep_no_fd_per_inode(share):
    for k in range(50):
        (share / f"f{k}").write_bytes(b"%d" % k)
    fs = PassthroughFs(share, inode_file_handles="mandatory", handle_fd_cache=0)
    c, _ = client_for(fs)
    nodes = [c.lookup(1, f"f{k}").nodeid for k in range(50)]
    assert fs.inodes.open_fds() == 1                 # the root only
    fh, _ = c.open(nodes[7], os.O_RDONLY)
    assert c.read(nodes[7], fh, 0, 10) == b"7"
    assert c.getattr(nodes[9]).size == 1
    assert fs.inodes.open_fds() == 1
    fs.close()
    fs = PassthroughFs(share, inode_file_handles="mandatory", handle_fd_cache=10)
    c, _ = client_for(fs)
    nodes = [c.lookup(1, f"f{k}").nodeid for k in range(50)]
    assert fs.inodes.open_fds() == 1 + 10            # the root, and the 10 used last
    assert c.getattr(nodes[0]).size == 1             # reopened from its handle
    assert fs.inodes.open_fds() == 1 + 10
    fs.close()
    fs = PassthroughFs(share)                         # never: one O_PATH fd each
    c, _ = client_for(fs)
    for k in range(50):
        c.lookup(1, f"f{k}")
    assert fs.inodes.open_fds() == 51
    fs.close()


@pytest.mark.parametrize("idle_fds", [0, 1024])
def test_file_handle_of_a_deleted_file_is_stale(share, idle_fds):
    """Nothing keeps a deleted file alive but an fd: without one it is stale, as in
    virtiofsd; one still kept idle keeps it alive, as an O_PATH fd per inode would."""
    (share / "gone").write_bytes(b"")
    fs = PassthroughFs(share, inode_file_handles="prefer", handle_fd_cache=idle_fds)
    c, _ = client_for(fs)
    n = c.lookup(1, "gone").nodeid
    os.unlink(share / "gone")
    if idle_fds:
        assert c.getattr(n).nlink == 0
    else:
        with pytest.raises(FuseError) as ei:
            c.getattr(n)
        assert ei.value.errno == errno.ESTALE
    fs.close()


# --- open flags ----------------------------------------------------------------------------

def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(line for line in f if line.startswith("flags:")).split()[1], 8)


@pytest.mark.parametrize("preserve", [False, True])
def test_o_noatime_dropped_unless_preserved(share, preserve):
    (share / "f").write_bytes(b"x")
    fs = PassthroughFs(share, preserve_noatime=preserve)
    c, _ = client_for(fs)
    n = c.lookup(1, "f").nodeid
    fh, _ = c.open(n, os.O_RDONLY | os.O_NOATIME)
    with fs.handles.borrow(fh) as h:
        assert bool(_fd_flags(h.fd) & os.O_NOATIME) == preserve
    fs.close()


def test_cache_metadata_is_direct_io_with_long_timeouts(share):
    (share / "f").write_bytes(b"x")
    fs = PassthroughFs(share)
    c, _ = client_for(fs, cache="metadata")
    e = c.lookup(1, "f")
    assert e.entry_valid == 86400 and e.attr_valid == 86400
    _, flags = c.open(e.nodeid, os.O_RDONLY)
    assert flags & abi.FOPEN_DIRECT_IO and not flags & abi.FOPEN_KEEP_CACHE
    fs.close()


# --- xattr map through the file system ----------------------------------------------------

def test_xattrmap_renames_on_the_host(share):
    (share / "f").write_bytes(b"")
    fs = PassthroughFs(share, xattr=True, xattrmap=XattrMap(":map::user.virtiofs.:"))
    c, _ = client_for(fs, xattr=True)
    n = c.lookup(1, "f").nodeid
    c.ok(Opcode.FUSE_SETXATTR, n, abi.fuse_setxattr_in.pack(3, 0, 0, 0)[:8], cstr("trusted.t"),
         b"abc")
    assert os.getxattr(share / "f", "user.virtiofs.trusted.t") == b"abc"
    os.setxattr(share / "f", "user.hostonly", b"h")
    names = c.ok(Opcode.FUSE_LISTXATTR, n, abi.fuse_getxattr_in.pack(4096, 0))
    assert names.split(b"\0")[:-1] == [b"trusted.t"]
    got = c.ok(Opcode.FUSE_GETXATTR, n, abi.fuse_getxattr_in.pack(64, 0), cstr("trusted.t"))
    assert got == b"abc"
    fs.close()


# --- uid/gid translation -------------------------------------------------------------------

def test_translate_uid_gid(share):
    fs = PassthroughFs(share, switch_credentials=True)
    opts = dict(uid_map=IdMap(["map:1000:101000:10", "forbid-guest:0:1"], "uid"),
                gid_map=IdMap(["squash-guest:0:5000:4294967295", "host:5000:77:1"], "gid"))
    c, _ = client_for(fs, **opts)
    c.uid, c.gid = 1001, 1001
    e = c.mkdir(1, "d", 0o755)
    st = os.stat(share / "d")
    assert (st.st_uid, st.st_gid) == (101001, 5000)           # created with host ids
    assert (e.attr.uid, e.attr.gid) == (1001, 77)             # shown with guest ids
    c.uid = 0
    with pytest.raises(FuseError) as ei:                       # forbidden guest uid creates
        c.mkdir(1, "root-made", 0o755)
    assert ei.value.errno == errno.EPERM
    a = c.setattr(e.nodeid, valid=abi.FATTR_UID, uid=1005)
    assert os.stat(share / "d").st_uid == 101005 and a.uid == 1005
    with pytest.raises(FuseError) as ei:
        c.setattr(e.nodeid, valid=abi.FATTR_UID, uid=0)
    assert ei.value.errno == errno.EPERM
    fs.close()


def test_acl_and_translation_do_not_mix():
    with pytest.raises(ValueError, match="ACL"):
        ServerOptions(posix_acl="auto", uid_map=IdMap(["map:0:1000:1"]))


def test_tmpfile_with_the_name_linux_sends_and_a_security_context(share):
    """Linux sends O_TMPFILE's anonymous dentry name "/" after fuse_create_in; a 7.36/7.37
    guest's security context would follow it."""
    fs = PassthroughFs(share, xattr=True)
    c, _ = client_for(fs, xattr=True, security_label="auto")
    body = c.ok(Opcode.FUSE_TMPFILE, 1, abi.fuse_create_in.pack(os.O_RDWR, 0o600, 0, 0),
                cstr("/"))
    assert abi.fuse_entry_out_head.parse(body).nodeid > 1
    body = c.ok(Opcode.FUSE_TMPFILE, 1, abi.fuse_create_in.pack(os.O_RDWR, 0o600, 0, 0),
                cstr("/"), secctx_block(SEC))
    fh = abi.fuse_open_out.parse(body, abi.FUSE_ENTRY_OUT_SIZE).fh
    with fs.handles.borrow(fh) as h:
        assert os.getxattr(h.fd, SEC[0].decode()) == SEC[1]
    fs.close()
