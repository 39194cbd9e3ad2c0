/* The hot path: READ, WRITE, GETATTR and LOOKUP served in C, READDIRPLUS records packed in C
 * (see hotpath.h). */
#define _GNU_SOURCE
#include "hotpath.h"
#include "fsops.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the handle table --------------------------------------------------------------- */

struct pvfs_fh {
    uint64_t fh;
    int fd;
    int append;        /* O_APPEND on the fd: the file position decides, Python's business */
    unsigned refs;     /* the owner's + one per C user; atomic */
    /* Inodes only (pvfs_fhtab_add_inode): the file's identity, indexed in kslots, and the
     * lookups C LOOKUPs counted since the owner last settled (under the table lock). */
    int keyed;
    uint64_t dev, ino, mnt_id;
    uint64_t c_lookups;
    /* Inodes a C LOOKUP opened (the owner has not seen them yet: pvfs_fhtab_adopt) hold
     * their reference in the table; adopted = 1 once the owner holds it. */
    int adopted;
    uint32_t mode;
    /* Large WRITEs through this handle, one at a time: two threads writing one file would
     * serialise on its inode lock anyway, the second spinning on it (rwsem_spin_on_owner,
     * see "seq write 1M QD16" in BENCHMARKS.md); here it sleeps instead. */
    pthread_mutex_t wlock;
};

#define EMPTY ((struct pvfs_fh *)0)
#define GONE ((struct pvfs_fh *)1)   /* a removed slot (open addressing) */

struct pvfs_fhtab {
    pthread_mutex_t lock;
    struct pvfs_fh **slots;
    unsigned cap;      /* power of two */
    unsigned count;    /* live entries */
    unsigned used;     /* live + GONE slots */
    unsigned refs;     /* atomic */
    /* The same entries by (dev, ino, mnt_id), for the keyed ones (allocated on first use). */
    struct pvfs_fh **kslots;
    unsigned kcap, kcount, kused;
    uint64_t next_id;  /* atomic: the next nodeid (pvfs_fhtab_new_id) */
    unsigned unadopted;
};

static unsigned slot_of(uint64_t fh, unsigned cap)
{
    fh *= 0x9E3779B97F4A7C15ull;
    return (unsigned)(fh >> 32) & (cap - 1);
}

struct pvfs_fhtab *pvfs_fhtab_new(void)
{
    struct pvfs_fhtab *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = 64;
    t->slots = calloc(t->cap, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    t->refs = 1;
    t->next_id = 2;    /* 1 is FUSE_ROOT_ID */
    return t;
}

static void fh_put(struct pvfs_fh *e)
{
    if (__atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        close(e->fd);
        pthread_mutex_destroy(&e->wlock);
        free(e);
    }
}

void pvfs_fhtab_unref(struct pvfs_fhtab *t)
{
    if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL))
        return;
    /* Entries still here belong to their owners (pvfs_fh_close frees them). */
    free(t->slots);
    free(t->kslots);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static unsigned kslot_of(uint64_t dev, uint64_t ino, uint64_t mnt_id, unsigned cap)
{
    return slot_of(ino ^ (dev * 0xff51afd7ed558ccdull) ^ (mnt_id << 40), cap);
}

/* Re-place the live entries of an index (by fh, or by_key) in a new array of cap slots.
 * Called with the lock held. */
static int regrow(struct pvfs_fh ***slots_p, unsigned *cap_p, unsigned *used_p, unsigned count,
                  unsigned cap, int by_key)
{
    struct pvfs_fh **old = *slots_p, **slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (unsigned i = 0; old && i < *cap_p; i++) {
        struct pvfs_fh *e = old[i];
        if (e == EMPTY || e == GONE)
            continue;
        unsigned j = by_key ? kslot_of(e->dev, e->ino, e->mnt_id, cap) : slot_of(e->fh, cap);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = e;
    }
    free(old);
    *slots_p = slots;
    *cap_p = cap;
    *used_p = count;
    return 0;
}

/* Rehash into a table of cap slots.  Called with the lock held. */
static int rehash(struct pvfs_fhtab *t, unsigned cap)
{
    return regrow(&t->slots, &t->cap, &t->used, t->count, cap, 0);
}

/* The slot holding fh, or -1.  Called with the lock held. */
static int find(const struct pvfs_fhtab *t, uint64_t fh)
{
    unsigned j = slot_of(fh, t->cap);
    for (unsigned n = 0; n < t->cap; n++, j = (j + 1) & (t->cap - 1)) {
        struct pvfs_fh *e = t->slots[j];
        if (e == EMPTY)
            return -1;
        if (e != GONE && e->fh == fh)
            return (int)j;
    }
    return -1;
}

/* ---- the key index (inodes by identity) ---- */

/* The kslot holding the key, or -1.  Called with the lock held. */
static int kfind(const struct pvfs_fhtab *t, uint64_t dev, uint64_t ino, uint64_t mnt_id)
{
    if (!t->kslots)
        return -1;
    unsigned j = kslot_of(dev, ino, mnt_id, t->kcap);
    for (unsigned n = 0; n < t->kcap; n++, j = (j + 1) & (t->kcap - 1)) {
        struct pvfs_fh *e = t->kslots[j];
        if (e == EMPTY)
            return -1;
        if (e != GONE && e->ino == ino && e->dev == dev && e->mnt_id == mnt_id)
            return (int)j;
    }
    return -1;
}

/* Make room for one more key.  Called with the lock held. */
static int kreserve(struct pvfs_fhtab *t)
{
    if (t->kslots && (t->kused + 1) * 2 <= t->kcap)
        return 0;
    unsigned cap = !t->kslots ? 64 : t->kcount * 4 > t->kcap ? t->kcap * 2 : t->kcap;
    return regrow(&t->kslots, &t->kcap, &t->kused, t->kcount, cap, 1);
}

/* Put e in the first free slot of an index (by fh, or by_key).  Called with the lock held
 * and room made. */
