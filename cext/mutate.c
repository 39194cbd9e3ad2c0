/* Creating, removing, opening and releasing in C (see mutate.h). */
#define _GNU_SOURCE
#include "mutate.h"
#include "caller.h"
#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define OUT_HDR ((uint32_t)sizeof(struct pvfs_fuse_out_header))
#define IN_HDR ((uint32_t)sizeof(struct pvfs_fuse_in_header))
#define STATX_WANT (STATX_BASIC_STATS | STATX_MNT_ID)
#define NAMES_ROOM (256 + 4096)        /* a name and a symlink target (PATH_MAX) */

/* The request carries (and the chain holds) size argument bytes. */
static int args_ok(const struct pvfs_hot_req *r, uint32_t size)
{
    return r->in.len >= IN_HDR + size && r->have_args >= size;
}


/* The flags a guest's open becomes on the host: PassthroughBase._open_flags. */
static int open_flags(uint32_t policy, uint32_t flags)
{
    int f = (int)((flags & ~(uint32_t)(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_PATH)) | O_CLOEXEC);
    if (!(policy & PVFS_FS_DIRECT_IO))
        f &= ~O_DIRECT;
    if (!(policy & PVFS_FS_NOATIME))
        f &= ~O_NOATIME;
    if (policy & PVFS_FS_WRITEBACK) {
        if ((f & O_ACCMODE) == O_WRONLY)
            f = (f & ~O_ACCMODE) | O_RDWR;
        f &= ~O_APPEND;
    }
    return f;
}

/* The umask to create with: the guest's when it left applying it to us (POSIX ACLs). */
static uint32_t create_umask(uint32_t policy, uint32_t guest_umask)
{
    return policy & PVFS_FS_POSIX_ACL ? guest_umask : 0;
}

static int begin_caller(struct pvfs_hot *h, const struct pvfs_hot_req *r, struct pvfs_caller *c,
                        uint32_t guest_umask)
{
    uint32_t pol = pvfs_store_policy(h->store);
    return pvfs_caller_begin(c, pol & PVFS_FS_SWITCH_IDS, r->in.uid, r->in.gid,
                             create_umask(pol, guest_umask));
}

/* Count a lookup of the file O_PATH fd refers to (taking fd), as _entry_for: its nodeid
 * and attributes, or 0 with *err set. */
static uint64_t entry_of(struct pvfs_hot *h, int fd, struct statx *sx, int *err)
{
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_WANT, sx) < 0) {
        *err = errno;
        close(fd);
        return 0;
    }
    uint64_t nodeid = pvfs_store_count_or_add(h->store, fd, sx);
    if (!nodeid)
        *err = errno;
    return nodeid;
}

/* The entry of a node just made as name under the parent: _created / _lookup_child. */
static uint64_t created(struct pvfs_hot *h, struct pvfs_hot_req *r, int parent_fd,
                        const char *name, struct statx *sx, int *err)
{
    pvfs_lead_busy(r->lead);
    int fd = pvfs_fs_openat2(parent_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0,
                             PVFS_FS_RESOLVE_BENEATH | PVFS_FS_RESOLVE_NO_MAGICLINKS);
    uint64_t nodeid = 0;
    if (fd < 0)
        *err = -fd;
    else
        nodeid = entry_of(h, fd, sx, err);
    pvfs_lead_done(r->lead);
    return nodeid;
}

