/* READ and WRITE in C (see rw.h). */
#define _GNU_SOURCE
#include "rw.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/uio.h>

/* A small READ whose pages are all cached the leader serves itself (preadv2 RWF_NOWAIT),
 * still leading: a 4 KiB copy costs less than waking a thread.  Larger or uncached ones are
 * served after handing the ring over (leader.h). */
#define HANDOFF_BYTES (32u << 10)

/* The fuse_read_in / fuse_write_in a request carries, or NULL if it is not all there. */
static const void *rw_args(const struct pvfs_hot_req *r)
{
    if (r->have_args < sizeof(struct pvfs_fuse_read_in) || r->minor < 9 ||
        r->in.len < sizeof(r->in) + sizeof(struct pvfs_fuse_read_in) || r->in.total_extlen)
        return NULL;                                     /* malformed or old: Python explains */
    return r->args;
}

int pvfs_serve_read(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    const struct pvfs_fuse_read_in *a = rw_args(r);
    if (!a || r->req->out_len < sizeof(struct pvfs_fuse_out_header))
        return PVFS_TO_PYTHON;
    uint64_t fh = le64toh(a->fh), offset = le64toh(a->offset);
    uint32_t size = le32toh(a->size);
    if (offset > INT64_MAX || size > __atomic_load_n(&h->max_read, __ATOMIC_RELAXED))
        return PVFS_TO_PYTHON;     /* more than a reply may carry: Python cuts and says so */
    uint32_t room = r->req->out_len - sizeof(struct pvfs_fuse_out_header);
    if (size > room)
        size = room;
    int fd, append;
    struct pvfs_handle *e = pvfs_store_handle_fd(h->store, fh, &fd, &append);
    if (!e)
        return PVFS_TO_PYTHON;                            /* unknown fh: Python says EBADF */
    const uint32_t at = sizeof(struct pvfs_fuse_out_header);
    int64_t n = -EAGAIN;
    if (r->lead && r->lead->leading && size < HANDOFF_BYTES) {
        n = pvfs_req_preadv2_once(r->req, fd, at, size, (int64_t)offset, RWF_NOWAIT);
        if (n == -EOPNOTSUPP || (n >= 0 && (uint64_t)n < size))
            n = -EAGAIN;    /* not supported, or partly cached (or EOF): read it normally */
    }
    if (n == -EAGAIN) {
        pvfs_lead_handoff(r->lead);
        n = pvfs_req_preadv(r->req, fd, at, size, (int64_t)offset);
    }
    pvfs_handle_put(e);
    /* Counted before the reply is published: whoever sees the reply sees the count. */
    pvfs_hot_count(h, PVFS_HOT_STAT_READS, 1);
    if (n < 0) {
        pvfs_hot_reply(r, (int)-n, NULL, 0);
    } else {
        pvfs_hot_count(h, PVFS_HOT_STAT_BYTES, (uint64_t)n);
        pvfs_hot_reply_data(r, (uint32_t)n);
    }
    return PVFS_SERVED;
}

int pvfs_serve_write(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    const struct pvfs_fuse_write_in *a = rw_args(r);
    if (!a)
        return PVFS_TO_PYTHON;
    const uint32_t at = sizeof(r->in) + sizeof(*a);
    uint64_t fh = le64toh(a->fh), offset = le64toh(a->offset);
    uint32_t size = le32toh(a->size), flags = le32toh(a->write_flags);
    /* The payload follows fuse_write_in and must be all there. */
    if (offset > INT64_MAX || size > r->in.len - at || size > r->max_write ||
        (flags & PVFS_FUSE_WRITE_KILL_SUIDGID) ||
        r->req->out_len < sizeof(struct pvfs_fuse_out_header) + sizeof(struct pvfs_fuse_write_out))
        return PVFS_TO_PYTHON;
    int fd, append;
    struct pvfs_handle *e = pvfs_store_handle_fd(h->store, fh, &fd, &append);
    if (!e)
        return PVFS_TO_PYTHON;
    if (append) {                  /* the file position decides: Python's */
        pvfs_handle_put(e);
        return PVFS_TO_PYTHON;
    }
    int64_t n;
    if (r->lead && r->lead->leading && size < HANDOFF_BYTES) {
        /* A small write the leader does itself (there is no RWF_NOWAIT for buffered
         * writes), marked busy: a follower takes the ring should it be slow. */
        pvfs_lead_busy(r->lead);
        n = pvfs_req_pwritev(r->req, fd, at, size, (int64_t)offset);
        pvfs_lead_done(r->lead);
    } else {
        pvfs_lead_handoff(r->lead);
        /* Large writes through one handle take turns: two threads writing one file would
         * serialise on its inode lock anyway, the second spinning on it
         * (rwsem_spin_on_owner, see "seq write 1M QD16" in BENCHMARKS.md); here it sleeps. */
        int big = size >= HANDOFF_BYTES;
        if (big)
            pvfs_handle_lock(e);
        n = pvfs_req_pwritev(r->req, fd, at, size, (int64_t)offset);
        if (big)
            pvfs_handle_unlock(e);
    }
    pvfs_handle_put(e);
    pvfs_hot_count(h, PVFS_HOT_STAT_WRITES, 1);
    if (n < 0) {
        pvfs_hot_reply(r, (int)-n, NULL, 0);
    } else {
        struct pvfs_fuse_write_out wo = {htole32((uint32_t)n), 0};
        pvfs_hot_count(h, PVFS_HOT_STAT_BYTES, (uint64_t)n);
        pvfs_hot_reply(r, 0, &wo, sizeof(wo));
    }
    return PVFS_SERVED;
}