static void place(struct pvfs_fh **slots, unsigned cap, unsigned *used, unsigned *count,
                  struct pvfs_fh *e, int by_key)
{
    unsigned j = by_key ? kslot_of(e->dev, e->ino, e->mnt_id, cap) : slot_of(e->fh, cap);
    while (slots[j] != EMPTY && slots[j] != GONE)
        j = (j + 1) & (cap - 1);
    if (slots[j] == EMPTY)
        (*used)++;
    slots[j] = e;
    (*count)++;
}

/* e in both indexes (the key one if it has a key). */
static void insert(struct pvfs_fhtab *t, struct pvfs_fh *e)
{
    if (e->keyed)
        place(t->kslots, t->kcap, &t->kused, &t->kcount, e, 1);
    place(t->slots, t->cap, &t->used, &t->count, e, 0);
}

/* Drop the entry in slot j from both indexes.  Called with the lock held. */
static void drop(struct pvfs_fhtab *t, int j)
{
    struct pvfs_fh *e = t->slots[j];
    t->slots[j] = GONE;
    t->count--;
    if (e->keyed) {
        int k = kfind(t, e->dev, e->ino, e->mnt_id);
        if (k >= 0 && t->kslots[k] == e) {
            t->kslots[k] = GONE;
            t->kcount--;
        }
    }
}

/* A new entry owning fd (one reference: its owner's), adopted; NULL if memory is short. */
static struct pvfs_fh *entry_new(uint64_t fh, int fd, const uint64_t *key, uint32_t mode)
{
    struct pvfs_fh *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->fh = fh;
    e->fd = fd;
    e->refs = 1;
    e->adopted = 1;
    e->mode = mode;
    pthread_mutex_init(&e->wlock, NULL);
    if (key) {
        e->keyed = 1;
        e->dev = key[0];
        e->ino = key[1];
        e->mnt_id = key[2];
    }
    return e;
}

/* An entry that never made it into the table (its fd stays the caller's). */
static void entry_free(struct pvfs_fh *e)
{
    if (e) {
        pthread_mutex_destroy(&e->wlock);
        free(e);
    }
}

/* Room for one more entry (keyed: in the key index too).  Called with the lock held. */
static int reserve(struct pvfs_fhtab *t, int keyed)
{
    if (keyed && kreserve(t) < 0)
        return -ENOMEM;
    if ((t->used + 1) * 2 <= t->cap)
        return 0;
    return rehash(t, t->count * 4 > t->cap ? t->cap * 2 : t->cap);
}

static struct pvfs_fh *add(struct pvfs_fhtab *t, uint64_t fh, int fd, const uint64_t *key,
                           uint32_t mode)
{
    if (fh == 0 || fh == UINT64_MAX || fd < 0)
        return NULL;
    int fl = fcntl(fd, F_GETFL);
    struct pvfs_fh *e = entry_new(fh, fd, key, mode);
    if (!e)
        return NULL;
    e->append = fl < 0 || (fl & O_APPEND);
    pthread_mutex_lock(&t->lock);
    if (find(t, fh) >= 0 || (key && kfind(t, key[0], key[1], key[2]) >= 0) ||
        reserve(t, key != NULL) < 0) {
        pthread_mutex_unlock(&t->lock);
        entry_free(e);
        return NULL;
    }
    insert(t, e);
    pthread_mutex_unlock(&t->lock);
    return e;
}

struct pvfs_fh *pvfs_fhtab_add(struct pvfs_fhtab *t, uint64_t fh, int fd)
{
    return add(t, fh, fd, NULL, 0);
}

struct pvfs_fh *pvfs_fhtab_add_inode(struct pvfs_fhtab *t, uint64_t nodeid, int fd,
                                     uint64_t dev, uint64_t ino, uint64_t mnt_id, uint32_t mode)
{
    const uint64_t key[3] = {dev, ino, mnt_id};
    return add(t, nodeid, fd, key, mode);
}

uint64_t pvfs_fhtab_new_id(struct pvfs_fhtab *t)
{
    return __atomic_fetch_add(&t->next_id, 1, __ATOMIC_RELAXED);
}

struct pvfs_fh *pvfs_fhtab_adopt(struct pvfs_fhtab *t, uint64_t nodeid, const uint64_t *key,
                                 struct pvfs_inode_info *info)
{
    struct pvfs_fh *e = NULL;
    pthread_mutex_lock(&t->lock);
    int j = key ? kfind(t, key[0], key[1], key[2]) : find(t, nodeid);
    struct pvfs_fh *c = j < 0 ? NULL : key ? t->kslots[j] : t->slots[j];
    if (c && c->keyed && !c->adopted) {
        c->adopted = 1;
        t->unadopted--;
        info->nodeid = c->fh;
        info->fd = c->fd;
        info->dev = c->dev;
        info->ino = c->ino;
        info->mnt_id = c->mnt_id;
        info->mode = c->mode;
        e = c;
    }
    pthread_mutex_unlock(&t->lock);
    return e;
}

unsigned pvfs_fhtab_unadopted(struct pvfs_fhtab *t)
{
    pthread_mutex_lock(&t->lock);
    unsigned n = t->unadopted;
    pthread_mutex_unlock(&t->lock);
    return n;
}