/* Reply with an entry (or the error). */
static int reply_entry(struct pvfs_hot *h, struct pvfs_hot_req *r, uint64_t nodeid,
                       const struct statx *sx, int err)
{
    if (!nodeid) {
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    uint8_t b[sizeof(struct pvfs_fuse_entry_out)];
    pvfs_pack_entry(b, nodeid, sx, &h->attr);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}

/* open_out for fh, with the cache policy's flags. */
static void pack_open(uint8_t *b, uint64_t fh, uint32_t flags)
{
    struct pvfs_fuse_open_out o = {htole64(fh), htole32(flags), 0};
    memcpy(b, &o, sizeof(o));
}

static int names_ok(const char **names, int count)
{
    for (int k = 0; k < count; k++)
        if (!pvfs_hot_is_name(names[k]))
            return 0;
    return 1;
}

/* ---- creating -------------------------------------------------------------------------- */

int pvfs_serve_create(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    const uint32_t reply = sizeof(struct pvfs_fuse_entry_out) + sizeof(struct pvfs_fuse_open_out);
    struct pvfs_fuse_create_in ci;
    char buf[NAMES_ROOM];
    const char *name;
    if (r->minor < 12 || !args_ok(r, sizeof(ci)) || !pvfs_hot_meta_ok(r, reply) ||
        !pvfs_hot_read_strings(r, IN_HDR + sizeof(ci), buf, sizeof(buf), &name, 1) ||
        !names_ok(&name, 1))
        return PVFS_TO_PYTHON;
    memcpy(&ci, r->args, sizeof(ci));
    uint32_t flags = le32toh(ci.flags), mode = le32toh(ci.mode);
    if (le32toh(ci.open_flags) & PVFS_FUSE_OPEN_KILL_SUIDGID)
        return PVFS_TO_PYTHON;                  /* killpriv_v2 rules: Python's */
    if (flags > INT_MAX)
        return PVFS_TO_PYTHON;                  /* no C int: os.open refuses it (EINVAL) */
    struct pvfs_inode_view pv;
    struct pvfs_inode *p = pvfs_hot_inode(h, r->lead, r->in.nodeid, &pv);
    if (!p)
        return PVFS_TO_PYTHON;
    uint32_t pol = pvfs_store_policy(h->store);
    /* O_NOFOLLOW: a symlink already at name is refused (ELOOP), not followed */
    int oflags = open_flags(pol, flags) | (int)(flags & O_EXCL) | O_CREAT | O_NOFOLLOW;
    struct pvfs_caller c;
    int err = begin_caller(h, r, &c, le32toh(ci.umask));
    int fd = -1;
    if (!err) {
        pvfs_lead_busy(r->lead);
        fd = openat(pv.fd, name, oflags, mode & 07777);
        err = fd < 0 ? errno : 0;
        pvfs_lead_done(r->lead);
        pvfs_caller_end(&c);
    } else {
        err = -err;
    }
    pvfs_inode_put(h->store, p);
    if (fd < 0) {
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    /* The new file itself, through /proc/self/fd (no name lookup involved). */
    char self[16];
    snprintf(self, sizeof(self), "%d", fd);
    struct statx sx;
    uint64_t nodeid = 0;
    pvfs_lead_busy(r->lead);          /* statx, and maybe open_by_handle_at (store.h) */
    int pfd = openat(pvfs_store_proc_fd(h->store), self, O_PATH | O_CLOEXEC);
    if (pfd < 0)
        err = errno;
    else
        nodeid = entry_of(h, pfd, &sx, &err);
    pvfs_lead_done(r->lead);
    if (!nodeid) {
        close(fd);
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    uint64_t fh = pvfs_store_open(h->store, fd, nodeid);
    if (!fh) {
        pvfs_store_forget(h->store, nodeid, 1);
        pvfs_hot_reply(r, ENOMEM, NULL, 0);
        return PVFS_SERVED;
    }
    uint8_t b[sizeof(struct pvfs_fuse_entry_out) + sizeof(struct pvfs_fuse_open_out)];
    pvfs_pack_entry(b, nodeid, &sx, &h->attr);
    pack_open(b + sizeof(struct pvfs_fuse_entry_out), fh, h->fopen_file);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}

/* MKDIR, MKNOD, SYMLINK after their arguments are read: make the node as the caller, then
 * its entry. */
enum make_kind { MAKE_DIR, MAKE_NODE, MAKE_LINK };

static int make(struct pvfs_hot *h, struct pvfs_hot_req *r, enum make_kind kind,
                const char *name, const char *target, uint32_t mode, dev_t rdev,
                uint32_t guest_umask)
{
    struct pvfs_inode_view pv;
    struct pvfs_inode *p = pvfs_hot_inode(h, r->lead, r->in.nodeid, &pv);
    if (!p)
        return PVFS_TO_PYTHON;
    struct pvfs_caller c;
    int err = -begin_caller(h, r, &c, kind == MAKE_LINK ? 0 : guest_umask);
    if (!err) {
        pvfs_lead_busy(r->lead);
        int rc = kind == MAKE_DIR ? mkdirat(pv.fd, name, mode & 07777)
               : kind == MAKE_NODE ? mknodat(pv.fd, name, mode, rdev)
               : symlinkat(target, pv.fd, name);
        err = rc < 0 ? errno : 0;
        pvfs_lead_done(r->lead);
        pvfs_caller_end(&c);
    }
    struct statx sx;
    uint64_t nodeid = err ? 0 : created(h, r, pv.fd, name, &sx, &err);
    pvfs_inode_put(h->store, p);
    return reply_entry(h, r, nodeid, &sx, err);
}

int pvfs_serve_mkdir(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_mkdir_in mi;
    char buf[NAMES_ROOM];
    const char *name;
    if (!args_ok(r, sizeof(mi)) || !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_entry_out)) ||
        !pvfs_hot_read_strings(r, IN_HDR + sizeof(mi), buf, sizeof(buf), &name, 1) ||
        !names_ok(&name, 1))
        return PVFS_TO_PYTHON;
    memcpy(&mi, r->args, sizeof(mi));
    return make(h, r, MAKE_DIR, name, NULL, le32toh(mi.mode), 0, le32toh(mi.umask));
}

int pvfs_serve_mknod(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_mknod_in mi;
    char buf[NAMES_ROOM];
    const char *name;
    if (r->minor < 12 || !args_ok(r, sizeof(mi)) ||
        !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_entry_out)) ||
        !pvfs_hot_read_strings(r, IN_HDR + sizeof(mi), buf, sizeof(buf), &name, 1) ||
        !names_ok(&name, 1))
        return PVFS_TO_PYTHON;
    memcpy(&mi, r->args, sizeof(mi));
    if (le32toh(mi.mode) > INT_MAX)
        return PVFS_TO_PYTHON;                  /* no C int: os.mknod refuses it (EINVAL) */
    uint32_t d = le32toh(mi.rdev);      /* the guest's new_encode_dev: server decode_dev */
    dev_t rdev = makedev((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00));
    return make(h, r, MAKE_NODE, name, NULL, le32toh(mi.mode), rdev, le32toh(mi.umask));
}

