/* GETATTR, LOOKUP and READDIRPLUS in C (see meta.h). */
#define _GNU_SOURCE
#include "meta.h"
#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* GETATTR: fstat the inode's O_PATH fd, fuse_attr_out as the Python server would answer. */
int pvfs_serve_getattr(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    if (!pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_attr_out)))
        return PVFS_TO_PYTHON;
    struct pvfs_inode_view v;
    struct pvfs_inode *i = pvfs_hot_inode(h, r->lead, r->in.nodeid, &v);
    if (!i)
        return PVFS_TO_PYTHON;                            /* unknown nodeid: Python says EBADF */
    struct stat st;
    pvfs_lead_busy(r->lead);
    int rc = fstat(v.fd, &st);
    pvfs_lead_done(r->lead);
    pvfs_inode_put(h->store, i);
    if (rc < 0)
        return PVFS_TO_PYTHON;                            /* Python reports the error */
    uint8_t b[sizeof(struct pvfs_fuse_attr_out)];
    pvfs_pack_attr_out(b, &st, &h->attr);
    pvfs_hot_count(h, PVFS_HOT_STAT_GETATTRS, 1);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}

#define STATX_WANT (STATX_BASIC_STATS | STATX_MNT_ID)

/* statx a name under a parent O_PATH fd as a LOOKUP does (no symlink followed, no automount);
 * 0, or -1 with errno (EXDEV: on another mount than the parent -- a submount, Python's). */
static int stat_child(int parent_fd, const char *name, uint64_t parent_mnt, struct statx *sx)
{
    if (statx(parent_fd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_WANT, sx) < 0)
        return -1;
    if ((sx->stx_mask & STATX_WANT) != STATX_WANT || sx->stx_mnt_id != parent_mnt) {
        errno = EXDEV;
        return -1;
    }
    return 0;
}

/* What a LOOKUP of name under the parent (its O_PATH fd, on mount parent_mnt) gives: the
 * nodeid, one lookup counted, and in sx the attributes the reply carries.  statx of the
 * name finds an inode the store holds; any other file is opened as
 * PassthroughFs._lookup_child opens it -- openat2(O_PATH | O_NOFOLLOW, RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) -- and registered (with a file handle if the store keeps them).
 * 0 with errno when the Python path should answer instead (EXDEV: another mount, a
 * submount).  The syscalls run marked busy (leader.h). */
static uint64_t lookup_child(struct pvfs_store *s, int parent_fd, uint64_t parent_mnt,
                             const char *name, struct statx *sx, struct pvfs_lead *lead,
                             int verify)
{
    pvfs_lead_busy(lead);
    int rc = stat_child(parent_fd, name, parent_mnt, sx);
    uint64_t nodeid = rc < 0 ? 0 : pvfs_store_count_known(s, sx, verify);
    pvfs_lead_done(lead);
    if (rc < 0)
        return 0;
    if (nodeid)
        return nodeid;
    pvfs_lead_busy(lead);
    int fd = pvfs_fs_openat2(parent_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0,
                             PVFS_FS_RESOLVE_BENEATH | PVFS_FS_RESOLVE_NO_MAGICLINKS);
    /* the attributes of what was opened (the name may have changed files since the statx) */
    rc = fd < 0 ? (errno = -fd, -1)
                : statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_WANT, sx);
    pvfs_lead_done(lead);
    if (fd < 0)
        return 0;
    if (rc < 0 || (sx->stx_mask & STATX_WANT) != STATX_WANT || sx->stx_mnt_id != parent_mnt) {
        close(fd);
        errno = EXDEV;
        return 0;
    }
    pvfs_lead_busy(lead);
    nodeid = pvfs_store_count_or_add(s, fd, sx);   /* errno set if 0 */
    pvfs_lead_done(lead);
    return nodeid;
}

/* LOOKUP (see lookup_child): the lookup counted in the store, fuse_entry_out as the Python
 * server would answer.  ".", "..", an odd name, a submount, an error are Python's. */