unsigned pvfs_fhtab_purge_unadopted(struct pvfs_fhtab *t)
{
    unsigned n = 0;
    pthread_mutex_lock(&t->lock);
    for (unsigned i = 0; i < t->cap; i++) {
        struct pvfs_fh *e = t->slots[i];
        if (e == EMPTY || e == GONE || !e->keyed || e->adopted)
            continue;
        drop(t, (int)i);
        t->unadopted--;
        fh_put(e);    /* the table's reference: no C user can find it any more */
        n++;
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* A file's identity as the key index has it. */
static void key_of(const struct statx *sx, uint64_t key[3])
{
    key[0] = makedev(sx->stx_dev_major, sx->stx_dev_minor);
    key[1] = sx->stx_ino;
    key[2] = sx->stx_mnt_id;
}

/* One more lookup of the registered inode with this identity: its nodeid (0: none).
 * Called with the lock held. */
static uint64_t count_held(struct pvfs_fhtab *t, const uint64_t key[3])
{
    int k = kfind(t, key[0], key[1], key[2]);
    if (k < 0)
        return 0;
    t->kslots[k]->c_lookups++;
    return t->kslots[k]->fh;
}

static uint64_t count_lookup(struct pvfs_fhtab *t, const uint64_t key[3])
{
    pthread_mutex_lock(&t->lock);
    uint64_t nodeid = count_held(t, key);
    pthread_mutex_unlock(&t->lock);
    return nodeid;
}

/* Count one lookup of the file O_PATH fd refers to (identity from sx), registering it as a
 * new, not yet adopted inode if the table does not hold it: its nodeid (fd now the table's),
 * or, when the identity is held already, that nodeid (fd closed).  0 if memory is short
 * (fd closed). */
static uint64_t count_or_register(struct pvfs_fhtab *t, int fd, const struct statx *sx)
{
    uint64_t key[3];
    key_of(sx, key);
    struct pvfs_fh *e = entry_new(0, fd, key, sx->stx_mode);
    pthread_mutex_lock(&t->lock);
    uint64_t nodeid = count_held(t, key);
    if (!nodeid && e && reserve(t, 1) == 0) {
        e->fh = nodeid = __atomic_fetch_add(&t->next_id, 1, __ATOMIC_RELAXED);
        e->adopted = 0;
        e->c_lookups = 1;
        insert(t, e);
        t->unadopted++;
        e = NULL;    /* the table's now, fd with it */
        fd = -1;
    }
    pthread_mutex_unlock(&t->lock);
    entry_free(e);
    if (fd >= 0)
        close(fd);
    return nodeid;
}

void pvfs_fhtab_remove(struct pvfs_fhtab *t, uint64_t fh)
{
    struct pvfs_fh *mine = NULL;
    pthread_mutex_lock(&t->lock);
    int j = find(t, fh);
    if (j >= 0) {
        struct pvfs_fh *e = t->slots[j];
        drop(t, j);
        if (e->keyed && !e->adopted) {   /* never adopted: the table's reference goes */
            t->unadopted--;
            mine = e;
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (mine)
        fh_put(mine);
}

uint64_t pvfs_fh_settle(struct pvfs_fhtab *t, struct pvfs_fh *e, uint64_t held, uint64_t n)
{
    pthread_mutex_lock(&t->lock);
    uint64_t total = held + e->c_lookups;
    e->c_lookups = 0;
    total = total > n ? total - n : 0;
    if (total == 0 && n) {
        int j = find(t, e->fh);
        if (j >= 0 && t->slots[j] == e)
            drop(t, j);
    }
    pthread_mutex_unlock(&t->lock);
    return total;
}

uint64_t pvfs_fh_pending(struct pvfs_fhtab *t, struct pvfs_fh *e)
{
    pthread_mutex_lock(&t->lock);
    uint64_t n = e->c_lookups;
    pthread_mutex_unlock(&t->lock);
    return n;
}

void pvfs_fh_close(struct pvfs_fh *e)
{
    if (e)
        fh_put(e);
}

unsigned pvfs_fhtab_count(struct pvfs_fhtab *t)
{
    pthread_mutex_lock(&t->lock);
    unsigned n = t->count;
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* Borrow fh's (or nodeid's) entry for one C request (NULL: not in the table). */
static struct pvfs_fh *fh_get(struct pvfs_fhtab *t, uint64_t fh)
{
    struct pvfs_fh *e = NULL;
    pthread_mutex_lock(&t->lock);
    int j = find(t, fh);
    if (j >= 0) {
        e = t->slots[j];
        __atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&t->lock);
    return e;
}

/* ---- serving ------------------------------------------------------------------------- */

/* FUSE wire format (little-endian; the same layouts as fuse/abi.py). */
enum { FUSE_LOOKUP = 1, FUSE_GETATTR = 3, FUSE_READ = 15, FUSE_WRITE = 16 };
#define FUSE_WRITE_KILL_SUIDGID (1u << 2)
#define IN_HDR 40
#define OUT_HDR 16
#define RW_IN 40     /* fuse_read_in / fuse_write_in (7.9+) */

struct pvfs_hot {
    struct pvfs_fhtab *t;
    struct pvfs_fhtab *inodes;  /* nodeid -> O_PATH fd, for GETATTR/LOOKUP (NULL: none) */
    uint32_t blksize;           /* what every attribute says (the guest page size) */
    uint64_t attr_valid;        /* seconds of the attribute timeout */
    uint32_t attr_valid_nsec;
    int lookup_new;      /* atomic: LOOKUP in C may open and register new inodes */
    unsigned ops;        /* atomic */
    uint64_t inline_ops; /* atomic: bit n set: opcode n is served on the queue thread */
    uint64_t session;    /* atomic: on << 63 | minor << 32 | max_write */
    uint32_t max_read;   /* atomic, stored before session: max_pages x guest page size */
    uint64_t stat[6];    /* atomic */
};

struct pvfs_hot *pvfs_hot_new(struct pvfs_fhtab *t)
{
    struct pvfs_hot *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    h->t = t;
    return h;
}

void pvfs_hot_set_getattr(struct pvfs_hot *h, struct pvfs_fhtab *inodes, uint32_t blksize,
                          uint64_t valid_sec, uint32_t valid_nsec)
{
    if (h->inodes || !inodes)
        return;
    __atomic_add_fetch(&inodes->refs, 1, __ATOMIC_RELAXED);
    h->blksize = blksize;
    h->attr_valid = valid_sec;
    h->attr_valid_nsec = valid_nsec;
    h->inodes = inodes;
}

void pvfs_hot_set_lookup_new(struct pvfs_hot *h, int on)
{
    __atomic_store_n(&h->lookup_new, on ? 1 : 0, __ATOMIC_RELAXED);
}

void pvfs_hot_free(struct pvfs_hot *h)
{
    if (h) {
        if (h->inodes)
            pvfs_fhtab_unref(h->inodes);
        pvfs_fhtab_unref(h->t);
        free(h);
    }
}

void pvfs_hot_set_ops(struct pvfs_hot *h, unsigned ops) { __atomic_store_n(&h->ops, ops, __ATOMIC_RELEASE); }
unsigned pvfs_hot_get_ops(struct pvfs_hot *h) { return __atomic_load_n(&h->ops, __ATOMIC_ACQUIRE); }
void pvfs_hot_set_inline(struct pvfs_hot *h, uint64_t opcodes) { __atomic_store_n(&h->inline_ops, opcodes, __ATOMIC_RELEASE); }

void pvfs_hot_set_session(struct pvfs_hot *h, int on, uint32_t minor, uint32_t max_write,
                          uint32_t max_read)
{
    /* Before the session word: whoever sees the session (acquire) sees its max_read. */
    __atomic_store_n(&h->max_read, on ? max_read : 0, __ATOMIC_RELAXED);
    /* One word, so a reader sees one session or the other, never a mix. */
    uint64_t v = on ? (1ull << 63) | ((uint64_t)(minor & 0x7fffffff) << 32) | max_write : 0;
    __atomic_store_n(&h->session, v, __ATOMIC_RELEASE);
}

uint64_t pvfs_hot_stat(struct pvfs_hot *h, int which)
{
    if (which < 0 || which > 5)
        return 0;
    return __atomic_load_n(&h->stat[which], __ATOMIC_RELAXED);
}

static void count(struct pvfs_hot *h, int which, uint64_t n)
{
    __atomic_fetch_add(&h->stat[which], n, __ATOMIC_RELAXED);
}

static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

/* Reply with a header (and body) and complete the request; with defer, the interrupt
 * waits for pvfs_vq_flush_signal (the serving loop batches them). */
static void reply(struct pvfs_req *req, uint64_t unique, int error, const void *body, uint32_t body_len,
                  uint32_t data_len, int defer)
{
    uint8_t out[OUT_HDR + 8];
    uint32_t len = OUT_HDR + (error ? 0 : body_len + data_len);
    uint32_t l = htole32(len);
    int32_t e = (int32_t)htole32((uint32_t)-error);
    uint64_t u = htole64(unique);
    memcpy(out, &l, 4);
    memcpy(out + 4, &e, 4);
    memcpy(out + 8, &u, 8);
    uint32_t n = OUT_HDR;
    if (!error && body_len) {
        memcpy(out + OUT_HDR, body, body_len);
        n += body_len;
    }
    /* The reply area was checked to be large enough and hole-free before any I/O. */
    if (pvfs_req_write_out(req, 0, out, n) < 0)
        len = 0;
    if (defer)
        pvfs_req_complete_deferred(req, len);
    else
        pvfs_req_complete(req, len);
}

enum { TO_POOL = 0, SERVED = 1, INLINE = 2 };

/* Where a request Python serves should go: the queue thread itself for the opcodes in
 * inline_ops (quick ones: a hand-off to a worker costs more than they do), else the pool. */
static int route(struct pvfs_hot *h, uint32_t opcode)
{
    uint64_t inl = __atomic_load_n(&h->inline_ops, __ATOMIC_RELAXED);
    return opcode < 64 && (inl >> opcode) & 1 ? INLINE : TO_POOL;
}

/* A small READ whose pages are all cached the leader serves itself (preadv2 RWF_NOWAIT),
 * still leading: a 4 KiB copy costs less than waking a thread.  Everything else is served
 * after handing the ring over (see pvfs_hot_run). */
#define HANDOFF_BYTES (32u << 10)

struct handoff {
    struct pvfs_hotq *q;
    struct pvfs_vq *vq;
    int leading;
};

static void unlead(struct pvfs_hotq *q, int wake_one);
static uint64_t busy_begin(struct pvfs_hotq *q);
static int busy_end(struct pvfs_hotq *q, uint64_t gen);

/* Before I/O that may block (a write, a large read, a read not in the page cache): give
 * up the ring and wake a follower, so that the queue stays watched however long it takes
 * (a host file on a hung NFS server must not stall GETATTRs behind it). */
static void before_io(struct handoff *ho)
{
    if (ho && ho->leading) {
        pvfs_vq_flush_signal(ho->vq);   /* what we completed must not wait for this I/O */
        unlead(ho->q, 1);
        ho->leading = 0;
    }
}

static void put32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }

/* A host dev_t in the 32-bit "new" encoding the guest decodes (server/packing.py encode_dev). */
static uint32_t encode_dev(dev_t dev)
{
    uint32_t ma = major(dev), mi = minor(dev);
    return (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & ~0xffu) << 12);
}

/* struct fuse_attr (88 bytes) as AttrPacker builds it: blksize is the guest page size,
 * flags 0 (the C GETATTR/LOOKUP are only switched on without DAX or id translation). */
static void pack_attr(uint8_t *at, const struct stat *st, uint32_t blksize)
{
    memset(at, 0, 88);
    put64(at, st->st_ino);
    put64(at + 8, (uint64_t)st->st_size);
    put64(at + 16, (uint64_t)st->st_blocks);
    put64(at + 24, (uint64_t)st->st_atim.tv_sec);
    put64(at + 32, (uint64_t)st->st_mtim.tv_sec);
    put64(at + 40, (uint64_t)st->st_ctim.tv_sec);
    put32(at + 48, (uint32_t)st->st_atim.tv_nsec);
    put32(at + 52, (uint32_t)st->st_mtim.tv_nsec);
    put32(at + 56, (uint32_t)st->st_ctim.tv_nsec);
    put32(at + 60, st->st_mode);
    put32(at + 64, (uint32_t)st->st_nlink);
    put32(at + 68, st->st_uid);
    put32(at + 72, st->st_gid);
    put32(at + 76, encode_dev(st->st_rdev));
    put32(at + 80, blksize);
}

/* The checks every C-served metadata request passes: a session of 7.9+, a well-formed
 * header with no extensions, room for the reply.  Returns the header's len, or 0. */
static uint32_t meta_request_ok(struct pvfs_hot *h, struct pvfs_req *req, const uint8_t *a,
                                uint32_t have, uint32_t reply_len)
{
    uint32_t len = get32(a);
    uint16_t extlen;
    memcpy(&extlen, a + 36, 2);
    uint64_t session = __atomic_load_n(&h->session, __ATOMIC_ACQUIRE);
    uint32_t minor = (uint32_t)(session >> 32) & 0x7fffffff;
    if (!(session >> 63) || minor < 9 || len < IN_HDR || len > req->in_len || have < IN_HDR ||
        len - IN_HDR > PVFS_FUSE_ARGS_MAX || extlen || req->out_len < OUT_HDR + reply_len)
        return 0;
    return len;
}

/* GETATTR of an inode the passthrough registered: fstat its O_PATH fd and answer with
 * fuse_attr_out exactly as the Python server would (server/names.py, server/packing.py). */
static int serve_getattr(struct pvfs_hot *h, struct pvfs_req *req, const uint8_t *a, uint32_t have)
{
    if (!meta_request_ok(h, req, a, have, 104))
        return TO_POOL;
    struct pvfs_fh *e = fh_get(h->inodes, get64(a + 16));
    if (!e)
        return TO_POOL;                                   /* unknown nodeid: Python says EBADF */
    struct stat st;
    int rc = fstat(e->fd, &st);
    fh_put(e);
    if (rc < 0)
        return TO_POOL;                                   /* Python reports the error */
    uint8_t b[104] = {0};
    put64(b, h->attr_valid);
    put32(b + 8, h->attr_valid_nsec);
    pack_attr(b + 16, &st, h->blksize);
    if (pvfs_req_write_out(req, OUT_HDR, b, sizeof(b)) < 0)
        return TO_POOL;                                   /* a hole: Python explains */
    count(h, PVFS_HOT_STAT_GETATTRS, 1);
    reply(req, get64(a + 8), 0, NULL, 0, sizeof(b), 0);
    return SERVED;
}

/* glibc takes struct statx from <linux/stat.h> (5.8+ headers have stx_mnt_id). */
#define STX_MNT_ID(x) ((x)->stx_mnt_id)

/* struct fuse_entry_out (128 bytes) for nodeid with the attributes of a statx. */
static void pack_entry(uint8_t *b, uint64_t nodeid, const struct statx *sx, uint32_t blksize,
                       uint64_t valid_sec, uint32_t valid_nsec)
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
    memset(b, 0, 40);
    put64(b, nodeid);                                     /* generation stays 0 */
    put64(b + 16, valid_sec);                             /* entry_valid */
    put64(b + 24, valid_sec);                             /* attr_valid */
    put32(b + 32, valid_nsec);
    put32(b + 36, valid_nsec);
    pack_attr(b + 40, &st, blksize);
}

#define STATX_WANT (STATX_BASIC_STATS | STATX_MNT_ID)

/* statx a name under a parent O_PATH fd as a LOOKUP does (no symlink followed, no automount);
 * 0, or -1 with errno (EXDEV: on another mount than the parent -- a submount, Python's). */
static int stat_child(int parent_fd, const char *name, uint64_t parent_mnt, struct statx *sx)
{
    if (statx(parent_fd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_WANT, sx) < 0)
        return -1;
    if ((sx->stx_mask & STATX_WANT) != STATX_WANT || STX_MNT_ID(sx) != parent_mnt) {
        errno = EXDEV;
        return -1;
    }
    return 0;
}

/* What a LOOKUP of name under the parent (its O_PATH fd, on mount parent_mnt) gives: the
 * nodeid, one lookup counted, and in sx the attributes the reply carries.  statx of the
 * name finds an inode the table holds; any other file is opened as
 * PassthroughFs._lookup_child opens it -- openat2(O_PATH | O_NOFOLLOW, RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) -- and registered, when new_ok.  0 with errno when the Python path
 * should answer instead (EXDEV: another mount, a submount; EAGAIN: new and not new_ok). */
static uint64_t lookup_child(struct pvfs_fhtab *t, int parent_fd, uint64_t parent_mnt,
                             const char *name, int new_ok, struct statx *sx)
{
    if (stat_child(parent_fd, name, parent_mnt, sx) < 0)
        return 0;
    uint64_t key[3];
    key_of(sx, key);
    uint64_t nodeid = count_lookup(t, key);
    if (nodeid)
        return nodeid;
    if (!new_ok) {
        errno = EAGAIN;
        return 0;
    }
    int fd = pvfs_fs_openat2(parent_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0,
                             PVFS_FS_RESOLVE_BENEATH | PVFS_FS_RESOLVE_NO_MAGICLINKS);
    if (fd < 0) {
        errno = -fd;
        return 0;
    }
    /* the attributes of what was opened (the name may have changed files since the statx) */
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_WANT, sx) < 0 ||
        (sx->stx_mask & STATX_WANT) != STATX_WANT || STX_MNT_ID(sx) != parent_mnt) {
        close(fd);
        errno = EXDEV;
        return 0;
    }
    nodeid = count_or_register(t, fd, sx);
    if (!nodeid)
        errno = ENOMEM;
    return nodeid;
}

