/* The hot path's context, dispatch and serving loop (see hotpath.h). */
#define _GNU_SOURCE
#include "hotpath.h"
#include "meta.h"
#include "rw.h"
#include "mutate.h"
#include "setattr.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct pvfs_hot *pvfs_hot_new(struct pvfs_store *s)
{
    struct pvfs_hot *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    pvfs_store_ref(s);
    h->store = s;
    h->attr.blksize = 4096;
    return h;
}

void pvfs_hot_free(struct pvfs_hot *h)
{
    if (h) {
        pvfs_opstats_unref(h->opstats);
        pvfs_store_unref(h->store);
        free(h);
    }
}

void pvfs_hot_set_attr(struct pvfs_hot *h, uint32_t blksize, uint64_t valid_sec,
                       uint32_t valid_nsec)
{
    h->attr.blksize = blksize;
    h->attr.valid_sec = valid_sec;
    h->attr.valid_nsec = valid_nsec;
}

void pvfs_hot_set_opstats(struct pvfs_hot *h, struct pvfs_opstats *st)
{
    if (st)
        pvfs_opstats_ref(st);
    pvfs_opstats_unref(h->opstats);
    __atomic_store_n(&h->opstats, st, __ATOMIC_RELEASE);
}

void pvfs_hot_set_ops(struct pvfs_hot *h, uint64_t ops) { __atomic_store_n(&h->ops, ops, __ATOMIC_RELEASE); }
uint64_t pvfs_hot_get_ops(struct pvfs_hot *h) { return __atomic_load_n(&h->ops, __ATOMIC_ACQUIRE); }

void pvfs_hot_set_open_flags(struct pvfs_hot *h, uint32_t file, uint32_t dir)
{
    h->fopen_file = file;
    h->fopen_dir = dir;
}
void pvfs_hot_set_inline(struct pvfs_hot *h, uint64_t opcodes) { __atomic_store_n(&h->inline_ops, opcodes, __ATOMIC_RELEASE); }

void pvfs_hot_set_session(struct pvfs_hot *h, uint32_t number, uint32_t minor,
                          uint32_t max_write, uint32_t max_read)
{
    int on = number != 0;
    /* Before the session word: whoever sees the session (acquire) sees its max_read. */
    __atomic_store_n(&h->max_read, on ? max_read : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&h->number, number, __ATOMIC_SEQ_CST);
    /* One word, so a reader sees one session or the other, never a mix. */
    uint64_t v = on ? (1ull << 63) | ((uint64_t)(minor & 0x7fffffff) << 32) | max_write : 0;
    __atomic_store_n(&h->session, v, __ATOMIC_SEQ_CST);
    if (on)
        return;
    /* Wait for the requests C is serving now: each marked itself serving before it read
     * the session (seq_cst on both sides), so from here on none adds to the store.  They
     * are short, but a READ on a sick file system may take its time.  A futex wait (the
     * last one out wakes us; the timeout covers a wake that came before we slept): the
     * seccomp filter allows futex, not clock_nanosleep. */
    for (;;) {
        unsigned n = __atomic_load_n(&h->serving, __ATOMIC_SEQ_CST);
        if (!n)
            break;
        struct timespec ts = {0, 1000000};
        syscall(SYS_futex, &h->serving, FUTEX_WAIT_PRIVATE, n, &ts, NULL, 0);
    }
}

uint64_t pvfs_hot_stat(struct pvfs_hot *h, int which)
{
    if (which < 0 || which >= (int)(sizeof(h->stat) / sizeof(h->stat[0])))
        return 0;
    return __atomic_load_n(&h->stat[which], __ATOMIC_RELAXED);
}

int pvfs_hot_meta_ok(const struct pvfs_hot_req *r, uint32_t reply_len)
{
    static const uint8_t zeros[256];
    const uint32_t out_hdr = sizeof(struct pvfs_fuse_out_header);
    if (r->minor < 9 || r->in.total_extlen || r->in.len - sizeof(r->in) > PVFS_FUSE_ARGS_MAX ||
        r->req->out_len < out_hdr + reply_len || reply_len > sizeof(zeros))
        return 0;
    /* The reply area must take the reply before anything changes (a lookup counted, a
     * file created): once it has, the guest must get the reply.  A hole is Python's. */
    return pvfs_req_write_out(r->req, out_hdr, zeros, reply_len) == (int64_t)reply_len;
}

