/* The benchmark's request loop and its host-native twin (see bench.h). */
#define _GNU_SOURCE
#include "bench.h"
#include "fusewire.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The FUSE layout is fusewire.h's; these are the sizes the loop uses most. */
#define IN_HDR sizeof(struct pvfs_fuse_in_header)
#define OUT_HDR sizeof(struct pvfs_fuse_out_header)
#define ENTRY_OUT sizeof(struct pvfs_fuse_entry_out)
#define PVFS_BENCH_MAX_FORGET 1024

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---- the data pattern -------------------------------------------------------------- */

void pvfs_bench_fill(uint8_t *buf, uint64_t len, uint64_t off, uint64_t tag, const uint8_t *base)
{
    for (uint64_t p = 0; p < len; p += PVFS_BENCH_BLOCK) {
        uint64_t n = len - p < PVFS_BENCH_BLOCK ? len - p : PVFS_BENCH_BLOCK;
        memcpy(buf + p, base, n);
        uint64_t t = htole64(((off + p) / PVFS_BENCH_BLOCK) ^ tag);
        memcpy(buf + p, &t, n < 8 ? n : 8);
    }
}

/* Only the tags: what a writer changes per op once the buffer holds the base pages. */
static void patch_tags(uint8_t *buf, uint64_t len, uint64_t off, uint64_t tag)
{
    for (uint64_t p = 0; p + 8 <= len; p += PVFS_BENCH_BLOCK) {
        uint64_t t = htole64(((off + p) / PVFS_BENCH_BLOCK) ^ tag);
        memcpy(buf + p, &t, 8);
    }
}

uint64_t pvfs_bench_check(const uint8_t *buf, uint64_t len, uint64_t off, uint64_t tag,
                          const uint8_t *base, int full)
{
    uint64_t bad = 0;
    for (uint64_t p = 0; p < len; p += PVFS_BENCH_BLOCK) {
        uint64_t n = len - p < PVFS_BENCH_BLOCK ? len - p : PVFS_BENCH_BLOCK;
        uint64_t t = htole64(((off + p) / PVFS_BENCH_BLOCK) ^ tag);
        int ok = n < 8 ? memcmp(buf + p, &t, n) == 0 : memcmp(buf + p, &t, 8) == 0;
        if (ok && full && n > 8)
            ok = memcmp(buf + p + 8, base + 8, n - 8) == 0;
        bad += !ok;
    }
    return bad;
}

/* ---- the request loop -------------------------------------------------------------- */

struct slot {
    uint8_t *in, *out;
    uint64_t in_gpa, out_gpa;
    uint64_t unique;
    uint64_t t0;          /* op start */
    uint64_t offset;      /* READ/WRITE file offset, READDIRPLUS directory offset */
    uint64_t nodeid, fh;  /* CREATE_UNLINK: what CREATE returned */
    uint32_t opcode;      /* of the request in flight */
    uint32_t in_len, out_len;
    int phase;            /* CREATE_UNLINK: 0 create, 1 release, 2 unlink */
    int busy;
    uint64_t entries;     /* READDIRPLUS: entries of the listing so far */
    char name[64];
    uint32_t name_len;    /* including the NUL */
};

struct loop {
    const struct pvfs_bench_spec *s;
    struct pvfs_drv *q;
    int kick_fd, call_fd;
    struct pvfs_bench_result *res;
    uint32_t *lat;
    struct slot slots[PVFS_BENCH_MAX_QD];
    int16_t slot_of_head[32768];
    uint64_t unique;
    uint64_t next_off;
    uint64_t rng;
    uint64_t issued;      /* ops started */
    uint64_t deadline;
    uint64_t reads;       /* for verify_every */
    unsigned forget_inflight;
    uint16_t forget_free[PVFS_BENCH_MAX_FORGET];   /* free FORGET buffers (a stack) */
    unsigned forget_nfree;
    uint16_t forget_buf_of_head[32768];
};

