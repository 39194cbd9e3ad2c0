#!/usr/bin/env python3
"""virtiofsd-compatible options, checked INSIDE a test guest (stdlib only; the host's python3
and setfacl/getfacl run through the guest's chroot of the host root).

    python3 compat_checks.py A B

``A`` is a mount of a daemon started with ACLs, killpriv_v2, submounts, inode file handles,
--allow-direct-io, --preserve-noatime and --writeback; ``B`` one with an xattr map, uid/gid
translation and --cache=metadata (see tests/e2e/test_compat_guest.py for the exact options).
Each check prints ``PVFS-COMPAT {"name", "ok", "detail", "info"}``; the host test asserts on
those lines and on what the host's side of each share shows afterwards.  Checks work in
``MOUNT/pvfs-compat``.
"""
import errno
import mmap
import os
import stat
import subprocess
import sys
import time

from guest_harness import Checks, as_user, expect

USER, OTHER, SQUASHED, FORBIDDEN = 1000, 1001, 2005, 3000
MANY = 1500
HOLD = 3.0      # seconds the open-flag probes stay open for the host's sampler

CHECKS = Checks()
check = CHECKS.add


def errno_of(fn):
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return None


def append(path, data=b"x"):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return True


def workdir(mount, name):
    d = os.path.join(mount, "pvfs-compat", name)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    return d


# --- mount A ----------------------------------------------------------------------------------


@check
def acl_enforced(a, b):
    """POSIX ACLs: the guest enforces an ACL entry setfacl wrote, and getfacl reads it back."""
    d = workdir(a, "acl")
    f = os.path.join(d, "f")
    with open(f, "wb") as fh:
        fh.write(b"acl\n")
    os.chmod(f, 0o600)
    before = errno_of(lambda: as_user(lambda: append(f), USER))
    expect(before == "EACCES", f"uid {USER} wrote a 0600 root file before the ACL: {before}")
    subprocess.run(["setfacl", "-m", f"u:{USER}:rw", f], check=True)
    expect(as_user(lambda: append(f), USER), "the ACL entry did not let the user write")
    other = errno_of(lambda: as_user(lambda: append(f), OTHER))
    expect(other == "EACCES", f"uid {OTHER} (no entry) could write: {other}")
    acl = subprocess.run(["getfacl", "-n", f], capture_output=True, text=True, check=True).stdout
    expect(f"user:{USER}:rw-" in acl, f"getfacl does not show the entry:\n{acl}")
    return "entry enforced and read back", {"path": os.path.relpath(f, a)}


@check
def acl_default_and_umask(a, b):
    """A default ACL is inherited by new files (the host applies it: DONT_MASK), and without
    one the caller's umask is applied -- by the daemon, since the guest left it to us."""
    d = workdir(a, "acl-default")
    inherit = os.path.join(d, "inherit")
    os.mkdir(inherit)
    subprocess.run(["setfacl", "-d", "-m", f"u:{USER}:rwx", inherit], check=True)
    child = os.path.join(inherit, "child")
    with open(child, "wb"):
        pass
    acl = subprocess.run(["getfacl", "-n", child], capture_output=True, text=True,
                         check=True).stdout
    expect(f"user:{USER}:rwx" in acl, f"default ACL not inherited:\n{acl}")
    old = os.umask(0o077)
    try:
        plain = os.path.join(d, "masked")
        os.mkdir(plain, 0o777)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(plain).st_mode)
    expect(mode == 0o700, f"umask 077 gave mode {oct(mode)}")
    return "inherited; umask applied", {"child": os.path.relpath(child, a),
                                        "masked": os.path.relpath(plain, a)}


@check
def killpriv_write_clears_setuid(a, b):
    """A write by a user without CAP_FSETID clears set-user-ID (killpriv_v2: done by the
    daemon, through the C hot path's hand-off of such writes)."""
    d = workdir(a, "killpriv")
    f = os.path.join(d, "suid")
    with open(f, "wb") as fh:
        fh.write(b"#!/bin/sh\n")
    os.chmod(f, 0o4777)
    expect(os.stat(f).st_mode & stat.S_ISUID, "chmod 4777 did not stick")
    as_user(lambda: append(f, b"echo\n"), USER)
    time.sleep(1.2)     # past the 1 s attribute timeout: the next stat asks the host
    mode = stat.S_IMODE(os.stat(f).st_mode)
    expect(not mode & stat.S_ISUID, f"setuid survived a write by uid {USER}: {oct(mode)}")
    root_file = os.path.join(d, "suid-root-write")
    with open(root_file, "wb") as fh:
        fh.write(b"x")
    os.chmod(root_file, 0o4755)
    append(root_file)
    time.sleep(1.2)
    kept = stat.S_IMODE(os.stat(root_file).st_mode)
    expect(kept & stat.S_ISUID, f"root's own write cleared setuid: {oct(kept)}")
    return "cleared for a user, kept for root", {"path": os.path.relpath(f, a),
                                                 "root_path": os.path.relpath(root_file, a)}