int pvfs_serve_lookup(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    char buf[256];
    const char *name;
    if (!pvfs_hot_meta_ok(r, sizeof(struct pvfs_fuse_entry_out)) ||
        !pvfs_hot_read_strings(r, sizeof(r->in), buf, sizeof(buf), &name, 1) ||
        !pvfs_hot_is_name(name))
        return PVFS_TO_PYTHON;
    struct pvfs_inode_view pv;
    struct pvfs_inode *p = pvfs_hot_inode(h, r->lead, r->in.nodeid, &pv);
    if (!p)
        return PVFS_TO_PYTHON;                            /* unknown nodeid: Python says EBADF */
    struct statx sx;
    uint64_t nodeid = lookup_child(h->store, pv.fd, pv.mnt_id, name, &sx, r->lead, 1);
    int e = errno;
    pvfs_inode_put(h->store, p);
    if (!nodeid && e == ENOENT) {
        /* the name is not there: Python's openat2 would say so too (a negative lookup is
         * what every create, and every tool probing for a file, sends first) */
        pvfs_hot_count(h, PVFS_HOT_STAT_LOOKUPS, 1);
        pvfs_hot_reply(r, ENOENT, NULL, 0);
        return PVFS_SERVED;
    }
    if (!nodeid)
        return PVFS_TO_PYTHON;                            /* an error, a submount...: Python's */
    uint8_t b[sizeof(struct pvfs_fuse_entry_out)];
    pvfs_pack_entry(b, nodeid, &sx, &h->attr);
    pvfs_hot_count(h, PVFS_HOT_STAT_LOOKUPS, 1);
    pvfs_hot_reply(r, 0, b, sizeof(b));
    return PVFS_SERVED;
}

/* ---- READDIRPLUS records ---- */

struct dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

#define DIRENT_SIZE sizeof(struct pvfs_fuse_dirent)   /* before the name */
/* The most and the least a dirent64 takes (names of 255 and of 1-4 bytes), and how much
 * larger, at most, its direntplus record is: 160 bytes for a 24-byte dirent64. */
#define DIRENT64_MAX ((offsetof(struct dirent64, d_name) + 256 + 7) & ~(size_t)7)
#define DIRENT64_MIN 24
#define DIRENT_GROWTH 7
/* ... and its plain fuse_dirent: at most 8 bytes more, so at most twice as large */
#define DIRENT_GROWTH_PLAIN 2

static int64_t dirents(struct pvfs_store *s, int dir_fd, int parent_fd, uint64_t parent_mnt,
                       uint64_t offset, uint8_t *out, uint32_t room, int plus,
                       const struct pvfs_attr_policy pol, uint64_t *next_offset, int *why,
                       struct pvfs_lead *lead);

int64_t pvfs_dirplus(struct pvfs_store *s, int dir_fd, int parent_fd, uint64_t parent_mnt,
                     uint64_t offset, uint8_t *out, uint32_t room, uint32_t blksize,
                     uint64_t valid_sec, uint32_t valid_nsec, uint64_t *next_offset, int *why)
{
    const struct pvfs_attr_policy pol = {blksize, valid_sec, valid_nsec};
    return dirents(s, dir_fd, parent_fd, parent_mnt, offset, out, room, 1, pol, next_offset,
                   why, NULL);
}

/* READDIR and READDIRPLUS served whole in C: what server/dirs.py answers from
 * PassthroughFs.readdir (a getdents64 stream) and PassthroughFs.readdirplus_records (the
 * same dirents()).  Left to Python: an old or malformed request, an unknown handle or
 * inode, a reply area with a hole, a size beyond max_read (Python says so), an error
 * before the first entry, a reply too small for one entry, and a first entry that is
 * Python's (another mount...).  Entries packed before one that is Python's go out as a
 * shorter reply: their lookups are counted, and the guest asks again from there. */