int pvfs_serve_symlink(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    char buf[NAMES_ROOM];
    const char *s[2];
    if (!pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_entry_out)) ||
        !pvfs_hot_read_strings(r, IN_HDR, buf, sizeof(buf), s, 2) || !names_ok(s, 1) ||
        !s[1][0])
        return PVFS_TO_PYTHON;
    return make(h, r, MAKE_LINK, s[0], s[1], 0, 0, 0);
}

int pvfs_serve_link(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_link_in li;
    char buf[NAMES_ROOM];
    const char *name;
    if (!args_ok(r, sizeof(li)) || !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_entry_out)) ||
        !pvfs_hot_read_strings(r, IN_HDR + sizeof(li), buf, sizeof(buf), &name, 1) ||
        !names_ok(&name, 1))
        return PVFS_TO_PYTHON;
    memcpy(&li, r->args, sizeof(li));
    struct pvfs_inode_view iv, pv;
    struct pvfs_inode *i = pvfs_hot_inode(h, r->lead, le64toh(li.oldnodeid), &iv);
    if (!i)
        return PVFS_TO_PYTHON;
    struct pvfs_inode *p = pvfs_hot_inode(h, r->lead, r->in.nodeid, &pv);
    if (!p) {
        pvfs_inode_put(h->store, i);
        return PVFS_TO_PYTHON;
    }
    /* through the /proc magic link: the file itself, whatever its names now */
    char self[16];
    snprintf(self, sizeof(self), "%d", iv.fd);
    pvfs_lead_busy(r->lead);
    int rc = linkat(pvfs_store_proc_fd(h->store), self, pv.fd, name, AT_SYMLINK_FOLLOW);
    int err = rc < 0 ? errno : 0;
    pvfs_lead_done(r->lead);
    struct statx sx;
    uint64_t nodeid = err ? 0 : created(h, r, pv.fd, name, &sx, &err);
    pvfs_inode_put(h->store, p);
    pvfs_inode_put(h->store, i);
    return reply_entry(h, r, nodeid, &sx, err);
}