/* The back-end has exited: spec->gone_fd (its pidfd) is readable. */
static int backend_gone(const struct pvfs_bench_spec *s)
{
    if (s->gone_fd <= 0)
        return 0;
    struct pollfd p = {.fd = s->gone_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

static void *host(const struct loop *L, uint64_t gpa) { return (void *)(uintptr_t)(gpa + L->s->host_delta); }

static void put_header(struct slot *sl, uint32_t len, uint32_t opcode, uint64_t unique, uint64_t nodeid)
{
    struct pvfs_fuse_in_header h = {.len = htole32(len), .opcode = htole32(opcode),
                                    .unique = htole64(unique), .nodeid = htole64(nodeid)};
    memcpy(sl->in, &h, sizeof(h));
}

static uint64_t next_offset(struct loop *L)
{
    const struct pvfs_bench_spec *s = L->s;
    uint64_t blocks = (s->file_size - s->block) / PVFS_BENCH_BLOCK + 1;
    if (s->random)
        return (xorshift(&L->rng) % blocks) * PVFS_BENCH_BLOCK;
    if (L->next_off + s->block > s->file_size)
        L->next_off = 0;
    uint64_t off = L->next_off;
    L->next_off += s->block;
    return off;
}

/* Lay out the slot's next request (for its op and phase). */
static void build(struct loop *L, struct slot *sl)
{
    const struct pvfs_bench_spec *s = L->s;
    uint64_t unique = L->unique += 2;
    sl->unique = unique;
    switch (s->kind) {
    case PVFS_BENCH_READ:
    case PVFS_BENCH_WRITE: {
        int write = s->kind == PVFS_BENCH_WRITE;
        sl->offset = next_offset(L);
        /* fuse_read_in and fuse_write_in have the same layout (the data follows a WRITE's) */
        struct pvfs_fuse_write_in a = {.fh = htole64(s->fh), .offset = htole64(sl->offset),
                                       .size = htole32(s->block), .flags = htole32(O_RDWR)};
        memcpy(sl->in + IN_HDR, &a, sizeof(a));
        if (write)
            patch_tags(sl->in + IN_HDR + sizeof(a), s->block, sl->offset, s->tag);
        sl->opcode = write ? PVFS_FUSE_WRITE : PVFS_FUSE_READ;
        sl->in_len = IN_HDR + sizeof(a) + (write ? s->block : 0);
        sl->out_len = OUT_HDR + (write ? sizeof(struct pvfs_fuse_write_out) : s->block);
        put_header(sl, sl->in_len, sl->opcode, unique, s->nodeid);
        break;
    }
    case PVFS_BENCH_GETATTR:
        memset(sl->in + IN_HDR, 0, sizeof(struct pvfs_fuse_getattr_in));
        sl->opcode = PVFS_FUSE_GETATTR;
        sl->in_len = IN_HDR + sizeof(struct pvfs_fuse_getattr_in);
        sl->out_len = OUT_HDR + sizeof(struct pvfs_fuse_attr_out);
        put_header(sl, sl->in_len, sl->opcode, unique, s->nodeid);
        break;
    case PVFS_BENCH_LOOKUP:
        memcpy(sl->in + IN_HDR, sl->name, sl->name_len);
        sl->opcode = PVFS_FUSE_LOOKUP;
        sl->in_len = IN_HDR + sl->name_len;
        sl->out_len = OUT_HDR + ENTRY_OUT;
        put_header(sl, sl->in_len, sl->opcode, unique, s->nodeid);
        break;
    case PVFS_BENCH_CREATE_UNLINK:
        if (sl->phase == 0) {
            struct pvfs_fuse_create_in a = {.flags = htole32(O_CREAT | O_EXCL | O_RDWR),
                                            .mode = htole32(S_IFREG | 0644), .umask = htole32(022)};
            memcpy(sl->in + IN_HDR, &a, sizeof(a));
            memcpy(sl->in + IN_HDR + sizeof(a), sl->name, sl->name_len);
            sl->opcode = PVFS_FUSE_CREATE;
            sl->in_len = IN_HDR + sizeof(a) + sl->name_len;
            sl->out_len = OUT_HDR + ENTRY_OUT + sizeof(struct pvfs_fuse_open_out);
            put_header(sl, sl->in_len, sl->opcode, unique, s->nodeid);
        } else if (sl->phase == 1) {
            struct pvfs_fuse_release_in a = {.fh = htole64(sl->fh), .flags = htole32(O_RDWR)};
            memcpy(sl->in + IN_HDR, &a, sizeof(a));
            sl->opcode = PVFS_FUSE_RELEASE;
            sl->in_len = IN_HDR + sizeof(a);
            sl->out_len = OUT_HDR;
            put_header(sl, sl->in_len, sl->opcode, unique, sl->nodeid);
        } else {
            memcpy(sl->in + IN_HDR, sl->name, sl->name_len);
            sl->opcode = PVFS_FUSE_UNLINK;
            sl->in_len = IN_HDR + sl->name_len;
            sl->out_len = OUT_HDR;
            put_header(sl, sl->in_len, sl->opcode, unique, s->nodeid);
        }
        break;
    case PVFS_BENCH_READDIRPLUS: {
        struct pvfs_fuse_read_in a = {.fh = htole64(s->fh), .offset = htole64(sl->offset),
                                      .size = htole32(s->block)};
        memcpy(sl->in + IN_HDR, &a, sizeof(a));
        sl->opcode = PVFS_FUSE_READDIRPLUS;
        sl->in_len = IN_HDR + sizeof(a);
        sl->out_len = OUT_HDR + s->block;
        put_header(sl, sl->in_len, sl->opcode, unique, s->nodeid);
        break;
    }
    }
    /* Poison the reply header so a reply that was never written cannot pass. */
    memset(sl->out, 0xa5, OUT_HDR);
}

static int submit(struct loop *L, int si)
{
    struct slot *sl = &L->slots[si];
    uint64_t addr[2] = {sl->in_gpa, sl->out_gpa};
    uint32_t len[2] = {sl->in_len, sl->out_len};
    int head = pvfs_drv_add(L->q, addr, len, 1, sl->out_len ? 1 : 0, 0, 0);
    if (head < 0)
        return head;
    L->slot_of_head[head] = (int16_t)si;
    sl->busy = 1;
    L->res->requests++;
    return 0;
}

static int start_op(struct loop *L, int si, uint64_t now)
{
    struct slot *sl = &L->slots[si];
    if (L->issued >= L->s->max_ops || (L->deadline && now >= L->deadline && L->issued))
        return 0;
    L->issued++;
    sl->t0 = now;
    sl->phase = 0;
    sl->entries = 0;
    if (L->s->kind == PVFS_BENCH_READDIRPLUS)
        sl->offset = 0;
    build(L, sl);
    int rc = submit(L, si);
    return rc < 0 ? rc : 1;
}

static void kick(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0) {
        /* an eventfd write only fails on overflow: nothing to do */
    }
}

/* Reap what the hiprio queue used (FORGETs), freeing their descriptors. */
static void reap_hiprio(struct loop *L)
{
    uint32_t id, len;
    while (pvfs_drv_get_used(L->s->hiprio, &id, &len)) {
        if (id < 32768 && L->forget_buf_of_head[id] != 0xffff) {
            L->forget_free[L->forget_nfree++] = L->forget_buf_of_head[id];
            L->forget_buf_of_head[id] = 0xffff;
            L->forget_inflight--;
        }
    }
}

static int send_forget(struct loop *L, uint64_t nodeid)
{
    const struct pvfs_bench_spec *s = L->s;
    if (!s->hiprio)
        return 0;
    uint64_t deadline = now_ns() + s->stall_ns;
    while (pvfs_drv_num_free(s->hiprio) == 0 || L->forget_nfree == 0) {
        reap_hiprio(L);
        if (pvfs_drv_num_free(s->hiprio) && L->forget_nfree)
            break;
        if (now_ns() > deadline)
            return -ETIMEDOUT;
        if (backend_gone(s))
            return -EPIPE;
        if (!pvfs_drv_enable_cb(s->hiprio))
            pvfs_eventfd_wait(s->hiprio_call_fd, 10);
    }
    unsigned idx = L->forget_free[--L->forget_nfree];
    uint64_t gpa = s->forget_gpa + 64ull * idx;
    uint8_t *b = host(L, gpa);
    struct {
        struct pvfs_fuse_in_header h;
        struct pvfs_fuse_forget_in a;
    } req = {.h = {.len = htole32(sizeof(req)), .opcode = htole32(PVFS_FUSE_FORGET),
                   .unique = htole64(L->unique += 2), .nodeid = htole64(nodeid)},
             .a = {.nlookup = htole64(1)}};
    _Static_assert(sizeof(req) <= 64, "a FORGET buffer is 64 bytes");
    memcpy(b, &req, sizeof(req));
    uint64_t addr = gpa;
    uint32_t len = sizeof(req);
    int head = pvfs_drv_add(s->hiprio, &addr, &len, 1, 0, 0, 0);
    if (head < 0) {
        L->forget_free[L->forget_nfree++] = (uint16_t)idx;
        return -ENOSPC;
    }
    L->forget_buf_of_head[head] = (uint16_t)idx;
    L->forget_inflight++;
    if (pvfs_drv_kick_needed(s->hiprio))
        kick(s->hiprio_kick_fd);
    return 0;
}

static void record(struct loop *L, struct slot *sl, uint64_t now)
{
    uint64_t d = now - sl->t0;
    if (L->res->ops < L->s->max_ops)
        L->lat[L->res->ops] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
    L->res->ops++;
}

/* A reply arrived for slot si: check it, and either continue the op (1: a request was
 * submitted), finish it, or drop it on an error.  Returns <0 on a fatal condition. */
static int on_reply(struct loop *L, int si, uint32_t used_len, uint64_t now)
{
    const struct pvfs_bench_spec *s = L->s;
    struct pvfs_bench_result *res = L->res;
    struct slot *sl = &L->slots[si];
    struct pvfs_fuse_out_header oh;
    sl->busy = 0;
    memcpy(&oh, sl->out, sizeof(oh));
    uint32_t len = le32toh(oh.len);
    int32_t error = (int32_t)le32toh((uint32_t)oh.error);
    if (le64toh(oh.unique) != sl->unique || len < OUT_HDR || len > sl->out_len) {
        res->bad_replies++;
        return 0;
    }
    if (error) {
        if (!res->errors) {
            res->first_error = error;
            res->first_error_opcode = sl->opcode;
        }
        res->errors++;
        return 0;
    }
    const uint8_t *body = sl->out + OUT_HDR;
    uint32_t blen = len - OUT_HDR;
    switch (s->kind) {
    case PVFS_BENCH_READ: {
        if (blen != s->block) {
            res->bad_replies++;
            return 0;
        }
        int full = s->verify_every && (L->reads++ % s->verify_every) == 0;
        if (pvfs_bench_check(body, blen, sl->offset, s->tag, s->base, full))
            res->bad_data++;
        res->verified += full;
        res->bytes += blen;
        break;
    }
    case PVFS_BENCH_WRITE: {
        struct pvfs_fuse_write_out w;
        if (blen < sizeof(w)) {
            res->bad_replies++;
            return 0;
        }
        memcpy(&w, body, sizeof(w));
        if (le32toh(w.size) != s->block) {
            res->bad_replies++;
            return 0;
        }
        res->bytes += s->block;
        break;
    }
    case PVFS_BENCH_GETATTR:
        if (blen < sizeof(struct pvfs_fuse_attr_out)) {
            res->bad_replies++;
            return 0;
        }
        break;
    case PVFS_BENCH_LOOKUP:
        if (blen < ENTRY_OUT) {
            res->bad_replies++;
            return 0;
        }
        break;
    case PVFS_BENCH_CREATE_UNLINK:
        if (sl->phase == 0) {
            struct pvfs_fuse_entry_out e;
            struct pvfs_fuse_open_out o;
            if (blen < sizeof(e) + sizeof(o)) {
                res->bad_replies++;
                return 0;
            }
            memcpy(&e, body, sizeof(e));
            memcpy(&o, body + sizeof(e), sizeof(o));
            sl->nodeid = le64toh(e.nodeid);
            sl->fh = le64toh(o.fh);
        }
        if (sl->phase < 2) {
            sl->phase++;
            build(L, sl);
            int rc = submit(L, si);
            return rc < 0 ? rc : 1;
        }
        {
            int rc = send_forget(L, sl->nodeid);
            if (rc < 0)
                return rc;
        }
        break;
    case PVFS_BENCH_READDIRPLUS: {
        if (blen == 0)
            break; /* end of the listing: the op is done */
        uint64_t p = 0, last = sl->offset;
        uint32_t n = 0;
        struct pvfs_fuse_direntplus d;
        while (p + sizeof(d) <= blen) {
            memcpy(&d, body + p, sizeof(d));
            last = le64toh(d.dirent.off);
            p += (sizeof(d) + (uint64_t)le32toh(d.dirent.namelen) + 7) & ~(uint64_t)7;
            n++;
        }
        if (n == 0 || p != blen) {
            res->bad_replies++;
            return 0;
        }
        sl->entries += n;
        res->entries += n;
        sl->offset = last;
        build(L, sl);
        int rc = submit(L, si);
        return rc < 0 ? rc : 1;
    }
    }
    record(L, sl, now);
    return 0;
}

int pvfs_bench_run(struct pvfs_drv *q, int kick_fd, int call_fd, const struct pvfs_bench_spec *s,
                   struct pvfs_bench_result *res, uint32_t *latencies)
{
    if (!s->qd || s->qd > PVFS_BENCH_MAX_QD || !s->max_ops)
        return -EINVAL;
    if ((s->kind == PVFS_BENCH_READ || s->kind == PVFS_BENCH_WRITE) &&
        (!s->block || s->block % PVFS_BENCH_BLOCK || s->file_size < s->block))
        return -EINVAL;
    if (s->name_len > 40)
        return -EINVAL;
    struct loop *L = calloc(1, sizeof(*L));
    if (!L)
        return -ENOMEM;
    memset(res, 0, sizeof(*res));
    L->s = s;
    L->q = q;
    L->kick_fd = kick_fd;
    L->call_fd = call_fd;
    L->res = res;
    L->lat = latencies;
    L->rng = s->tag * 0x9E3779B97F4A7C15ull + 1;
    L->unique = 0x100000000ull;
    memset(L->slot_of_head, 0xff, sizeof(L->slot_of_head));
    memset(L->forget_buf_of_head, 0xff, sizeof(L->forget_buf_of_head));
    unsigned nforget = s->hiprio_size < PVFS_BENCH_MAX_FORGET ? s->hiprio_size : PVFS_BENCH_MAX_FORGET;
    for (unsigned i = 0; i < nforget; i++)
        L->forget_free[L->forget_nfree++] = (uint16_t)(nforget - 1 - i);
    uint64_t out_off = ((uint64_t)IN_HDR + sizeof(struct pvfs_fuse_write_in) +
                        (s->block > 4096 ? s->block : 4096) + 4095) & ~4095ull;
    for (unsigned i = 0; i < s->qd; i++) {
        struct slot *sl = &L->slots[i];
        sl->in_gpa = s->slot_gpa + i * s->slot_size;
        sl->out_gpa = sl->in_gpa + out_off;
        sl->in = host(L, sl->in_gpa);
        sl->out = host(L, sl->out_gpa);
        if (s->kind == PVFS_BENCH_WRITE)
            pvfs_bench_fill(sl->in + IN_HDR + sizeof(struct pvfs_fuse_write_in), s->block, 0,
                            s->tag, s->base);
        if (s->kind == PVFS_BENCH_CREATE_UNLINK)
            sl->name_len = (uint32_t)snprintf(sl->name, sizeof(sl->name), "%.*s%u",
                                              (int)s->name_len, s->name, i) + 1;
        else if (s->name) {
            memcpy(sl->name, s->name, s->name_len);
            sl->name[s->name_len] = 0;
            sl->name_len = s->name_len + 1;
        }
    }
    uint64_t start = now_ns();
    L->deadline = s->duration_ns ? start + s->duration_ns : 0;
    uint64_t last_progress = start, last_done = start;
    int rc = 0;
    unsigned busy = 0;
    for (unsigned i = 0; i < s->qd; i++) {
        rc = start_op(L, (int)i, now_ns());
        if (rc < 0)
            goto out;
        busy += rc;
    }
    if (pvfs_drv_kick_needed(q)) {
        kick(kick_fd);
        res->kicks++;
    }
    last_progress = now_ns();
    rc = 0;
    while (busy) {
        uint32_t id, len;
        int got = 0;
        while (pvfs_drv_get_used(q, &id, &len)) {
            got = 1;
            if (id >= 32768 || L->slot_of_head[id] < 0) {
                res->bad_replies++;
                continue;
            }
            int si = L->slot_of_head[id];
            L->slot_of_head[id] = -1;
            uint64_t now = now_ns();
            last_done = now;
            int r = on_reply(L, si, len, now);
            if (r < 0) {
                rc = r;
                goto out;
            }
            if (r == 0) {
                busy--;
                r = start_op(L, si, now);
                if (r < 0) {
                    rc = r;
                    goto out;
                }
                busy += r;
            }
        }
        if (s->hiprio && L->forget_inflight)
            reap_hiprio(L);
        if (got) {
            if (pvfs_drv_kick_needed(q)) {
                kick(kick_fd);
                res->kicks++;
            }
            last_progress = now_ns();
            continue;
        }
        if (pvfs_drv_enable_cb(q))
            continue;
        res->waits++;
        int w = pvfs_eventfd_wait(call_fd, 100);
        if (w < 0) {
            rc = w;
            goto out;
        }
        if (w == 0 && backend_gone(s)) {
            rc = -EPIPE;
            goto out;
        }
        if (w == 0 && now_ns() - last_progress > s->stall_ns) {
            rc = -ETIMEDOUT;
            goto out;
        }
    }
    /* Let the last FORGETs land so that the next run starts from a quiet queue. */
    uint64_t until = now_ns() + s->stall_ns;
    while (s->hiprio && L->forget_inflight && now_ns() < until && !backend_gone(s)) {
        reap_hiprio(L);
        if (L->forget_inflight && !pvfs_drv_enable_cb(s->hiprio))
            pvfs_eventfd_wait(s->hiprio_call_fd, 10);
    }
out:
    res->elapsed_ns = last_done - start;
    free(L);
    return rc;
}

/* ---- the host doing it itself -------------------------------------------------------- */

struct native {
    int fd;
    const struct pvfs_bench_spec *s;
    uint32_t *lat;
    uint64_t deadline;
    uint64_t next_off;    /* shared sequential cursor */
    uint64_t ops_started; /* shared op budget */
    uint64_t ops_done;
    uint64_t bytes, bad_data, verified, errors;
    int first_error;
    pthread_mutex_t lock;
};

struct native_thread {
    struct native *n;
    pthread_t tid;
    uint64_t rng;
};

static void *native_thread(void *arg)
{
    struct native_thread *t = arg;
    struct native *n = t->n;
    const struct pvfs_bench_spec *s = n->s;
    int write_ = s->kind == PVFS_BENCH_WRITE;
    uint8_t *buf = aligned_alloc(4096, s->block);
    if (!buf)
        return NULL;
    pvfs_bench_fill(buf, s->block, 0, s->tag, s->base);
    uint64_t blocks = (s->file_size - s->block) / PVFS_BENCH_BLOCK + 1;
    uint64_t reads = 0, mine = 0;
    for (;; mine++) {
        uint64_t t0 = now_ns();
        if (t0 >= n->deadline && mine)   /* at least one op each, however late we started */
            break;
        uint64_t k = __atomic_fetch_add(&n->ops_started, 1, __ATOMIC_RELAXED);
        if (k >= s->max_ops)
            break;
        uint64_t off;
        if (s->random)
            off = (xorshift(&t->rng) % blocks) * PVFS_BENCH_BLOCK;
        else {
            pthread_mutex_lock(&n->lock);
            if (n->next_off + s->block > s->file_size)
                n->next_off = 0;
            off = n->next_off;
            n->next_off += s->block;
            pthread_mutex_unlock(&n->lock);
        }
        ssize_t r;
        if (write_) {
            patch_tags(buf, s->block, off, s->tag);
            r = pwrite(n->fd, buf, s->block, (off_t)off);
        } else
            r = pread(n->fd, buf, s->block, (off_t)off);
        uint64_t t1 = now_ns();
        if (r != (ssize_t)s->block) {
            __atomic_fetch_add(&n->errors, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&n->first_error, r < 0 ? -errno : -EIO, __ATOMIC_RELAXED);
            continue;
        }
        if (!write_) {
            int full = s->verify_every && (reads++ % s->verify_every) == 0;
            if (pvfs_bench_check(buf, s->block, off, s->tag, s->base, full))
                __atomic_fetch_add(&n->bad_data, 1, __ATOMIC_RELAXED);
            if (full)
                __atomic_fetch_add(&n->verified, 1, __ATOMIC_RELAXED);
        }
        uint64_t i = __atomic_fetch_add(&n->ops_done, 1, __ATOMIC_RELAXED);
        uint64_t d = t1 - t0;
        n->lat[i] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
        __atomic_fetch_add(&n->bytes, s->block, __ATOMIC_RELAXED);
    }
    free(buf);
    return NULL;
}

int pvfs_bench_native(int fd, const struct pvfs_bench_spec *s, uint32_t threads,
                      struct pvfs_bench_result *res, uint32_t *latencies)
{
    if ((s->kind != PVFS_BENCH_READ && s->kind != PVFS_BENCH_WRITE) || !s->block ||
        s->block % PVFS_BENCH_BLOCK || s->file_size < s->block || !s->max_ops)
        return -EINVAL;
    unsigned nt = s->qd < threads ? s->qd : threads;
    if (nt < 1)
        nt = 1;
    if (nt > PVFS_BENCH_MAX_QD)
        nt = PVFS_BENCH_MAX_QD;
    struct native n = {.fd = fd, .s = s, .lat = latencies};
    pthread_mutex_init(&n.lock, NULL);
    struct native_thread t[PVFS_BENCH_MAX_QD];
    uint64_t start = now_ns();
    n.deadline = s->duration_ns ? start + s->duration_ns : UINT64_MAX;
    unsigned started = 0;
    for (unsigned i = 0; i < nt; i++) {
        t[i].n = &n;
        t[i].rng = (s->tag + i + 1) * 0x9E3779B97F4A7C15ull;
        if (pthread_create(&t[i].tid, NULL, native_thread, &t[i]) == 0)
            started++;
        else
            break;
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(t[i].tid, NULL);
    memset(res, 0, sizeof(*res));
    res->elapsed_ns = now_ns() - start;
    res->ops = n.ops_done;
    res->requests = n.ops_done;
    res->bytes = n.bytes;
    res->errors = n.errors;
    res->first_error = n.first_error;
    res->bad_data = n.bad_data;
    res->verified = n.verified;
    pthread_mutex_destroy(&n.lock);
    return started ? 0 : -EAGAIN;
}