static int serve_dir(struct pvfs_hot *h, struct pvfs_hot_req *r, int plus)
{
    const struct pvfs_fuse_read_in *a = (const void *)r->args;
    const uint32_t out_hdr = sizeof(struct pvfs_fuse_out_header);
    if (r->have_args < sizeof(*a) || r->in.len < sizeof(r->in) + sizeof(*a) ||
        !pvfs_hot_meta_ok(r, 0))
        return PVFS_TO_PYTHON;
    uint64_t fh = le64toh(a->fh), offset = le64toh(a->offset);
    uint32_t size = le32toh(a->size);
    if (offset > INT64_MAX || size > __atomic_load_n(&h->max_read, __ATOMIC_RELAXED))
        return PVFS_TO_PYTHON;
    uint32_t room = r->req->out_len - out_hdr;
    if (size < room)
        room = size;
    if (room > PVFS_DIRPLUS_ROOM)
        room = PVFS_DIRPLUS_ROOM;        /* a shorter reply is fine: the guest asks again */
    uint8_t small[8192], *buf = room <= sizeof(small) ? small : malloc(room);
    if (!buf)
        return PVFS_TO_PYTHON;
    int rc = PVFS_TO_PYTHON;
    int dir_fd, append, parent_fd = -1;
    uint64_t parent_mnt = 0, next;
    struct pvfs_handle *d = pvfs_store_handle_fd(h->store, fh, &dir_fd, &append);
    /* READDIR needs only the handle (PassthroughFs.readdir reads no inode) */
    struct pvfs_inode_view pv;
    struct pvfs_inode *p = d && plus ? pvfs_hot_inode(h, r->lead, r->in.nodeid, &pv) : NULL;
    if (p) {
        parent_fd = pv.fd;
        parent_mnt = pv.mnt_id;
    }
    /* The reply area must take the records before any lookup is counted. */
    if (d && (p || !plus) &&
        pvfs_req_write_out(r->req, out_hdr, memset(buf, 0, room), room) == (int64_t)room) {
        int why;
        pvfs_handle_lock(d);
        int64_t n = dirents(h->store, dir_fd, parent_fd, parent_mnt, offset, buf, room, plus,
                            h->attr, &next, &why, r->lead);
        pvfs_handle_unlock(d);
        if (n > 0 || (n == 0 && why == PVFS_DIRPLUS_END)) {
            /* the records first (the area took room bytes), then the header after them */
            pvfs_req_write_out(r->req, out_hdr, buf, (uint32_t)n);
            pvfs_hot_reply_data(r, (uint32_t)n);
            pvfs_hot_count(h, plus ? PVFS_HOT_STAT_DIRPLUS : PVFS_HOT_STAT_DIRS, 1);
            rc = PVFS_SERVED;
        }
    }
    if (p)
        pvfs_inode_put(h->store, p);
    if (d)
        pvfs_handle_put(d);
    if (buf != small)
        free(buf);
    return rc;
}

int pvfs_serve_readdirplus(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    return serve_dir(h, r, 1);
}

int pvfs_serve_readdir(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    return serve_dir(h, r, 0);
}

