/* Statistics and ops-log records of the requests C serves (see opstats.h). */
#define _GNU_SOURCE
#include "opstats.h"
#include "fusewire.h"

#include <endian.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One serving thread's counters and ring; only that thread writes them (relaxed stores of
 * what it loaded, no read-modify-write), readers load them relaxed. */
struct slot {
    struct pvfs_opstats *st;
    struct slot *next;          /* the list of st's slots, append-only */
    int owned;                  /* atomic: a thread writes this slot */
    uint64_t dropped;           /* records this ring had no room for */
    uint64_t head __attribute__((aligned(64)));   /* producer: records written */
    uint64_t tail_seen;                            /* producer: tail as last loaded */
    uint64_t tail __attribute__((aligned(64)));   /* consumer: records taken */
    struct pvfs_oprec *ring;
    struct pvfs_opstats_op ops[PVFS_OPSTATS_OPCODES] __attribute__((aligned(64)));
};

struct pvfs_opstats {
    unsigned refs;              /* atomic: the owner, the hot path, each slot's thread */
    uint32_t ring_size;         /* 0 or a power of two */
    pthread_mutex_t m;          /* the slot list (claims and drains) */
    struct slot *slots;
    char names[PVFS_OPSTATS_OPCODES][32];   /* pvfs_opstats_set_opname */
};

#define BUMP(x, n) __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) + (n), \
                                    __ATOMIC_RELAXED)

struct pvfs_opstats *pvfs_opstats_new(uint32_t ring_records)
{
    struct pvfs_opstats *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    uint32_t size = 0;
    if (ring_records) {
        size = 1;
        while (size < ring_records && size < (1u << 24))
            size <<= 1;
    }
    st->refs = 1;
    st->ring_size = size;
    pthread_mutex_init(&st->m, NULL);
    return st;
}

void pvfs_opstats_ref(struct pvfs_opstats *st)
{
    __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED);
}

void pvfs_opstats_unref(struct pvfs_opstats *st)
{
    if (!st || __atomic_sub_fetch(&st->refs, 1, __ATOMIC_ACQ_REL))
        return;
    for (struct slot *s = st->slots, *next; s; s = next) {
        next = s->next;
        free(s->ring);
        free(s);
    }
    pthread_mutex_destroy(&st->m);
    free(st);
}

/* ---- the calling thread's slot ------------------------------------------------------- */

static pthread_key_t slot_key;
static pthread_once_t slot_key_once = PTHREAD_ONCE_INIT;
/* initial-exec: read without a __tls_get_addr call on every request */
static __thread struct slot *my_slot __attribute__((tls_model("initial-exec")));

/* The thread is done with its slot (it ends, or serves another pvfs_opstats): another
 * thread may claim it, counters and unread records included. */
static void give_back(void *p)
{
    struct slot *s = p;
    struct pvfs_opstats *st = s->st;
    __atomic_store_n(&s->owned, 0, __ATOMIC_RELEASE);
    pvfs_opstats_unref(st);
}

static void make_key(void)
{
    pthread_key_create(&slot_key, give_back);
}

static struct slot *claim(struct pvfs_opstats *st)
{
    pthread_once(&slot_key_once, make_key);
    if (my_slot) {
        give_back(my_slot);
        my_slot = NULL;
        pthread_setspecific(slot_key, NULL);
    }
    pthread_mutex_lock(&st->m);
    struct slot *s = st->slots, **end = &st->slots;
    for (; s; end = &s->next, s = s->next)
        if (!__atomic_load_n(&s->owned, __ATOMIC_ACQUIRE))
            break;
    if (!s) {
        void *mem = NULL;
        struct pvfs_oprec *ring = NULL;
        if (posix_memalign(&mem, 64, sizeof(*s)) == 0 &&
            (!st->ring_size || (ring = malloc(st->ring_size * sizeof(*ring))))) {
            s = memset(mem, 0, sizeof(*s));
            s->st = st;
            s->ring = ring;
            *end = s;     /* published under the mutex: drains walk the list holding it */
        } else {
            free(mem);
        }
    }
    if (s)
        __atomic_store_n(&s->owned, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&st->m);
    if (!s)
        return NULL;      /* out of memory: this thread's requests go unrecorded */
    pvfs_opstats_ref(st);
    my_slot = s;
    pthread_setspecific(slot_key, s);
    return s;
}