/* LOOKUP in C (see lookup_child): the lookup counted in the inode table (the owner settles
 * it on FORGET, see pvfs_fh_settle), fuse_entry_out as the Python server would answer.  ".", "..",
 * an odd name, a submount, an error are Python's. */
static int serve_lookup(struct pvfs_hot *h, struct pvfs_req *req, const uint8_t *a, uint32_t have)
{
    uint32_t len = meta_request_ok(h, req, a, have, 128);
    if (!len || len < IN_HDR + 2 || len > IN_HDR + 256)
        return TO_POOL;
    char name[256];
    uint32_t n = len - IN_HDR;
    if (pvfs_req_read_in(req, IN_HDR, name, n) != (int64_t)n || name[n - 1] != '\0' ||
        memchr(name, '\0', n - 1) || memchr(name, '/', n - 1) ||
        !strcmp(name, ".") || !strcmp(name, ".."))
        return TO_POOL;
    /* The reply area must take the entry before a lookup is counted: once counted, the
     * guest must get the reply. */
    uint8_t b[128] = {0};                                 /* struct fuse_entry_out */
    if (pvfs_req_write_out(req, OUT_HDR, b, sizeof(b)) < 0)
        return TO_POOL;                                   /* a hole: Python explains */
    struct pvfs_fh *p = fh_get(h->inodes, get64(a + 16));
    if (!p)
        return TO_POOL;                                   /* unknown nodeid: Python says EBADF */
    struct statx sx;
    uint64_t nodeid = p->keyed ? lookup_child(h->inodes, p->fd, p->mnt_id, name,
                                              __atomic_load_n(&h->lookup_new, __ATOMIC_RELAXED), &sx)
                               : 0;
    fh_put(p);
    if (!nodeid)
        return TO_POOL;                                   /* an error, a submount...: Python's */
    pack_entry(b, nodeid, &sx, h->blksize, h->attr_valid, h->attr_valid_nsec);
    pvfs_req_write_out(req, OUT_HDR, b, sizeof(b));       /* the range just written */
    count(h, PVFS_HOT_STAT_LOOKUPS, 1);
    reply(req, get64(a + 8), 0, NULL, 0, sizeof(b), 0);
    return SERVED;
}

