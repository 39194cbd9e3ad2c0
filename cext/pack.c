/* FUSE replies packed in C (see pack.h). */
#define _GNU_SOURCE
#include "pack.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/sysmacros.h>

/* A host dev_t in the 32-bit "new" encoding the guest decodes (server/packing.py encode_dev). */
static uint32_t encode_dev(dev_t dev)
{
    uint32_t ma = major(dev), mi = minor(dev);
    return (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & ~0xffu) << 12);
}

void pvfs_pack_attr(uint8_t *at, const struct stat *st, uint32_t blksize)
{
    struct pvfs_fuse_attr a = {0};
    a.ino = htole64(st->st_ino);
    a.size = htole64((uint64_t)st->st_size);
    a.blocks = htole64((uint64_t)st->st_blocks);
    a.atime = htole64((uint64_t)st->st_atim.tv_sec);
    a.mtime = htole64((uint64_t)st->st_mtim.tv_sec);
    a.ctime = htole64((uint64_t)st->st_ctim.tv_sec);
    a.atimensec = htole32((uint32_t)st->st_atim.tv_nsec);
    a.mtimensec = htole32((uint32_t)st->st_mtim.tv_nsec);
    a.ctimensec = htole32((uint32_t)st->st_ctim.tv_nsec);
    a.mode = htole32(st->st_mode);
    a.nlink = htole32((uint32_t)st->st_nlink);
    a.uid = htole32(st->st_uid);
    a.gid = htole32(st->st_gid);
    a.rdev = htole32(encode_dev(st->st_rdev));
    a.blksize = htole32(blksize);
    memcpy(at, &a, sizeof(a));
}

void pvfs_pack_attr_statx(uint8_t *at, const struct statx *sx, uint32_t blksize)
{
    struct stat st = {0};
    st.st_ino = sx->stx_ino;
    st.st_size = (off_t)sx->stx_size;
    st.st_blocks = (blkcnt_t)sx->stx_blocks;
    st.st_atim.tv_sec = sx->stx_atime.tv_sec;
    st.st_atim.tv_nsec = sx->stx_atime.tv_nsec;
    st.st_mtim.tv_sec = sx->stx_mtime.tv_sec;
    st.st_mtim.tv_nsec = sx->stx_mtime.tv_nsec;
    st.st_ctim.tv_sec = sx->stx_ctime.tv_sec;
    st.st_ctim.tv_nsec = sx->stx_ctime.tv_nsec;
    st.st_mode = sx->stx_mode;
    st.st_nlink = sx->stx_nlink;
    st.st_uid = sx->stx_uid;
    st.st_gid = sx->stx_gid;
    st.st_rdev = makedev(sx->stx_rdev_major, sx->stx_rdev_minor);
    pvfs_pack_attr(at, &st, blksize);
}

void pvfs_pack_entry(uint8_t *b, uint64_t nodeid, const struct statx *sx,
                     const struct pvfs_attr_policy *p)
{
    struct pvfs_fuse_entry_out e = {0};
    e.nodeid = htole64(nodeid);
    e.entry_valid = htole64(p->valid_sec);
    e.attr_valid = htole64(p->valid_sec);
    e.entry_valid_nsec = htole32(p->valid_nsec);
    e.attr_valid_nsec = htole32(p->valid_nsec);
    memcpy(b, &e, offsetof(struct pvfs_fuse_entry_out, attr));
    pvfs_pack_attr_statx(b + offsetof(struct pvfs_fuse_entry_out, attr), sx, p->blksize);
}

void pvfs_pack_attr_out(uint8_t *b, const struct stat *st, const struct pvfs_attr_policy *p)
{
    struct pvfs_fuse_attr_out o = {0};
    o.attr_valid = htole64(p->valid_sec);
    o.attr_valid_nsec = htole32(p->valid_nsec);
    memcpy(b, &o, offsetof(struct pvfs_fuse_attr_out, attr));
    pvfs_pack_attr(b + offsetof(struct pvfs_fuse_attr_out, attr), st, p->blksize);
}

void pvfs_reply(struct pvfs_req *req, uint64_t unique, int error, const void *body,
                uint32_t body_len, uint32_t data_len, int defer)
{
    uint8_t out[sizeof(struct pvfs_fuse_out_header) + 160];
    struct pvfs_fuse_out_header h;
    uint32_t len = sizeof(h) + (error ? 0 : body_len + data_len);
    if (!error && body_len > sizeof(out) - sizeof(h)) {
        error = EIO;        /* a bug of ours: no reply body is that large */
        len = sizeof(h);
    }
    h.len = htole32(len);
    h.error = (int32_t)htole32((uint32_t)-error);
    h.unique = htole64(unique);
    memcpy(out, &h, sizeof(h));
    uint32_t n = sizeof(h);
    if (!error && body_len) {
        memcpy(out + n, body, body_len);
        n += body_len;
    }
    /* The reply area was checked to be large enough and hole-free before any change. */
    if (pvfs_req_write_out(req, 0, out, n) < 0)
        len = 0;
    if (defer)
        pvfs_req_complete_deferred(req, len);
    else
        pvfs_req_complete(req, len);
}