static int64_t dirents(struct pvfs_store *s, int dir_fd, int parent_fd, uint64_t parent_mnt,
                       uint64_t offset, uint8_t *out, uint32_t room, int plus,
                       const struct pvfs_attr_policy pol, uint64_t *next_offset, int *why,
                       struct pvfs_lead *lead)
{
    const uint32_t entry = plus ? sizeof(struct pvfs_fuse_entry_out) : 0;
    const uint32_t growth = plus ? DIRENT_GROWTH : DIRENT_GROWTH_PLAIN;
    *next_offset = offset;
    *why = PVFS_DIRPLUS_PYTHON;
    if (offset > INT64_MAX)
        return -EINVAL;
    if (lseek(dir_fd, (off_t)offset, SEEK_SET) < 0)
        return -errno;
    char buf[8192] __attribute__((aligned(8)));
    uint32_t used = 0;
    for (;;) {
        /* Read no entry that will not fit: the next request then starts where the kernel
         * stopped, and its lseek moves nothing.  A seek elsewhere is what costs: ext4
         * rebuilds its hash-order cursor (hashing a whole directory block), tmpfs walks
         * the directory from its start.  A dirent64 of n bytes packs into at most
         * n * growth bytes (the shortest names grow the most: 24 -> 160 with attributes,
         * 24 -> 32 without), so asking for (room left) / growth bytes reads only entries
         * that fit; a few more
         * getdents64 calls per reply are far cheaper than one rebuilt cursor. */
        size_t want = (room - used) / growth & ~(size_t)7;
        if (want > sizeof(buf))
            want = sizeof(buf);
        if (!used && want < DIRENT64_MAX)
            want = DIRENT64_MAX;          /* the first entry whatever it is, if it fits */
        pvfs_lead_busy(lead);
        long n = want < DIRENT64_MIN ? -1 : syscall(SYS_getdents64, dir_fd, buf, want);
        pvfs_lead_done(lead);
        if (n < 0 && used && (want < DIRENT64_MIN || errno == EINVAL)) {
            *why = PVFS_DIRPLUS_FULL;     /* the next entry is larger than what is left */
            return used;
        }
        if (n < 0)
            return used ? (int64_t)used : -errno;         /* with entries: Python goes on */
        if (n == 0) {
            *why = PVFS_DIRPLUS_END;
            return used;
        }
        for (long pos = 0; pos < n;) {
            const struct dirent64 *d = (const void *)(buf + pos);
            const size_t name_at = offsetof(struct dirent64, d_name);
            if (d->d_reclen <= name_at || pos + d->d_reclen > n)
                return used ? (int64_t)used : -EIO;
            pos += d->d_reclen;
            size_t nl = strnlen(d->d_name, d->d_reclen - name_at);
            if (nl == 0 || nl > 255)
                return used ? (int64_t)used : -EIO;
            uint32_t rec = entry + (((uint32_t)(DIRENT_SIZE + nl) + 7) & ~7u);
            if (used + rec > room) {
                *why = PVFS_DIRPLUS_FULL;
                return used;
            }
            uint8_t *e = out + used;
            memset(e, 0, rec);
            int dots = (nl == 1 && d->d_name[0] == '.') ||
                       (nl == 2 && d->d_name[0] == '.' && d->d_name[1] == '.');
            if (!plus) {
                /* a plain dirent: no lookup, "." and ".." as they are */
            } else if (dots) {
                /* nodeid 0, no timeouts, only ino, type and nlink 1 (filesystem.Attr's
                 * defaults): the guest skips these */
                struct stat st = {0};
                st.st_ino = d->d_ino;
                st.st_mode = (mode_t)d->d_type << 12;
                st.st_nlink = 1;
                pvfs_pack_attr(e + offsetof(struct pvfs_fuse_entry_out, attr), &st, pol.blksize);
            } else {
                struct statx sx;
                uint64_t nodeid = lookup_child(s, parent_fd, parent_mnt, d->d_name, &sx, lead, 0);
                if (!nodeid && errno == ENOENT) {         /* gone since getdents: skipped */
                    *next_offset = (uint64_t)d->d_off;
                    continue;
                }
                if (!nodeid)
                    return used;                          /* Python's, from this entry */
                pvfs_pack_entry(e, nodeid, &sx, &pol);
            }
            struct pvfs_fuse_dirent de = {htole64(d->d_ino), htole64((uint64_t)d->d_off),
                                          htole32((uint32_t)nl), htole32(d->d_type)};
            memcpy(e + entry, &de, sizeof(de));
            memcpy(e + entry + DIRENT_SIZE, d->d_name, nl);
            used += rec;
            *next_offset = (uint64_t)d->d_off;
        }
    }
}