/* ---- READDIRPLUS records ---- */

struct dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

int64_t pvfs_dirplus(struct pvfs_fhtab *inodes, int dir_fd, int parent_fd, uint64_t parent_mnt,
                     int new_ok, uint64_t offset, uint8_t *out, uint32_t room, uint32_t blksize,
                     uint64_t valid_sec, uint32_t valid_nsec, uint64_t *next_offset, int *why)
{
    *next_offset = offset;
    *why = PVFS_DIRPLUS_PYTHON;
    if (offset > INT64_MAX)
        return -EINVAL;
    if (lseek(dir_fd, (off_t)offset, SEEK_SET) < 0)
        return -errno;
    char buf[8192] __attribute__((aligned(8)));
    /* Read about what fits: a reply re-seeks, so entries read past it are read again.  A
     * dirent64 is at most ~2/3 of its direntplus record (a quarter for short names). */
    size_t want = room / 4 + 512;
    if (want > sizeof(buf))
        want = sizeof(buf);
    uint32_t used = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, dir_fd, buf, want);
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
            uint32_t rec = 128 + (((uint32_t)(24 + nl) + 7) & ~7u);
            if (used + rec > room) {
                *why = PVFS_DIRPLUS_FULL;
                return used;
            }
            uint8_t *e = out + used;
            memset(e, 0, rec);
            int dots = (nl == 1 && d->d_name[0] == '.') ||
                       (nl == 2 && d->d_name[0] == '.' && d->d_name[1] == '.');
            if (dots) {
                /* nodeid 0, no timeouts, only ino, type and nlink 1 (filesystem.Attr's
                 * defaults): the guest skips these */
                struct stat st = {0};
                st.st_ino = d->d_ino;
                st.st_mode = (mode_t)d->d_type << 12;
                st.st_nlink = 1;
                pack_attr(e + 40, &st, blksize);
            } else {
                struct statx sx;
                uint64_t nodeid = lookup_child(inodes, parent_fd, parent_mnt, d->d_name, new_ok, &sx);
                if (!nodeid && errno == ENOENT) {         /* gone since getdents: skipped */
                    *next_offset = (uint64_t)d->d_off;
                    continue;
                }
                if (!nodeid)
                    return used;                          /* Python's, from this entry */
                pack_entry(e, nodeid, &sx, blksize, valid_sec, valid_nsec);
            }
            uint8_t *de = e + 128;                        /* struct fuse_dirent */
            put64(de, d->d_ino);
            put64(de + 8, (uint64_t)d->d_off);
            put32(de + 16, (uint32_t)nl);
            put32(de + 20, d->d_type);
            memcpy(de + 24, d->d_name, nl);
            used += rec;
            *next_offset = (uint64_t)d->d_off;
        }
    }
}