struct pvfs_inode *pvfs_hot_inode(struct pvfs_hot *h, struct pvfs_lead *lead, uint64_t nodeid,
                                  struct pvfs_inode_view *v)
{
    struct pvfs_inode *i = pvfs_inode_get(h->store, nodeid, v);
    if (!i || v->fd >= 0)
        return i;
    pvfs_lead_busy(lead);
    int fd = pvfs_store_open_inode(h->store, i);
    pvfs_lead_done(lead);
    if (fd < 0) {
        pvfs_inode_put(h->store, i);
        return NULL;
    }
    v->fd = fd;
    return i;
}

int pvfs_hot_read_strings(const struct pvfs_hot_req *r, uint32_t at, char *buf, uint32_t room,
                          const char **out, int count)
{
    if (r->in.len <= at)
        return 0;
    uint32_t n = r->in.len - at;
    if (n > room || pvfs_req_read_in(r->req, at, buf, n) != (int64_t)n || buf[n - 1])
        return 0;
    uint32_t pos = 0;
    for (int k = 0; k < count; k++) {
        if (pos >= n)
            return 0;
        out[k] = buf + pos;
        pos += (uint32_t)strlen(buf + pos) + 1;
    }
    return pos == n;
}

int pvfs_hot_is_name(const char *s)
{
    size_t n = strlen(s);
    return n && n <= 255 && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* Record r (opstats.h) before its reply is published. */
static void note(const struct pvfs_hot_req *r, int error, const void *body, uint32_t len,
                 uint32_t data_len)
{
    struct pvfs_opstats_req o = {r->in.opcode, r->in.unique, r->in.nodeid, r->args,
                                 r->have_args, r->note->t0_ns};
    pvfs_opstats_served(r->note->st, &o, error, body, len, data_len);
    r->note->done = 1;
}

void pvfs_hot_reply(const struct pvfs_hot_req *r, int error, const void *body, uint32_t len)
{
    if (__builtin_expect(r->note != NULL, 0))
        note(r, error, body, len, 0);
    pvfs_reply(r->req, r->in.unique, error, body, len, 0, r->lead != NULL);
}

void pvfs_hot_reply_data(const struct pvfs_hot_req *r, uint32_t n)
{
    if (__builtin_expect(r->note != NULL, 0))
        note(r, 0, NULL, 0, n);
    pvfs_reply(r->req, r->in.unique, 0, NULL, 0, n, r->lead != NULL);
}

enum { TO_POOL = 0, SERVED = 1, INLINE = 2 };

/* Where a request Python serves should go: the queue thread itself for the opcodes in
 * inline_ops (quick ones: a hand-off to a worker costs more than they do) while another
 * thread can take the ring should it block (pvfs_hotq_spare), else the pool. */
static int route(struct pvfs_hot *h, const struct pvfs_hot_req *r)
{
    uint32_t opcode = r->in.opcode;
    uint64_t inl = __atomic_load_n(&h->inline_ops, __ATOMIC_RELAXED);
    if (!(opcode < 64 && (inl >> opcode) & 1))
        return TO_POOL;
    return !r->lead || pvfs_hotq_spare(r->lead->q) ? INLINE : TO_POOL;
}

typedef int (*serve_fn)(struct pvfs_hot *, struct pvfs_hot_req *);

/* What serves each opcode C can serve. */
static serve_fn serving(uint32_t opcode)
{
    switch (opcode) {
    case PVFS_FUSE_READ: return pvfs_serve_read;
    case PVFS_FUSE_WRITE: return pvfs_serve_write;
    case PVFS_FUSE_GETATTR: return pvfs_serve_getattr;
    case PVFS_FUSE_LOOKUP: return pvfs_serve_lookup;
    case PVFS_FUSE_READDIRPLUS: return pvfs_serve_readdirplus;
    case PVFS_FUSE_READDIR: return pvfs_serve_readdir;
    case PVFS_FUSE_CREATE: return pvfs_serve_create;
    case PVFS_FUSE_MKDIR: return pvfs_serve_mkdir;
    case PVFS_FUSE_MKNOD: return pvfs_serve_mknod;
    case PVFS_FUSE_SYMLINK: return pvfs_serve_symlink;
    case PVFS_FUSE_LINK: return pvfs_serve_link;
    case PVFS_FUSE_UNLINK: case PVFS_FUSE_RMDIR: return pvfs_serve_unlink;
    case PVFS_FUSE_RENAME: case PVFS_FUSE_RENAME2: return pvfs_serve_rename;
    case PVFS_FUSE_OPEN: return pvfs_serve_open;
    case PVFS_FUSE_OPENDIR: return pvfs_serve_opendir;
    case PVFS_FUSE_RELEASE: case PVFS_FUSE_RELEASEDIR: return pvfs_serve_release;
    case PVFS_FUSE_FLUSH: return pvfs_serve_flush;
    case PVFS_FUSE_FSYNC: case PVFS_FUSE_FSYNCDIR: return pvfs_serve_fsync;
    case PVFS_FUSE_STATFS: return pvfs_serve_statfs;
    case PVFS_FUSE_SETATTR: return pvfs_serve_setattr;
    case PVFS_FUSE_FORGET: return pvfs_serve_forget;
    case PVFS_FUSE_BATCH_FORGET: return pvfs_serve_batch_forget;
    default: return NULL;
    }
}

int pvfs_hot_can_serve(uint32_t opcode) { return serving(opcode) != NULL; }

/* The serving function for an opcode the context has switched on, or NULL. */
static serve_fn server_for(uint32_t opcode, uint64_t ops)
{
    return opcode < 64 && (ops >> opcode) & 1 ? serving(opcode) : NULL;
}

/* Serve req in C if it is one C may answer (SERVED), else say where Python should serve
 * it (nothing was written to it then). */
static int serve_one(struct pvfs_hot *h, struct pvfs_hot_req *r)
{
    struct pvfs_req *req = r->req;
    if (req->err || req->in_len < sizeof(r->in))
        return TO_POOL;
    uint8_t head[sizeof(r->in) + PVFS_HOT_ARGS];
    uint32_t have = req->in_len < sizeof(head) ? req->in_len : (uint32_t)sizeof(head);
    if (pvfs_req_read_in(req, 0, head, have) != (int64_t)have)
        return TO_POOL;
    memcpy(&r->in, head, sizeof(r->in));
    r->in.len = le32toh(r->in.len);
    r->in.opcode = le32toh(r->in.opcode);
    r->in.unique = le64toh(r->in.unique);
    r->in.nodeid = le64toh(r->in.nodeid);
    r->in.uid = le32toh(r->in.uid);
    r->in.gid = le32toh(r->in.gid);
    r->in.pid = le32toh(r->in.pid);
    r->in.total_extlen = le16toh(r->in.total_extlen);
    r->have_args = have - (uint32_t)sizeof(r->in);
    memcpy(r->args, head + sizeof(r->in), r->have_args);
    serve_fn fn = server_for(r->in.opcode, __atomic_load_n(&h->ops, __ATOMIC_ACQUIRE));
    if (!fn)
        return route(h, r);
    /* Metadata may block on a sick file system: only with a thread to spare (leader.h). */
    if (fn != pvfs_serve_read && fn != pvfs_serve_write && r->lead &&
        !pvfs_hotq_spare(r->lead->q))
        return TO_POOL;
    uint64_t session = __atomic_load_n(&h->session, __ATOMIC_SEQ_CST);
    if (!(session >> 63))
        return TO_POOL;                                   /* before INIT: Python answers EIO */
    r->minor = (uint32_t)(session >> 32) & 0x7fffffff;
    r->max_write = (uint32_t)session;
    if (r->in.len < sizeof(r->in) || r->in.len > req->in_len)
        return TO_POOL;                                   /* malformed: Python explains */
    return fn(h, r) == PVFS_SERVED ? SERVED : route(h, r);
}

/* serve_one, counted as serving while it runs (see pvfs_hot_set_session), and recorded
 * when it is served and requests are (a request without a reply, FORGET, once served). */
static int try_serve(struct pvfs_hot *h, struct pvfs_req *req, struct pvfs_lead *lead)
{
    struct pvfs_hot_req r = {.req = req, .lead = lead};
    struct pvfs_hot_note n;
    struct pvfs_opstats *st = __atomic_load_n(&h->opstats, __ATOMIC_ACQUIRE);
    if (__builtin_expect(st != NULL, 0)) {
        n = (struct pvfs_hot_note){st, pvfs_opstats_clock(), 0};
        r.note = &n;
    }
    __atomic_add_fetch(&h->serving, 1, __ATOMIC_SEQ_CST);
    int rc = serve_one(h, &r);
    if (__builtin_expect(st != NULL, 0) && rc == SERVED && !n.done)
        note(&r, 0, NULL, 0, 0);
    if (__atomic_sub_fetch(&h->serving, 1, __ATOMIC_SEQ_CST) == 0 &&
        !__atomic_load_n(&h->session, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &h->serving, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    return rc;
}

int pvfs_hot_serve(struct pvfs_hot *h, struct pvfs_vq *vq, struct pvfs_req **out)
{
    for (;;) {
        struct pvfs_req *req;
        int rc = pvfs_vq_pop(vq, &req);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            if (!pvfs_vq_enable_notify(vq))
                return PVFS_HOT_RUN_EMPTY;
            continue;
        }
        req->session = __atomic_load_n(&h->number, __ATOMIC_SEQ_CST);   /* ring order */
        int r = try_serve(h, req, NULL);
        if (r == SERVED)
            continue;
        pvfs_hot_count(h, PVFS_HOT_STAT_PASSED, 1);   /* before Python can complete it */
        *out = req;
        return r == INLINE ? PVFS_HOT_RUN_INLINE : PVFS_HOT_RUN_POOL;
    }
}

/* No kick fd (VHOST_USER_VRING_NOFD_MASK): poll the ring every timeout_ms; the same results
 * as pvfs_wait_kick (2 on a stop, 0 on a tick). */
static int wait_stop(int stop_fd, int timeout_ms)
{
    struct pollfd p = {.fd = stop_fd, .events = POLLIN};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return -errno;
    return n ? 2 : 0;
}

/* Interrupts for requests served in C can be sent once per batch: completions are pushed
 * deferred and flushed when the ring is empty, before anything that may block or leaves
 * the loop, and at least every FLUSH_EVERY.  With EVENT_IDX the driver already suppresses
 * most interrupts; batching 8 showed no gain within the noise (BENCHMARKS.md,
 * "Notifications"), so it is 1 (an interrupt decision per request). */
#define FLUSH_EVERY 1

/* The queue this thread left to serve a request in Python (see pvfs_hotq_blocked). */
static __thread struct pvfs_hotq *in_python;

int pvfs_hot_run(struct pvfs_hot *h, struct pvfs_vq *vq, struct pvfs_hotq *q, int kick_fd,
                 int stop_fd, int timeout_ms, struct pvfs_req **out)
{
    if (in_python) {            /* back from it */
        if (in_python == q)
            pvfs_hotq_from_python(q);
        in_python = NULL;
    }
    if (pvfs_lead(q))
        return PVFS_HOT_RUN_STOP;
    unsigned unflushed = 0;
    for (;;) {
        if (pvfs_hotq_halted(q)) {
            pvfs_vq_flush_signal(vq);
            pvfs_unlead(q, 1);
            return PVFS_HOT_RUN_STOP;   /* disabled or stopping while we led */
        }
        struct pvfs_req *req;
        int rc = pvfs_vq_pop(vq, &req);
        if (rc < 0) {
            pvfs_vq_flush_signal(vq);
            pvfs_unlead(q, 1);
            return rc;
        }
        if (rc == 0) {
            pvfs_vq_flush_signal(vq);
            unflushed = 0;
            if (pvfs_vq_enable_notify(vq))
                continue;
            rc = kick_fd >= 0 ? pvfs_wait_kick(kick_fd, stop_fd, timeout_ms)
                              : wait_stop(stop_fd, timeout_ms);
            if (rc == 0 || rc == 1 || rc == -EINTR)
                continue;   /* a kick, a poll tick, or a signal (SIGUSR1: statistics) */
            pvfs_unlead(q, 1);
            /* 2: stop_fd readable, a stop or a wake (not consumed); <0: the wait failed */
            return rc == 2 ? PVFS_HOT_RUN_STOP : rc;
        }
        /* The session it was sent in: read while this thread still leads the ring, so
         * before a DESTROY or INIT behind it on the ring can change it. */
        req->session = __atomic_load_n(&h->number, __ATOMIC_SEQ_CST);
        struct pvfs_lead lead = {q, vq, q != NULL, 0};
        int r = try_serve(h, req, q ? &lead : NULL);
        if (r != SERVED) {
            pvfs_vq_flush_signal(vq);
            /* Python's: hand the ring over, but wake nobody -- a second thread in Python
             * would only fight this one for the GIL (it measured slower, see BENCHMARKS.md);
             * this thread is back as soon as Python is done, and should Python take
             * PVFS_HOT_STALL_NS, a follower takes the ring over (leader.h). */
            if (lead.leading && r == INLINE) {
                pvfs_hotq_to_python(q);
                in_python = q;
            } else if (lead.leading) {
                pvfs_unlead(q, 0);
            }
            pvfs_hot_count(h, PVFS_HOT_STAT_PASSED, 1);   /* before Python can complete it */
            *out = req;
            return r == INLINE ? PVFS_HOT_RUN_INLINE : PVFS_HOT_RUN_POOL;
        }
        if (++unflushed >= FLUSH_EVERY || !lead.leading) {
            pvfs_vq_flush_signal(vq);
            unflushed = 0;
        }
        if (!lead.leading && pvfs_lead(q))
            return PVFS_HOT_RUN_STOP;
    }
}