def kernel_sends_supplementary_groups():
    """FUSE_CREATE_SUPP_GROUP (the caller's supplementary group in a create request's
    extension) is offered by Linux 6.3 and later."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 3)


@check
def supplementary_group_create(a, b):
    """uid 1000, a member of group 4242 only through its supplementary groups, creates in a
    root:4242 0775 directory.  The guest's own check passes; the daemon creates with fsuid
    and fsgid 1000, so the host's check passes only if the guest sent the group along
    (FUSE_CREATE_SUPP_GROUP, Linux 6.3+) and the daemon honoured it: on such a kernel the
    create must succeed, on an older one the host must refuse it (EACCES).  A non-member
    is refused by the guest itself, so the member's success is the group's doing."""
    d = os.path.join(workdir(a, "suppgroup"), "shared")
    os.mkdir(d)
    os.chown(d, 0, 4242)
    os.chmod(d, 0o775)

    def create_as(groups, name):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups(groups)
                os.setgid(USER)
                os.setuid(USER)
                open(os.path.join(d, name), "wb").close()
                os.write(w, b"ok")
            except OSError as e:
                os.write(w, errno.errorcode.get(e.errno, str(e.errno)).encode())
            os._exit(0)
        os.close(w)
        outcome = os.read(r, 100).decode()
        os.close(r)
        os.waitpid(pid, 0)
        return outcome

    outsider = create_as([], "by-outsider")
    expect(outsider == "EACCES", f"a non-member's create: {outsider or 'no answer'}")
    sends = kernel_sends_supplementary_groups()
    outcome = create_as([4242], "by-member")
    want = "ok" if sends else "EACCES"
    expect(outcome == want, f"kernel {os.uname().release} "
           f"{'sends' if sends else 'does not send'} the group: member's create {outcome or 'no answer'}, "
           f"expected {want}")
    made = os.path.exists(os.path.join(d, "by-member"))
    expect(made == sends, f"by-member {'exists' if made else 'is missing'} after {outcome}")
    return f"create: {outcome}", {"outcome": outcome, "sends_groups": sends,
                                  "kernel": os.uname().release, "path": os.path.relpath(d, a)}


@check
def submount_has_its_own_st_dev(a, b):
    sub = os.path.join(a, "sub")
    # Walking into it triggers the automount; stat() of "sub" itself would not (stat acts
    # as with AT_NO_AUTOMOUNT) and shows the mount point on the parent's st_dev.
    top, inner = os.stat(a), os.stat(os.path.join(sub, "."))
    expect(top.st_dev != inner.st_dev, f"same st_dev {top.st_dev} for the share and its mount")
    with open(os.path.join(sub, "on-the-tmpfs")) as fh:
        expect(fh.read() == "tmpfs\n", "the mount's file has other content")
    expect(os.stat(os.path.join(sub, "on-the-tmpfs")).st_dev == inner.st_dev,
           "a file on the mount has another st_dev than the mount")
    mounts = [line.split()[1] for line in open("/proc/self/mounts")]
    expect(sub in mounts, f"{sub} is not in /proc/self/mounts")
    return "distinct st_dev", {"share_dev": top.st_dev, "sub_dev": inner.st_dev}


@check
def security_xattr_needs_the_map(a, b):
    """security.* on the host needs CAP_SYS_ADMIN, which the sandboxed daemon lacks; the
    xattr map of mount B stores it as user.virtiofs.security.* instead."""
    fa = os.path.join(workdir(a, "sec"), "f")
    open(fa, "wb").close()
    plain = errno_of(lambda: os.setxattr(fa, "security.pvfs", b"label"))
    fb = os.path.join(workdir(b, "sec"), "f")
    open(fb, "wb").close()
    os.setxattr(fb, "security.pvfs", b"label")
    expect(os.getxattr(fb, "security.pvfs") == b"label", "security.pvfs read back differs")
    names = os.listxattr(os.path.join(b, "hostonly-xattr"))
    expect("user.hostonly" not in names, f"an unmapped host xattr is visible: {names}")
    expect("trusted.mapped" in names, f"a mapped host xattr is not visible: {names}")
    return "mapped on B", {"a_errno": plain, "b_path": os.path.relpath(fb, b)}


# --- mount B ----------------------------------------------------------------------------------


@check
def security_label_on_create(a, b):
    """The guest boots with SELinux (no policy loaded: every new file is "unlabeled"), so
    it sends a security context with each create (FUSE_SECURITY_CTX); the daemon stores
    it -- through B's xattr map -- as the file is made, and the guest reads it back."""
    d = workdir(b, "label")
    f = os.path.join(d, "file")
    open(f, "wb").close()
    sub = os.path.join(d, "dir")
    os.mkdir(sub)
    labels = {p: os.getxattr(p, "security.selinux") for p in (f, sub)}
    expect(all(labels.values()), f"no label read back: {labels}")
    return "labelled", {"file": os.path.relpath(f, b), "dir": os.path.relpath(sub, b),
                        "label": labels[f].decode(errors="replace")}