static inline struct slot *slot_for(struct pvfs_opstats *st)
{
    struct slot *s = my_slot;
    return __builtin_expect(s && s->st == st, 1) ? s : claim(st);
}

/* ---- recording ----------------------------------------------------------------------- */

/* stats.py bucket_of: exact below 32 µs, then 16 buckets per power of two. */
static inline uint32_t bucket_of(uint64_t us)
{
    if (us < 32)
        return (uint32_t)us;
    if (us >= (1ull << 31))
        return PVFS_OPSTATS_BUCKETS - 1;
    uint32_t shift = (uint32_t)(64 - __builtin_clzll(us)) - 5;
    return (shift << 4) + (uint32_t)(us >> shift);
}

static inline uint64_t le64_at(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

static inline uint32_t le32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

/* What opslog.py reads from the request's arguments: fh, offset and size where the
 * opcode carries them (and the request has the whole argument struct). */
static void from_args(struct pvfs_oprec *rec, const struct pvfs_opstats_req *r)
{
    const uint8_t *a = r->args;
    uint32_t n = r->have_args;
    switch (r->opcode) {
    case PVFS_FUSE_READ: case PVFS_FUSE_READDIR: case PVFS_FUSE_READDIRPLUS:
    case PVFS_FUSE_WRITE:
        if (n >= sizeof(struct pvfs_fuse_read_in)) {   /* fuse_write_in: the same size */
            rec->fh = le64_at(a);
            rec->offset = le64_at(a + 8);
            rec->size = le32_at(a + 16);
            rec->has = PVFS_OPREC_FH | PVFS_OPREC_OFFSET | PVFS_OPREC_SIZE;
        }
        break;
    case PVFS_FUSE_RELEASE: case PVFS_FUSE_RELEASEDIR: case PVFS_FUSE_FLUSH:
        if (n >= sizeof(struct pvfs_fuse_release_in)) {
            rec->fh = le64_at(a);
            rec->has = PVFS_OPREC_FH;
        }
        break;
    case PVFS_FUSE_FSYNC: case PVFS_FUSE_FSYNCDIR:
        if (n >= sizeof(struct pvfs_fuse_fsync_in)) {
            rec->fh = le64_at(a);
            rec->has = PVFS_OPREC_FH;
        }
        break;
    case PVFS_FUSE_GETATTR:
        if (n >= sizeof(struct pvfs_fuse_getattr_in) &&
            (le32_at(a) & PVFS_FUSE_GETATTR_FH)) {
            rec->fh = le64_at(a + 8);
            rec->has = PVFS_OPREC_FH;
        }
        break;
    case PVFS_FUSE_SETATTR:
        if (n >= 24) {      /* valid, padding, fh; size as far as the request has it */
            uint8_t b[32] = {0};
            memcpy(b, a, n < sizeof(b) ? n : sizeof(b));
            uint32_t valid = le32_at(b);
            if (valid & PVFS_FATTR_FH) {
                rec->fh = le64_at(b + 8);
                rec->has |= PVFS_OPREC_FH;
            }
            if (valid & PVFS_FATTR_SIZE) {
                rec->size = le64_at(b + 16);
                rec->has |= PVFS_OPREC_SIZE;
            }
        }
        break;
    }
}

/* What opslog.py reads from a successful reply: data moved, or the handle it opened. */
static void from_reply(struct pvfs_oprec *rec, uint32_t opcode, const uint8_t *body,
                       uint32_t body_len, uint32_t data_len)
{
    switch (opcode) {
    case PVFS_FUSE_READ: case PVFS_FUSE_READDIR: case PVFS_FUSE_READDIRPLUS:
        rec->bytes = (uint64_t)body_len + data_len;
        break;
    case PVFS_FUSE_WRITE:
        if (body_len >= sizeof(struct pvfs_fuse_write_out))
            rec->bytes = le32_at(body);
        break;
    case PVFS_FUSE_OPEN: case PVFS_FUSE_OPENDIR: case PVFS_FUSE_CREATE:
        if (body_len >= sizeof(struct pvfs_fuse_open_out)) {
            rec->fh = le64_at(body + body_len - sizeof(struct pvfs_fuse_open_out));
            rec->has |= PVFS_OPREC_FH;
        }
        break;
    }
}

void pvfs_opstats_served(struct pvfs_opstats *st, const struct pvfs_opstats_req *r, int error,
                         const void *body, uint32_t body_len, uint32_t data_len)
{
    if (r->opcode >= PVFS_OPSTATS_OPCODES)
        return;
    struct slot *s = slot_for(st);
    if (!s)
        return;
    uint64_t done = pvfs_opstats_clock();
    uint64_t us = done > r->t0_ns ? (done - r->t0_ns) / 1000 : 0;
    struct pvfs_oprec rec = {.bytes = 0, .has = 0};
    if (!error)
        from_reply(&rec, r->opcode, body, body_len, data_len);
    struct pvfs_opstats_op *o = &s->ops[r->opcode];
    BUMP(o->hist[bucket_of(us)], 1);
    BUMP(o->bytes, rec.bytes);
    if (error)
        BUMP(o->errors, 1);
    if (us > __atomic_load_n(&o->max_us, __ATOMIC_RELAXED))
        __atomic_store_n(&o->max_us, us, __ATOMIC_RELAXED);
    BUMP(o->count, 1);
    if (!st->ring_size)
        return;
    uint64_t head = s->head;
    if (head - s->tail_seen >= st->ring_size) {
        s->tail_seen = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
        if (head - s->tail_seen >= st->ring_size) {
            BUMP(s->dropped, 1);      /* full: the data path does not wait for the log */
            return;
        }
    }
    from_args(&rec, r);
    rec.done_ns = done;
    rec.unique = r->unique;
    rec.nodeid = r->nodeid;
    rec.opcode = r->opcode;
    rec.error = error;
    rec.us = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    s->ring[head & (st->ring_size - 1)] = rec;
    __atomic_store_n(&s->head, head + 1, __ATOMIC_RELEASE);
}

/* ---- reading ------------------------------------------------------------------------- */

void pvfs_opstats_read(struct pvfs_opstats *st, uint32_t opcode, struct pvfs_opstats_op *out)
{
    memset(out, 0, sizeof(*out));
    if (opcode >= PVFS_OPSTATS_OPCODES)
        return;
    pthread_mutex_lock(&st->m);
    for (struct slot *s = st->slots; s; s = s->next) {
        const struct pvfs_opstats_op *o = &s->ops[opcode];
        out->count += __atomic_load_n(&o->count, __ATOMIC_RELAXED);
        if (!out->count)
            continue;
        out->errors += __atomic_load_n(&o->errors, __ATOMIC_RELAXED);
        out->bytes += __atomic_load_n(&o->bytes, __ATOMIC_RELAXED);
        uint64_t m = __atomic_load_n(&o->max_us, __ATOMIC_RELAXED);
        if (m > out->max_us)
            out->max_us = m;
        for (int b = 0; b < PVFS_OPSTATS_BUCKETS; b++)
            out->hist[b] += __atomic_load_n(&o->hist[b], __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&st->m);
}

/* The rings a drain merges at once (a thread each: a few per queue). */
#define DRAIN_RINGS 64

void pvfs_opstats_set_opname(struct pvfs_opstats *st, uint32_t opcode, const char *name)
{
    if (opcode < PVFS_OPSTATS_OPCODES) {
        strncpy(st->names[opcode], name, sizeof(st->names[opcode]) - 1);
        st->names[opcode][sizeof(st->names[opcode]) - 1] = 0;
    }
}

static char *put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* opslog.json_line, for one record. */
static char *put_line(char *p, const struct pvfs_opstats *st, const struct pvfs_oprec *r,
                      int64_t wall_offset_ns)
{
    int64_t wall = (int64_t)r->done_ns + wall_offset_ns;
    uint64_t w = wall < 0 ? 0 : (uint64_t)wall, usec = w % 1000000000u / 1000;
    p = put_u64(put_str(p, "{\"time\": "), w / 1000000000u);
    *p++ = '.';
    for (uint64_t d = 100000; d; d /= 10)
        *p++ = (char)('0' + usec / d % 10);
    p = put_str(put_str(put_str(p, ", \"opcode\": \""), st->names[r->opcode]), "\", \"unique\": ");
    p = put_u64(p, r->unique);
    p = put_u64(put_str(p, ", \"nodeid\": "), r->nodeid);
    if (r->has & PVFS_OPREC_FH)
        p = put_u64(put_str(p, ", \"fh\": "), r->fh);
    if (r->has & PVFS_OPREC_OFFSET)
        p = put_u64(put_str(p, ", \"offset\": "), r->offset);
    if (r->has & PVFS_OPREC_SIZE)
        p = put_u64(put_str(p, ", \"size\": "), r->size);
    p = put_u64(put_str(p, ", \"bytes\": "), r->bytes);
    p = put_str(p, ", \"errno\": ");
    if (r->error < 0) {
        *p++ = '-';
        p = put_u64(p, (uint64_t)-(int64_t)r->error);
    } else {
        p = put_u64(p, (uint64_t)r->error);
    }
    p = put_u64(put_str(p, ", \"us\": "), r->us);
    return put_str(p, "}\n");
}

uint64_t pvfs_opstats_drain(struct pvfs_opstats *st, char *buf, uint64_t cap,
                            int64_t wall_offset_ns, uint32_t *records)
{
    uint64_t used = 0;
    uint32_t got = 0;
    *records = 0;
    if (!st->ring_size)
        return 0;
    const uint64_t mask = st->ring_size - 1;
    struct slot *ring[DRAIN_RINGS];
    uint64_t tail[DRAIN_RINGS], head[DRAIN_RINGS];
    int n = 0;
    pthread_mutex_lock(&st->m);
    for (struct slot *s = st->slots; s && n < DRAIN_RINGS; s = s->next) {
        ring[n] = s;
        tail[n] = s->tail;
        head[n] = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
        if (head[n] != tail[n])
            n++;
    }
    while (cap - used >= PVFS_OPLINE_MAX) {
        int k = -1;     /* the ring whose next record is the oldest */
        for (int i = 0; i < n; i++)
            if (tail[i] != head[i] &&
                (k < 0 || ring[i]->ring[tail[i] & mask].done_ns <
                          ring[k]->ring[tail[k] & mask].done_ns))
                k = i;
        if (k < 0)
            break;
        const struct pvfs_oprec *r = &ring[k]->ring[tail[k]++ & mask];
        used = (uint64_t)(put_line(buf + used, st, r, wall_offset_ns) - buf);
        got++;
    }
    for (int i = 0; i < n; i++)
        __atomic_store_n(&ring[i]->tail, tail[i], __ATOMIC_RELEASE);
    pthread_mutex_unlock(&st->m);
    *records = got;
    return used;
}

uint64_t pvfs_opstats_dropped(struct pvfs_opstats *st)
{
    uint64_t n = 0;
    pthread_mutex_lock(&st->m);
    for (struct slot *s = st->slots; s; s = s->next)
        n += __atomic_load_n(&s->dropped, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&st->m);
    return n;
}