/* ---- removing and renaming ------------------------------------------------------------- */

int pvfs_serve_unlink(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    char buf[NAMES_ROOM];
    const char *name;
    if (!pvfs_hot_meta_ok(r, 0) || !pvfs_hot_read_strings(r, IN_HDR, buf, sizeof(buf), &name, 1) ||
        !names_ok(&name, 1))
        return PVFS_TO_PYTHON;
    struct pvfs_inode_view pv;
    struct pvfs_inode *p = pvfs_hot_inode(h, r->lead, r->in.nodeid, &pv);
    if (!p)
        return PVFS_TO_PYTHON;
    pvfs_lead_busy(r->lead);
    int rc = unlinkat(pv.fd, name, r->in.opcode == PVFS_FUSE_RMDIR ? AT_REMOVEDIR : 0);
    int err = rc < 0 ? errno : 0;
    pvfs_lead_done(r->lead);
    pvfs_inode_put(h->store, p);
    pvfs_hot_reply(r, err, NULL, 0);
    return PVFS_SERVED;
}

int pvfs_serve_rename(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    int two = r->in.opcode == PVFS_FUSE_RENAME2;
    uint32_t at = two ? sizeof(struct pvfs_fuse_rename2_in) : sizeof(struct pvfs_fuse_rename_in);
    char buf[2 * 256];
    const char *s[2];
    if (!args_ok(r, at) || !pvfs_hot_meta_ok(r, 0) ||
        !pvfs_hot_read_strings(r, IN_HDR + at, buf, sizeof(buf), s, 2) || !names_ok(s, 2))
        return PVFS_TO_PYTHON;
    struct pvfs_fuse_rename2_in ri = {0};
    memcpy(&ri, r->args, at);
    struct pvfs_inode_view ov, nv;
    struct pvfs_inode *o = pvfs_hot_inode(h, r->lead, r->in.nodeid, &ov);
    if (!o)
        return PVFS_TO_PYTHON;
    struct pvfs_inode *n = pvfs_hot_inode(h, r->lead, le64toh(ri.newdir), &nv);
    if (!n) {
        pvfs_inode_put(h->store, o);
        return PVFS_TO_PYTHON;
    }
    uint32_t flags = two ? le32toh(ri.flags) : 0;
    pvfs_lead_busy(r->lead);
    int err = flags ? -pvfs_fs_renameat2(ov.fd, s[0], nv.fd, s[1], flags)
                    : (renameat(ov.fd, s[0], nv.fd, s[1]) < 0 ? errno : 0);
    pvfs_lead_done(r->lead);
    pvfs_inode_put(h->store, n);
    pvfs_inode_put(h->store, o);
    pvfs_hot_reply(r, err, NULL, 0);
    return PVFS_SERVED;
}

/* ---- opening and releasing ------------------------------------------------------------- */