/* Serve req if it is an ordinary READ/WRITE on a known handle or a GETATTR/LOOKUP C can
 * answer (SERVED), else say where Python should serve it (nothing was written to it then). */
static int try_serve(struct pvfs_hot *h, struct pvfs_req *req, struct handoff *ho)
{
    if (req->err || req->in_len < IN_HDR)
        return TO_POOL;
    uint8_t a[IN_HDR + RW_IN];
    uint32_t have = req->in_len < sizeof(a) ? req->in_len : (uint32_t)sizeof(a);
    if (pvfs_req_read_in(req, 0, a, have) != (int64_t)have)
        return TO_POOL;
    uint32_t opcode = get32(a + 4);
    unsigned ops = __atomic_load_n(&h->ops, __ATOMIC_ACQUIRE);
    if (opcode == FUSE_GETATTR && (ops & PVFS_HOT_GETATTR) && h->inodes) {
        int r = serve_getattr(h, req, a, have);
        return r == SERVED ? r : route(h, opcode);
    }
    if (opcode == FUSE_LOOKUP && (ops & PVFS_HOT_LOOKUP) && h->inodes) {
        int r = serve_lookup(h, req, a, have);
        return r == SERVED ? r : route(h, opcode);
    }
    if ((opcode != FUSE_READ || !(ops & PVFS_HOT_READ)) &&
        (opcode != FUSE_WRITE || !(ops & PVFS_HOT_WRITE)))
        return route(h, opcode);
    if (have < sizeof(a) || req->out_len < OUT_HDR)
        return TO_POOL;
    uint32_t len = get32(a);
    uint64_t unique = get64(a + 8);
    uint16_t extlen;
    memcpy(&extlen, a + 36, 2);
    uint64_t session = __atomic_load_n(&h->session, __ATOMIC_ACQUIRE);
    if (!(session >> 63))
        return TO_POOL;                                   /* before INIT: Python answers EIO */
    uint32_t minor = (uint32_t)(session >> 32) & 0x7fffffff, max_write = (uint32_t)session;
    if (len < IN_HDR + RW_IN || len > req->in_len || extlen || minor < 9)
        return TO_POOL;                                   /* malformed or old: Python explains */
    const uint8_t *rw = a + IN_HDR;
    uint64_t fh = get64(rw), offset = get64(rw + 8);
    uint32_t size = get32(rw + 16), rw_flags = get32(rw + 20);
    if (offset > INT64_MAX)
        return TO_POOL;

    if (opcode == FUSE_READ) {
        if (size > __atomic_load_n(&h->max_read, __ATOMIC_RELAXED))
            return TO_POOL;            /* more than a reply may carry: Python cuts and says so */
        uint32_t room = req->out_len - OUT_HDR;
        if (size > room)
            size = room;
        struct pvfs_fh *e = fh_get(h->t, fh);
        if (!e)
            return TO_POOL;                               /* unknown fh: Python says EBADF */
        int64_t n = -EAGAIN;
        if (ho && ho->leading && size < HANDOFF_BYTES) {
            n = pvfs_req_preadv2_once(req, e->fd, OUT_HDR, size, (int64_t)offset, RWF_NOWAIT);
            if (n == -EOPNOTSUPP || (n >= 0 && (uint64_t)n < size))
                n = -EAGAIN;    /* not supported, or partly cached (or EOF): read it normally */
        }
        if (n == -EAGAIN) {
            before_io(ho);
            n = pvfs_req_preadv(req, e->fd, OUT_HDR, size, (int64_t)offset);
        }
        fh_put(e);
        /* Counted before the reply is published: whoever sees the reply sees the count. */
        count(h, PVFS_HOT_STAT_READS, 1);
        if (n < 0)
            reply(req, unique, (int)-n, NULL, 0, 0, ho != NULL);   /* n is -errno; reply takes errno */
        else {
            count(h, PVFS_HOT_STAT_BYTES, (uint64_t)n);
            reply(req, unique, 0, NULL, 0, (uint32_t)n, ho != NULL);
        }
        return SERVED;
    }

    /* WRITE: the payload follows fuse_write_in and must be all there. */
    if (size > len - IN_HDR - RW_IN || size > max_write || (rw_flags & FUSE_WRITE_KILL_SUIDGID) ||
        req->out_len < OUT_HDR + 8)
        return TO_POOL;
    struct pvfs_fh *e = fh_get(h->t, fh);
    if (!e)
        return TO_POOL;
    if (e->append) {
        fh_put(e);
        return TO_POOL;
    }
    int64_t n;
    if (ho && ho->leading && size < HANDOFF_BYTES) {
        /* A small write the leader does itself (there is no RWF_NOWAIT for buffered
         * writes): a follower takes the ring over should it take longer than
         * PVFS_HOT_STALL_NS (see lead()). */
        uint64_t gen = busy_begin(ho->q);
        n = pvfs_req_pwritev(req, e->fd, IN_HDR + RW_IN, size, (int64_t)offset);
        if (!busy_end(ho->q, gen))
            ho->leading = 0;
    } else {
        before_io(ho);
        /* Large writes take turns (the ring is handed over already: a write stuck in the
         * host holds up only other large writes through this handle, which its inode lock
         * would anyway).  Small ones do not: a sleep and a wake-up cost more than a 4 KiB
         * copy (not measured apart: the run that suggested it was skewed by the bench's
         * writeback bias, see BENCHMARKS.md). */
        int big = size >= HANDOFF_BYTES;
        if (big)
            pthread_mutex_lock(&e->wlock);
        n = pvfs_req_pwritev(req, e->fd, IN_HDR + RW_IN, size, (int64_t)offset);
        if (big)
            pthread_mutex_unlock(&e->wlock);
    }
    fh_put(e);
    count(h, PVFS_HOT_STAT_WRITES, 1);
    if (n < 0)
        reply(req, unique, (int)-n, NULL, 0, 0, ho != NULL);   /* n is -errno; reply takes errno */
    else {
        uint32_t wo[2] = {htole32((uint32_t)n), 0};   /* fuse_write_out */
        count(h, PVFS_HOT_STAT_BYTES, (uint64_t)n);
        reply(req, unique, 0, wo, sizeof(wo), 0, ho != NULL);
    }
    return SERVED;
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
        int r = try_serve(h, req, NULL);
        if (r == SERVED)
            continue;
        count(h, PVFS_HOT_STAT_PASSED, 1);   /* before Python can complete it */
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

/* ---- leader/follower ------------------------------------------------------------------
 * Of the threads serving one queue, one -- the leader -- waits for kicks and pops; the
 * others wait on a condition variable.  Before I/O that may block (a large READ or WRITE,
 * a READ whose pages are not all cached) the leader hands the ring over and wakes a
 * follower, so the queue stays watched; a small cached READ (RWF_NOWAIT) it serves itself
 * and goes on popping; a small WRITE it does itself too, marked busy, and a follower takes
 * the ring from it after PVFS_HOT_STALL_NS; for a request Python serves it gives up the
 * ring without waking anyone (Python runs one thread at a time anyway, and the ops served
 * inline are quick ones).  So a READ or WRITE that blocks in the host does not stall the
 * queue, large requests spread over the threads, and small cached reads do not pay for
 * hand-offs.  GETATTR and LOOKUP served in C are the exception: their fstat/statx runs
 * on the leader, which neither hands over nor marks itself busy, so one that blocks (a
 * hung NFS server) holds the queue until it returns. */

/* How long the leader may be busy with a small write before a follower takes over, and
 * how often followers look (they sleep with this timeout while someone leads, and take an
 * unattended ring -- its last leader busy in Python -- when they wake). */
#define PVFS_HOT_STALL_NS 10000000ull   /* 10 ms */

struct pvfs_hotq {
    pthread_mutex_t m;
    pthread_cond_t c;
    int leader;   /* a thread owns the ring */
    int stop;
    int paused;   /* the ring is disabled: nobody may pop */
    uint64_t busy_since;  /* the leader is in a small write since (CLOCK_MONOTONIC ns), or 0 */
    uint64_t gen;         /* bumped when a follower takes the ring from a busy leader */
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The leader starts a small write; returns the generation to hand to busy_end. */
static uint64_t busy_begin(struct pvfs_hotq *q)
{
    pthread_mutex_lock(&q->m);
    q->busy_since = mono_ns();
    uint64_t gen = q->gen;
    pthread_mutex_unlock(&q->m);
    return gen;
}

/* The write is done: 1 if we still lead, 0 if a follower took over meanwhile. */
static int busy_end(struct pvfs_hotq *q, uint64_t gen)
{
    pthread_mutex_lock(&q->m);
    int still = q->gen == gen;
    if (still)
        q->busy_since = 0;
    pthread_mutex_unlock(&q->m);
    return still;
}

struct pvfs_hotq *pvfs_hotq_new(void)
{
    struct pvfs_hotq *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    pthread_mutex_init(&q->m, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->c, &ca);
    pthread_condattr_destroy(&ca);
    return q;
}

void pvfs_hotq_free(struct pvfs_hotq *q)
{
    if (q) {
        pthread_cond_destroy(&q->c);
        pthread_mutex_destroy(&q->m);
        free(q);
    }
}

void pvfs_hotq_stop(struct pvfs_hotq *q)
{
    pthread_mutex_lock(&q->m);
    __atomic_store_n(&q->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&q->c);
    pthread_mutex_unlock(&q->m);
}

void pvfs_hotq_set_paused(struct pvfs_hotq *q, int paused)
{
    pthread_mutex_lock(&q->m);
    __atomic_store_n(&q->paused, paused, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&q->c);
    pthread_mutex_unlock(&q->m);
}

/* Become the leader: 0, or PVFS_HOT_RUN_STOP if the queue is stopping or paused. */
static int lead(struct pvfs_hotq *q)
{
    if (!q)
        return 0;
    pthread_mutex_lock(&q->m);
    while (q->leader && !q->stop && !q->paused) {
        /* A leader stuck in a small write (a hung host file system) loses the ring after
         * PVFS_HOT_STALL_NS; followers check that often while anyone leads. */
        uint64_t now = mono_ns();
        if (q->busy_since && now - q->busy_since >= PVFS_HOT_STALL_NS) {
            q->gen++;
            q->busy_since = 0;
            break;          /* ours now (leader stays 1) */
        }
        uint64_t until = (q->busy_since ? q->busy_since : now) + PVFS_HOT_STALL_NS;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000ull),
                              .tv_nsec = (long)(until % 1000000000ull)};
        pthread_cond_timedwait(&q->c, &q->m, &ts);
    }
    int rc = q->stop || q->paused ? PVFS_HOT_RUN_STOP : 0;
    if (!rc)
        q->leader = 1;
    pthread_mutex_unlock(&q->m);
    return rc;
}

