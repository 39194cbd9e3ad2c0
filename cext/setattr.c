/* SETATTR in C (see setattr.h). */
#define _GNU_SOURCE
#include "setattr.h"
#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define IN_HDR ((uint32_t)sizeof(struct pvfs_fuse_in_header))

/* The changes, in order; 0 or the errno that stopped them (what came before stays, as in
 * Python). */
static int apply(struct pvfs_store *s, const struct pvfs_fuse_setattr_in *si,
                 const struct pvfs_inode_view *iv, int hfd)
{
    uint32_t v = le32toh(si->valid);
    int proc = pvfs_store_proc_fd(s);
    char self[16];
    snprintf(self, sizeof(self), "%d", iv->fd);
    if (v & PVFS_FATTR_MODE) {
        mode_t mode = le32toh(si->mode) & 07777;
        if ((hfd >= 0 ? fchmod(hfd, mode) : fchmodat(proc, self, mode, 0)) < 0)
            return errno;
    }
    if (v & (PVFS_FATTR_UID | PVFS_FATTR_GID)) {
        uint32_t uid = v & PVFS_FATTR_UID ? le32toh(si->uid) : UINT32_MAX;
        uint32_t gid = v & PVFS_FATTR_GID ? le32toh(si->gid) : UINT32_MAX;
        int rc = pvfs_fs_fchownat(iv->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
        if (rc < 0)
            return -rc;
    }
    if (v & PVFS_FATTR_SIZE) {
        uint64_t size = le64toh(si->size);
        if (size > INT64_MAX)
            return EINVAL;                          /* Python: OverflowError, EINVAL */
        if (hfd >= 0) {
            if (ftruncate(hfd, (off_t)size) < 0)
                return errno;
        } else {
            /* through a fresh write-only fd, regular files only (as _reopen) */
            if (S_ISDIR(iv->mode))
                return EISDIR;
            if (S_ISLNK(iv->mode))
                return ELOOP;
            if (!S_ISREG(iv->mode))
                return EACCES;
            int fd = openat(proc, self, O_WRONLY | O_CLOEXEC);
            if (fd < 0)
                return errno;
            int rc = ftruncate(fd, (off_t)size);
            int e = errno;
            close(fd);
            if (rc < 0)
                return e;
        }
    }
    int atime_now = !!(v & PVFS_FATTR_ATIME_NOW), mtime_now = !!(v & PVFS_FATTR_MTIME_NOW);
    int atime = (v & PVFS_FATTR_ATIME) && !atime_now, mtime = (v & PVFS_FATTR_MTIME) && !mtime_now;
    if (atime || mtime || atime_now || mtime_now) {
        int64_t as = 0, an = PVFS_FS_UTIME_OMIT, ms = 0, mn = PVFS_FS_UTIME_OMIT;
        if (atime_now)
            an = PVFS_FS_UTIME_NOW;
        else if (atime)
            as = (int64_t)le64toh(si->atime), an = le32toh(si->atimensec);
        if (mtime_now)
            mn = PVFS_FS_UTIME_NOW;
        else if (mtime)
            ms = (int64_t)le64toh(si->mtime), mn = le32toh(si->mtimensec);
        int rc = hfd >= 0 ? pvfs_fs_utimensat(hfd, NULL, as, an, ms, mn, 0)
                          : pvfs_fs_utimensat(iv->fd, "", as, an, ms, mn,
                                              AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
        if (rc < 0)
            return -rc;
    }
    /* ctime cannot be set on Linux. */
    return 0;
}

int pvfs_serve_setattr(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_fuse_setattr_in si;
    if (r->in.len < IN_HDR + sizeof(si) || !pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_attr_out)) ||
        pvfs_req_read_in(r->req, IN_HDR, &si, sizeof(si)) != (int64_t)sizeof(si))
        return PVFS_TO_PYTHON;
    uint32_t v = le32toh(si.valid);
    if (v & PVFS_FATTR_KILL_SUIDGID)
        return PVFS_TO_PYTHON;                      /* killpriv_v2 rules: Python's */
    struct pvfs_inode_view iv;
    struct pvfs_inode *i = pvfs_hot_inode(h, r->lead, r->in.nodeid, &iv);
    if (!i)
        return PVFS_TO_PYTHON;                      /* unknown nodeid: Python says EBADF */
    struct pvfs_handle *e = NULL;
    int hfd = -1, append;
    if (v & PVFS_FATTR_FH) {
        e = pvfs_store_handle_fd(h->store, le64toh(si.fh), &hfd, &append);
        if (!e) {
            pvfs_inode_put(h->store, i);
            return PVFS_TO_PYTHON;                  /* unknown fh: Python says EBADF */
        }
    }
    pvfs_lead_busy(r->lead);
    int err = apply(h->store, &si, &iv, hfd);
    struct stat st;
    if (!err && fstat(iv.fd, &st) < 0)
        err = errno;
    pvfs_lead_done(r->lead);
    if (e)
        pvfs_handle_put(e);
    pvfs_inode_put(h->store, i);
    if (err) {
        pvfs_hot_reply(r, err, NULL, 0);
        return PVFS_SERVED;
    }
    uint8_t b[sizeof(struct pvfs_fuse_attr_out)];
    pvfs_pack_attr_out(b, &st, &h->attr);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}