@check
def translated_owners(a, b):
    d = workdir(b, "idmap")

    def make(name):
        p = os.path.join(d, name)
        open(p, "wb").close()
        return os.stat(p).st_uid

    seen = as_user(lambda: make("by-1000"), USER)
    expect(seen == USER, f"the guest sees uid {seen} for its own file")
    squashed = as_user(lambda: make("by-2005"), SQUASHED)
    forbidden = errno_of(lambda: as_user(lambda: make("by-3000"), FORBIDDEN))
    expect(forbidden == "EPERM", f"a forbidden uid created a file: {forbidden}")
    return "mapped", {"dir": os.path.relpath(d, b), "squashed_seen_as": squashed}


@check
def cache_metadata_is_direct_io(a, b):
    """cache=metadata: file data never cached (FOPEN_DIRECT_IO, so no shared mmap without
    --allow-mmap) while metadata is cached for a day (no request for a second stat 2.5 s
    later; STATFS requests mark the spot in the daemon's ops log)."""
    fb = os.path.join(workdir(b, "cache"), "probe")
    with open(fb, "wb") as fh:
        fh.write(b"\0" * 4096)
    fa = os.path.join(workdir(a, "cache"), "probe")
    with open(fa, "wb") as fh:
        fh.write(b"\0" * 4096)

    def shared_map(path):
        with open(path, "r+b") as fh:
            mmap.mmap(fh.fileno(), 4096, mmap.MAP_SHARED).close()

    on_b = errno_of(lambda: shared_map(fb))
    expect(on_b == "ENODEV", f"shared mmap on cache=metadata: {on_b}")
    on_a = errno_of(lambda: shared_map(fa))
    expect(on_a is None, f"shared mmap on cache=auto failed: {on_a}")
    os.stat(fb)
    time.sleep(2.5)
    os.statvfs(b)
    os.stat(fb)
    os.statvfs(b)
    return "direct I/O data, cached metadata", {}


# --- both ------------------------------------------------------------------------------------


@check
def open_flags_reach_the_host(a, b):
    """O_DIRECT and O_NOATIME opens, and a write-only open, held for the host's sampler;
    an aligned O_DIRECT write and read must work on A."""
    fds = []
    for m in (a, b):
        for name, flags in (("direct.bin", os.O_RDWR | os.O_DIRECT),
                            ("noatime.bin", os.O_RDONLY | os.O_NOATIME),
                            ("wronly.bin", os.O_WRONLY)):
            fds.append(os.open(os.path.join(m, name), flags))
    buf = mmap.mmap(-1, 4096)
    buf.write(b"D" * 4096)
    n = os.pwrite(fds[0], buf, 0)
    expect(n == 4096, f"O_DIRECT write wrote {n}")
    back = mmap.mmap(-1, 4096)
    n = os.preadv(fds[0], [back], 0)
    expect(n == 4096 and back[:] == b"D" * 4096, "O_DIRECT read back differs")
    print("PVFS-COMPAT-HOLD open", flush=True)
    time.sleep(HOLD)
    for fd in fds:
        os.close(fd)
    print("PVFS-COMPAT-HOLD closed", flush=True)
    return "held", {}


@check
def many_files_looked_up(a, b):
    """MANY files created and stat'ed on each mount and kept in the guest's caches while
    the host counts the daemons' fds (A keeps file handles, B one O_PATH fd per inode)."""
    for m in (a, b):
        d = workdir(m, "many")
        for k in range(MANY):
            open(os.path.join(d, f"f{k:05}"), "wb").close()
        for k in range(MANY):
            os.stat(os.path.join(d, f"f{k:05}"))
    print("PVFS-COMPAT-HOLD many", flush=True)
    time.sleep(HOLD)
    return f"{MANY} files per mount", {}


def main():
    return CHECKS.run("PVFS-COMPAT", sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