static void unlead(struct pvfs_hotq *q, int wake_one)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->m);
    q->leader = 0;
    if (wake_one)
        pthread_cond_signal(&q->c);
    pthread_mutex_unlock(&q->m);
}

/* Interrupts for requests served in C can be sent once per batch: completions are pushed
 * deferred and flushed when the ring is empty, before anything that may block or leaves
 * the loop, and at least every FLUSH_EVERY.  With EVENT_IDX the driver already suppresses
 * most interrupts; batching 8 showed no gain within the noise (BENCHMARKS.md,
 * "Notifications"), so it is 1 (an interrupt decision per request). */
#define FLUSH_EVERY 1

int pvfs_hot_run(struct pvfs_hot *h, struct pvfs_vq *vq, struct pvfs_hotq *q, int kick_fd,
                 int stop_fd, int timeout_ms, struct pvfs_req **out)
{
    if (lead(q))
        return PVFS_HOT_RUN_STOP;
    unsigned unflushed = 0;
    for (;;) {
        if (q && (__atomic_load_n(&q->paused, __ATOMIC_ACQUIRE) || __atomic_load_n(&q->stop, __ATOMIC_ACQUIRE))) {
            pvfs_vq_flush_signal(vq);
            unlead(q, 1);
            return PVFS_HOT_RUN_STOP;   /* disabled or stopping while we led */
        }
        struct pvfs_req *req;
        int rc = pvfs_vq_pop(vq, &req);
        if (rc < 0) {
            pvfs_vq_flush_signal(vq);
            unlead(q, 1);
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
            unlead(q, 1);
            /* 2: stop_fd readable, a stop or a wake (not consumed); <0: the wait failed */
            return rc == 2 ? PVFS_HOT_RUN_STOP : rc;
        }
        struct handoff ho = {q, vq, 1};
        int r = try_serve(h, req, q ? &ho : NULL);
        if (r != SERVED) {
            pvfs_vq_flush_signal(vq);
            /* Python's: hand the ring over, but wake nobody -- a second thread in Python
             * would only fight this one for the GIL (it measured slower, see BENCHMARKS.md);
             * this thread is back as soon as Python is done, and should
             * Python block, a follower finds the ring unattended within
             * PVFS_HOT_STALL_NS (its timed wait in lead()) and takes it. */
            if (ho.leading)
                unlead(q, 0);
            count(h, PVFS_HOT_STAT_PASSED, 1);   /* before Python can complete it */
            *out = req;
            return r == INLINE ? PVFS_HOT_RUN_INLINE : PVFS_HOT_RUN_POOL;
        }
        if (++unflushed >= FLUSH_EVERY || !ho.leading) {
            pvfs_vq_flush_signal(vq);
            unflushed = 0;
        }
        if (!ho.leading && lead(q))
            return PVFS_HOT_RUN_STOP;
    }
}