int pvfs_serve_open(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_open_in oi;
    if (!args_ok(r, sizeof(oi)) || !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_open_out)))
        return PVFS_TO_PYTHON;
    memcpy(&oi, r->args, sizeof(oi));
    if (le32toh(oi.open_flags) & PVFS_FUSE_OPEN_KILL_SUIDGID)
        return PVFS_TO_PYTHON;                  /* killpriv_v2 rules: Python's */
    if (le32toh(oi.flags) > INT_MAX)
        return PVFS_TO_PYTHON;                  /* no C int: os.open refuses it (EINVAL) */
    struct pvfs_inode_view iv;
    struct pvfs_inode *i = pvfs_hot_inode(h, r->lead, r->in.nodeid, &iv);
    if (!i)
        return PVFS_TO_PYTHON;
    int err = 0, fd = -1;
    /* regular files only: a directory is EISDIR, a symlink ELOOP, a device or FIFO EACCES
     * (a guest could otherwise open a host device through a node it made) */
    if (S_ISDIR(iv.mode))
        err = EISDIR;
    else if (S_ISLNK(iv.mode))
        err = ELOOP;
    else if (!S_ISREG(iv.mode))
        err = EACCES;
    else {
        char self[16];
        snprintf(self, sizeof(self), "%d", iv.fd);
        pvfs_lead_busy(r->lead);
        fd = openat(pvfs_store_proc_fd(h->store), self,
                    open_flags(pvfs_store_policy(h->store), le32toh(oi.flags)), 0777);
        err = fd < 0 ? errno : 0;
        pvfs_lead_done(r->lead);
    }
    pvfs_inode_put(h->store, i);
    uint64_t fh = fd < 0 ? 0 : pvfs_store_open(h->store, fd, r->in.nodeid);
    if (fd >= 0 && !fh)
        err = ENOMEM;
    if (err) {
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    uint8_t b[sizeof(struct pvfs_fuse_open_out)];
    pack_open(b, fh, h->fopen_file);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}

int pvfs_serve_opendir(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    if (!args_ok(r, sizeof(struct pvfs_fuse_open_in)) ||
        !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_open_out)))
        return PVFS_TO_PYTHON;
    struct pvfs_inode_view iv;
    struct pvfs_inode *i = pvfs_hot_inode(h, r->lead, r->in.nodeid, &iv);
    if (!i)
        return PVFS_TO_PYTHON;
    int err = 0, fd = -1;
    if (!S_ISDIR(iv.mode)) {
        err = ENOTDIR;
    } else {
        pvfs_lead_busy(r->lead);
        fd = openat(iv.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        err = fd < 0 ? errno : 0;
        pvfs_lead_done(r->lead);
    }
    pvfs_inode_put(h->store, i);
    uint64_t fh = fd < 0 ? 0 : pvfs_store_open(h->store, fd, r->in.nodeid);
    if (fd >= 0 && !fh)
        err = ENOMEM;
    if (err) {
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    uint8_t b[sizeof(struct pvfs_fuse_open_out)];
    pack_open(b, fh, h->fopen_dir);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}

int pvfs_serve_release(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    if (!args_ok(r, 16) || !pvfs_hot_meta_ok(r, 0))   /* fh, flags, release_flags */
        return PVFS_TO_PYTHON;
    struct pvfs_fuse_release_in ri;
    memcpy(&ri, r->args, sizeof(ri));
    if (pvfs_store_release(h->store, le64toh(ri.fh)) < 0)
        return PVFS_TO_PYTHON;                  /* unknown fh: Python says EBADF */
    pvfs_hot_reply(r, 0, NULL, 0);
    return PVFS_SERVED;
}

int pvfs_serve_flush(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_flush_in fi;
    if (!args_ok(r, sizeof(fi)) || !pvfs_hot_meta_ok(r, 0))
        return PVFS_TO_PYTHON;
    memcpy(&fi, r->args, sizeof(fi));
    int fd, append;
    struct pvfs_handle *e = pvfs_store_handle_fd(h->store, le64toh(fi.fh), &fd, &append);
    if (!e)
        return PVFS_TO_PYTHON;
    /* close() of a duplicate: the host file system's close-time semantics (NFS flushes)
     * without giving up the handle */
    pvfs_lead_busy(r->lead);
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    int err = dup_fd < 0 || close(dup_fd) < 0 ? errno : 0;
    pvfs_lead_done(r->lead);
    pvfs_handle_put(e);
    pvfs_hot_reply(r, err, NULL, 0);
    return PVFS_SERVED;
}

int pvfs_serve_fsync(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_fsync_in fi;
    if (!args_ok(r, sizeof(fi)) || !pvfs_hot_meta_ok(r, 0))
        return PVFS_TO_PYTHON;
    memcpy(&fi, r->args, sizeof(fi));
    int fd, append;
    struct pvfs_handle *e = pvfs_store_handle_fd(h->store, le64toh(fi.fh), &fd, &append);
    if (!e)
        return PVFS_TO_PYTHON;
    pvfs_lead_handoff(r->lead);                 /* may take long even on a healthy disk */
    int rc = le32toh(fi.fsync_flags) & PVFS_FUSE_FSYNC_FDATASYNC ? fdatasync(fd) : fsync(fd);
    int err = rc < 0 ? errno : 0;
    pvfs_handle_put(e);
    pvfs_hot_reply(r, err, NULL, 0);
    return PVFS_SERVED;
}

int pvfs_serve_statfs(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    if (r->minor < 4 || !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_kstatfs)))
        return PVFS_TO_PYTHON;
    struct pvfs_inode_view iv;
    struct pvfs_inode *i = pvfs_hot_inode(h, r->lead, r->in.nodeid, &iv);
    if (!i)
        return PVFS_TO_PYTHON;
    struct statvfs st;
    pvfs_lead_busy(r->lead);
    int rc = fstatvfs(iv.fd, &st);
    int err = rc < 0 ? errno : 0;
    pvfs_lead_done(r->lead);
    pvfs_inode_put(h->store, i);
    if (err) {
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    struct pvfs_fuse_kstatfs k = {0};
    k.blocks = htole64(st.f_blocks);
    k.bfree = htole64(st.f_bfree);
    k.bavail = htole64(st.f_bavail);
    k.files = htole64(st.f_files);
    k.ffree = htole64(st.f_ffree);
    k.bsize = htole32((uint32_t)st.f_bsize);
    k.namelen = htole32((uint32_t)st.f_namemax);
    k.frsize = htole32((uint32_t)st.f_frsize);
    pvfs_hot_reply(r, 0, &k, sizeof(k));
    return PVFS_SERVED;
}

/* ---- forgetting: no reply ----------------------------------------------------------------- */

int pvfs_serve_forget(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    if (!args_ok(r, sizeof(struct pvfs_fuse_forget_in)) || r->in.total_extlen ||
        r->in.len - IN_HDR > PVFS_FUSE_ARGS_MAX)
        return PVFS_TO_PYTHON;                  /* malformed: Python notes it */
    struct pvfs_fuse_forget_in fi;
    memcpy(&fi, r->args, sizeof(fi));
    pvfs_store_forget(h->store, r->in.nodeid, le64toh(fi.nlookup));
    pvfs_req_complete(r->req, 0);
    return PVFS_SERVED;
}

int pvfs_serve_batch_forget(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_batch_forget_in bi;
    if (!args_ok(r, sizeof(bi)) || r->in.total_extlen || r->in.len - IN_HDR > PVFS_FUSE_ARGS_MAX)
        return PVFS_TO_PYTHON;
    memcpy(&bi, r->args, sizeof(bi));
    uint32_t count = le32toh(bi.count);
    uint32_t at = IN_HDR + sizeof(bi);
    if ((uint64_t)count * sizeof(struct pvfs_fuse_forget_one) > r->in.len - at)
        return PVFS_TO_PYTHON;                  /* truncated: Python notes it */
    /* In chunks from guest memory: nothing sized by the count the guest claims. */
    uint64_t pairs[2 * 64];
    while (count) {
        uint32_t n = count < 64 ? count : 64;
        if (pvfs_req_read_in(r->req, at, pairs, n * 16) != (int64_t)(n * 16))
            break;                              /* a hole: what was read is forgotten */
        for (uint32_t k = 0; k < 2 * n; k++)
            pairs[k] = le64toh(pairs[k]);
        pvfs_store_forget_many(h->store, pairs, n);
        at += n * 16;
        count -= n;
    }
    pvfs_req_complete(r->req, 0);
    return PVFS_SERVED;
}
