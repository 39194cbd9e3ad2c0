/* The store of inodes and open handles (see store.h). */
#define _GNU_SOURCE
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define ROOT_ID 1

/* ---- an open-addressing index of entries ---------------------------------------------
 * Slots hold entry pointers; an entry is found by its id (nodeid, fh), or -- for the
 * inodes' second index -- by its identity.  Linear probing, at most half full. */

#define EMPTY ((void *)0)
#define GONE ((void *)1)   /* a removed slot: probing goes on past it */

struct index {
    void **slots;
    unsigned cap;      /* a power of two, or 0 before the first insert */
    unsigned count;    /* live entries */
    unsigned used;     /* live + GONE slots */
};

static unsigned mix(uint64_t v, unsigned cap)
{
    v *= 0x9E3779B97F4A7C15ull;
    return (unsigned)(v >> 32) & (cap - 1);
}

/* What an index hashes and compares: an entry's id (first member of every entry) or an
 * inode's identity. */
struct inode_key { uint64_t dev, ino, mnt_id; };

struct pvfs_inode {
    uint64_t nodeid;        /* first: the id index reads it */
    struct inode_key key;
    int fd;                 /* O_PATH, or -1 (a file-handle inode nobody borrows) */
    uint32_t mode;
    uint64_t lookups;       /* under the inode lock */
    unsigned refs;          /* atomic: 1 while in the store, + 1 per borrower */
    int in_store;           /* under the inode lock */
    uint32_t handle_len;
    uint8_t handle[];       /* a file handle, opaque here */
};

struct pvfs_handle {
    uint64_t fh;            /* first: the id index reads it */
    uint64_t nodeid;
    int fd;
    int append;             /* the fd has O_APPEND: the file position decides, Python's */
    unsigned refs;          /* atomic: 1 while in the store, + 1 per borrower */
    pthread_mutex_t lock;   /* see pvfs_handle_lock */
};

static uint64_t id_of(const void *e) { return *(const uint64_t *)e; }

static unsigned key_slot(const struct inode_key *k, unsigned cap)
{
    return mix(k->ino ^ (k->dev * 0xff51afd7ed558ccdull) ^ (k->mnt_id << 40), cap);
}

static int same_key(const struct inode_key *a, const struct inode_key *b)
{
    return a->ino == b->ino && a->dev == b->dev && a->mnt_id == b->mnt_id;
}

/* The slot of the entry with id (by_key NULL) or identity by_key, or -1. */
static int ix_find(const struct index *x, uint64_t id, const struct inode_key *by_key)
{
    if (!x->cap)
        return -1;
    unsigned j = by_key ? key_slot(by_key, x->cap) : mix(id, x->cap);
    for (unsigned n = 0; n < x->cap; n++, j = (j + 1) & (x->cap - 1)) {
        void *e = x->slots[j];
        if (e == EMPTY)
            return -1;
        if (e == GONE)
            continue;
        if (by_key ? same_key(&((struct pvfs_inode *)e)->key, by_key) : id_of(e) == id)
            return (int)j;
    }
    return -1;
}

static unsigned ix_home(const void *e, unsigned cap, int by_key)
{
    return by_key ? key_slot(&((const struct pvfs_inode *)e)->key, cap) : mix(id_of(e), cap);
}

/* Room for one more entry: 0, or -ENOMEM. */
static int ix_reserve(struct index *x, int by_key)
{
    if (x->cap && (x->used + 1) * 2 <= x->cap)
        return 0;
    unsigned cap = !x->cap ? 64 : x->count * 4 > x->cap ? x->cap * 2 : x->cap;
    void **slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (unsigned i = 0; i < x->cap; i++) {
        void *e = x->slots[i];
        if (e == EMPTY || e == GONE)
            continue;
        unsigned j = ix_home(e, cap, by_key);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = e;
    }
    free(x->slots);
    x->slots = slots;
    x->cap = cap;
    x->used = x->count;
    return 0;
}

/* Put e in (room reserved). */
static void ix_insert(struct index *x, void *e, int by_key)
{
    unsigned j = ix_home(e, x->cap, by_key);
    while (x->slots[j] != EMPTY && x->slots[j] != GONE)
        j = (j + 1) & (x->cap - 1);
    if (x->slots[j] == EMPTY)
        x->used++;
    x->slots[j] = e;
    x->count++;
}

static void ix_remove(struct index *x, int j)
{
    x->slots[j] = GONE;
    x->count--;
}

/* ---- the store ----------------------------------------------------------------------- */

struct pvfs_store {
    unsigned refs;                 /* atomic */
    int fds_only;
    pthread_mutex_t ilock;         /* the inode indexes and every inode's lookups/in_store */
    struct index by_id, by_key;
    uint64_t next_nodeid;          /* under ilock */
    struct pvfs_inode *root;
    pthread_mutex_t hlock;         /* the handle index */
    struct index handles;
    uint64_t next_fh;              /* under hlock */
    uint32_t policy;               /* atomic: PVFS_FS_* */
    int proc_fd;
};

static struct pvfs_inode *inode_new(int fd, const struct inode_key *k, uint32_t mode,
                                    const uint8_t *handle, uint32_t handle_len)
{
    struct pvfs_inode *i = calloc(1, sizeof(*i) + handle_len);
    if (!i)
        return NULL;
    i->key = *k;
    i->fd = fd;
    i->mode = mode;
    i->refs = 1;
    i->in_store = 1;
    i->lookups = 1;
    i->handle_len = handle_len;
    if (handle_len)
        memcpy(i->handle, handle, handle_len);
    return i;
}

static void inode_put(struct pvfs_inode *i)
{
    if (__atomic_sub_fetch(&i->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        if (i->fd >= 0)
            close(i->fd);
        free(i);
    }
}

static void handle_unref(struct pvfs_handle *h)
{
    if (__atomic_sub_fetch(&h->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        if (h->fd >= 0)             /* -1: a handle lost in migration */
            close(h->fd);
        pthread_mutex_destroy(&h->lock);
        free(h);
    }
}

struct pvfs_store *pvfs_store_new(int root_fd, uint64_t dev, uint64_t ino, uint64_t mnt_id,
                                  uint32_t mode, int fds_only)
{
    struct pvfs_store *s = calloc(1, sizeof(*s));
    struct inode_key k = {dev, ino, mnt_id};
    struct pvfs_inode *root = s ? inode_new(root_fd, &k, mode, NULL, 0) : NULL;
    if (!root || ix_reserve(&s->by_id, 0) || ix_reserve(&s->by_key, 1)) {
        if (s) {
            free(s->by_id.slots);
            free(s->by_key.slots);
        }
        free(root);
        free(s);
        close(root_fd);
        return NULL;
    }
    s->refs = 1;
    s->fds_only = fds_only;
    s->proc_fd = -1;
    pthread_mutex_init(&s->ilock, NULL);
    pthread_mutex_init(&s->hlock, NULL);
    root->nodeid = ROOT_ID;
    ix_insert(&s->by_id, root, 0);
    ix_insert(&s->by_key, root, 1);
    s->root = root;
    s->next_nodeid = ROOT_ID + 1;
    s->next_fh = 1;
    return s;
}

void pvfs_store_ref(struct pvfs_store *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
}

int pvfs_store_fds_only(struct pvfs_store *s) { return s->fds_only; }

void pvfs_store_set_policy(struct pvfs_store *s, uint32_t flags)
{
    __atomic_store_n(&s->policy, flags, __ATOMIC_RELEASE);
}

uint32_t pvfs_store_policy(struct pvfs_store *s) { return __atomic_load_n(&s->policy, __ATOMIC_ACQUIRE); }

int pvfs_store_set_proc(struct pvfs_store *s, int proc_fd)
{
    if (s->proc_fd >= 0)
        return -EBUSY;                 /* once: C readers take it without a lock */
    int fd = fcntl(proc_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    s->proc_fd = fd;
    return 0;
}

int pvfs_store_proc_fd(struct pvfs_store *s) { return __atomic_load_n(&s->proc_fd, __ATOMIC_ACQUIRE); }

/* Every handle, and every inode (but the root unless with_root), leaves the store. */
static void clear(struct pvfs_store *s, int with_root)
{
    pthread_mutex_lock(&s->hlock);
    struct index hs = s->handles;
    memset(&s->handles, 0, sizeof(s->handles));
    pthread_mutex_unlock(&s->hlock);
    for (unsigned j = 0; j < hs.cap; j++)
        if (hs.slots[j] != EMPTY && hs.slots[j] != GONE)
            handle_unref(hs.slots[j]);
    free(hs.slots);

    pthread_mutex_lock(&s->ilock);
    struct index ids = s->by_id;
    memset(&s->by_id, 0, sizeof(s->by_id));
    free(s->by_key.slots);
    memset(&s->by_key, 0, sizeof(s->by_key));
    int keep = !with_root && !ix_reserve(&s->by_id, 0) && !ix_reserve(&s->by_key, 1);
    for (unsigned j = 0; j < ids.cap; j++) {
        struct pvfs_inode *i = ids.slots[j];
        if (i == EMPTY || i == GONE)
            continue;
        if (i == s->root && keep) {
            ix_insert(&s->by_id, i, 0);
            ix_insert(&s->by_key, i, 1);
            ids.slots[j] = EMPTY;
            continue;
        }
        i->in_store = 0;
        i->lookups = 0;
        if (i == s->root)
            s->root = NULL;
    }
    pthread_mutex_unlock(&s->ilock);
    /* The store's references, dropped after the lock: a put may close an fd. */
    for (unsigned j = 0; j < ids.cap; j++)
        if (ids.slots[j] != EMPTY && ids.slots[j] != GONE)
            inode_put(ids.slots[j]);
    free(ids.slots);
}

void pvfs_store_clear(struct pvfs_store *s) { clear(s, 0); }

void pvfs_store_close(struct pvfs_store *s)
{
    clear(s, 1);
    /* Nothing is served from an empty store, so nobody reopens through this any more
     * (the owner closes the store once the queues have stopped). */
    int fd = __atomic_exchange_n(&s->proc_fd, -1, __ATOMIC_ACQ_REL);
    if (fd >= 0)
        close(fd);
}

void pvfs_store_unref(struct pvfs_store *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL))
        return;
    clear(s, 1);
    free(s->by_id.slots);
    free(s->by_key.slots);
    pthread_mutex_destroy(&s->ilock);
    pthread_mutex_destroy(&s->hlock);
    if (s->proc_fd >= 0)
        close(s->proc_fd);
    free(s);
}

/* ---- inodes -------------------------------------------------------------------------- */

/* One more lookup of the inode with identity k, if held: its nodeid, else 0.  ilock held. */
static uint64_t count_held(struct pvfs_store *s, const struct inode_key *k)
{
    int j = ix_find(&s->by_key, 0, k);
    if (j < 0)
        return 0;
    struct pvfs_inode *i = s->by_key.slots[j];
    i->lookups++;
    return i->nodeid;
}

/* Count a lookup of k, registering fd (with handle) as a new inode if k is not held.
 * Takes fd.  0 if memory is short. */
static uint64_t lookup(struct pvfs_store *s, int fd, const struct inode_key *k, uint32_t mode,
                       const uint8_t *handle, uint32_t handle_len)
{
    /* Allocated before the lock; freed unused when the file is known already. */
    struct pvfs_inode *i = inode_new(handle_len ? -1 : fd, k, mode, handle, handle_len);
    pthread_mutex_lock(&s->ilock);
    uint64_t nodeid = count_held(s, k);
    if (!nodeid && i && !ix_reserve(&s->by_id, 0) && !ix_reserve(&s->by_key, 1)) {
        i->nodeid = nodeid = s->next_nodeid++;
        ix_insert(&s->by_id, i, 0);
        ix_insert(&s->by_key, i, 1);
        if (!handle_len)
            fd = -1;                 /* the inode's now */
        i = NULL;
    }
    pthread_mutex_unlock(&s->ilock);
    free(i);
    if (fd >= 0)
        close(fd);
    return nodeid;
}

uint64_t pvfs_store_lookup(struct pvfs_store *s, int fd, uint64_t dev, uint64_t ino,
                           uint64_t mnt_id, uint32_t mode, const uint8_t *handle,
                           uint32_t handle_len)
{
    struct inode_key k = {dev, ino, mnt_id};
    return lookup(s, fd, &k, mode, handle_len ? handle : NULL, handle_len);
}

static void key_of(const struct statx *sx, struct inode_key *k)
{
    k->dev = makedev(sx->stx_dev_major, sx->stx_dev_minor);
    k->ino = sx->stx_ino;
    k->mnt_id = sx->stx_mnt_id;
}

uint64_t pvfs_store_count_known(struct pvfs_store *s, const struct statx *sx)
{
    struct inode_key k;
    key_of(sx, &k);
    pthread_mutex_lock(&s->ilock);
    uint64_t nodeid = count_held(s, &k);
    pthread_mutex_unlock(&s->ilock);
    return nodeid;
}

uint64_t pvfs_store_count_or_add(struct pvfs_store *s, int fd, const struct statx *sx)
{
    struct inode_key k;
    key_of(sx, &k);
    if (s->fds_only)
        return lookup(s, fd, &k, sx->stx_mode, NULL, 0);
    uint64_t nodeid = pvfs_store_count_known(s, sx);
    close(fd);
    return nodeid;
}

uint64_t pvfs_store_find(struct pvfs_store *s, uint64_t dev, uint64_t ino, uint64_t mnt_id)
{
    struct inode_key k = {dev, ino, mnt_id};
    pthread_mutex_lock(&s->ilock);
    int j = ix_find(&s->by_key, 0, &k);
    uint64_t nodeid = j < 0 ? 0 : ((struct pvfs_inode *)s->by_key.slots[j])->nodeid;
    pthread_mutex_unlock(&s->ilock);
    return nodeid;
}

/* Borrow nodeid's inode; ilock held. */
static struct pvfs_inode *borrow(struct pvfs_store *s, uint64_t nodeid)
{
    int j = ix_find(&s->by_id, nodeid, NULL);
    if (j < 0)
        return NULL;
    struct pvfs_inode *i = s->by_id.slots[j];
    __atomic_add_fetch(&i->refs, 1, __ATOMIC_RELAXED);
    return i;
}

struct pvfs_inode *pvfs_inode_get(struct pvfs_store *s, uint64_t nodeid,
                                  struct pvfs_inode_view *v)
{
    pthread_mutex_lock(&s->ilock);
    struct pvfs_inode *i = borrow(s, nodeid);
    if (i) {
        v->nodeid = i->nodeid;
        v->fd = i->fd;
        v->mode = i->mode;
        v->dev = i->key.dev;
        v->ino = i->key.ino;
        v->mnt_id = i->key.mnt_id;
        v->handle_len = i->handle_len;
    }
    pthread_mutex_unlock(&s->ilock);
    return i;
}

struct pvfs_inode *pvfs_store_inode_fd(struct pvfs_store *s, uint64_t nodeid, int *fd,
                                       uint64_t *mnt_id)
{
    pthread_mutex_lock(&s->ilock);
    struct pvfs_inode *i = borrow(s, nodeid);
    if (i && i->fd < 0) {
        __atomic_sub_fetch(&i->refs, 1, __ATOMIC_RELAXED);   /* still in the store: not 0 */
        i = NULL;
    }
    if (i) {
        *fd = i->fd;
        *mnt_id = i->key.mnt_id;
    }
    pthread_mutex_unlock(&s->ilock);
    return i;
}

void pvfs_inode_put(struct pvfs_store *s, struct pvfs_inode *i)
{
    if (i->handle_len) {
        /* A file-handle inode's fd is open only while borrowed: the last borrower of one
         * still in the store closes it. */
        int close_fd = -1;
        pthread_mutex_lock(&s->ilock);
        if (i->in_store && __atomic_load_n(&i->refs, __ATOMIC_ACQUIRE) == 2 && i->fd >= 0) {
            close_fd = i->fd;
            i->fd = -1;
        }
        pthread_mutex_unlock(&s->ilock);
        if (close_fd >= 0)
            close(close_fd);
    }
    inode_put(i);
}

int pvfs_inode_set_fd(struct pvfs_store *s, struct pvfs_inode *i, int fd)
{
    pthread_mutex_lock(&s->ilock);
    if (i->fd < 0)
        i->fd = fd;
    fd = i->fd;
    pthread_mutex_unlock(&s->ilock);
    return fd;
}

uint32_t pvfs_inode_handle(struct pvfs_inode *i, uint8_t *out, uint32_t room)
{
    uint32_t n = i->handle_len < room ? i->handle_len : room;
    memcpy(out, i->handle, n);
    return i->handle_len;
}

void pvfs_inode_add_lookup(struct pvfs_store *s, struct pvfs_inode *i)
{
    pthread_mutex_lock(&s->ilock);
    if (i->in_store)
        i->lookups++;
    pthread_mutex_unlock(&s->ilock);
}

/* Give back n lookups of nodeid; the inode to put if it left the store.  ilock held. */
static struct pvfs_inode *forget(struct pvfs_store *s, uint64_t nodeid, uint64_t n)
{
    int j = ix_find(&s->by_id, nodeid, NULL);
    if (j < 0)
        return NULL;
    struct pvfs_inode *i = s->by_id.slots[j];
    if (i == s->root)
        return NULL;
    i->lookups = i->lookups > n ? i->lookups - n : 0;
    if (i->lookups)
        return NULL;
    ix_remove(&s->by_id, j);
    int k = ix_find(&s->by_key, 0, &i->key);
    if (k >= 0 && s->by_key.slots[k] == i)
        ix_remove(&s->by_key, k);
    i->in_store = 0;
    return i;
}

void pvfs_store_forget(struct pvfs_store *s, uint64_t nodeid, uint64_t nlookup)
{
    pthread_mutex_lock(&s->ilock);
    struct pvfs_inode *i = forget(s, nodeid, nlookup);
    pthread_mutex_unlock(&s->ilock);
    if (i)
        inode_put(i);    /* the store's reference: the fd closes here or with the last borrower */
}

void pvfs_store_forget_many(struct pvfs_store *s, const uint64_t *pairs, uint32_t n)
{
    /* In chunks, so the lock is not held for a whole 4 KiB batch of closes. */
    while (n) {
        struct pvfs_inode *gone[64];
        unsigned k = 0;
        pthread_mutex_lock(&s->ilock);
        for (; n && k < 64; n--, pairs += 2) {
            struct pvfs_inode *i = forget(s, pairs[0], pairs[1]);
            if (i)
                gone[k++] = i;
        }
        pthread_mutex_unlock(&s->ilock);
        while (k)
            inode_put(gone[--k]);
    }
}

uint64_t pvfs_store_lookups(struct pvfs_store *s, uint64_t nodeid)
{
    pthread_mutex_lock(&s->ilock);
    int j = ix_find(&s->by_id, nodeid, NULL);
    uint64_t n = j < 0 ? 0 : ((struct pvfs_inode *)s->by_id.slots[j])->lookups;
    pthread_mutex_unlock(&s->ilock);
    return n;
}

/* ---- handles ------------------------------------------------------------------------- */

uint64_t pvfs_store_open(struct pvfs_store *s, int fd, uint64_t nodeid)
{
    struct pvfs_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        close(fd);
        return 0;
    }
    int fl = fcntl(fd, F_GETFL);
    h->fd = fd;
    h->nodeid = nodeid;
    h->append = fl < 0 || (fl & O_APPEND);
    h->refs = 1;
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_lock(&s->hlock);
    uint64_t fh = 0;
    if (!ix_reserve(&s->handles, 0)) {
        h->fh = fh = s->next_fh++;
        ix_insert(&s->handles, h, 0);
    }
    pthread_mutex_unlock(&s->hlock);
    if (!fh)
        handle_unref(h);
    return fh;
}

static struct pvfs_handle *handle_get(struct pvfs_store *s, uint64_t fh)
{
    struct pvfs_handle *h = NULL;
    pthread_mutex_lock(&s->hlock);
    int j = ix_find(&s->handles, fh, NULL);
    if (j >= 0) {
        h = s->handles.slots[j];
        __atomic_add_fetch(&h->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&s->hlock);
    return h;
}

struct pvfs_handle *pvfs_handle_get(struct pvfs_store *s, uint64_t fh, int *fd,
                                    uint64_t *nodeid)
{
    struct pvfs_handle *h = handle_get(s, fh);
    if (h) {
        *fd = h->fd;
        *nodeid = h->nodeid;
    }
    return h;
}

struct pvfs_handle *pvfs_store_handle_fd(struct pvfs_store *s, uint64_t fh, int *fd,
                                         int *append)
{
    struct pvfs_handle *h = handle_get(s, fh);
    if (h && h->fd < 0) {           /* lost in migration: Python answers EIO */
        handle_unref(h);
        return NULL;
    }
    if (h) {
        *fd = h->fd;
        *append = h->append;
    }
    return h;
}

void pvfs_handle_put(struct pvfs_handle *h) { handle_unref(h); }

int pvfs_store_release(struct pvfs_store *s, uint64_t fh)
{
    struct pvfs_handle *h = NULL;
    pthread_mutex_lock(&s->hlock);
    int j = ix_find(&s->handles, fh, NULL);
    if (j >= 0) {
        h = s->handles.slots[j];
        ix_remove(&s->handles, j);
    }
    pthread_mutex_unlock(&s->hlock);
    if (!h)
        return -EBADF;
    handle_unref(h);
    return 0;
}

void pvfs_handle_lock(struct pvfs_handle *h) { pthread_mutex_lock(&h->lock); }
void pvfs_handle_unlock(struct pvfs_handle *h) { pthread_mutex_unlock(&h->lock); }

void pvfs_store_counts(struct pvfs_store *s, struct pvfs_store_counts *c)
{
    pthread_mutex_lock(&s->ilock);
    c->inodes = s->by_id.count;
    c->inode_fds = 0;
    for (unsigned j = 0; j < s->by_id.cap; j++) {
        struct pvfs_inode *i = s->by_id.slots[j];
        if (i != EMPTY && i != GONE && i->fd >= 0)
            c->inode_fds++;
    }
    pthread_mutex_unlock(&s->ilock);
    pthread_mutex_lock(&s->hlock);
    c->handles = s->handles.count;
    pthread_mutex_unlock(&s->hlock);
}

/* ---- migration: listing the store, and re-inserting under given numbers -------------- */

uint32_t pvfs_store_list_inodes(struct pvfs_store *s, uint64_t *out, uint32_t room)
{
    uint32_t n = 0;
    pthread_mutex_lock(&s->ilock);
    for (unsigned j = 0; j < s->by_id.cap; j++) {
        struct pvfs_inode *i = s->by_id.slots[j];
        if (i == EMPTY || i == GONE || i == s->root)
            continue;
        if (n < room) {
            out[2 * n] = i->nodeid;
            out[2 * n + 1] = i->lookups;
        }
        n++;
    }
    pthread_mutex_unlock(&s->ilock);
    return n;
}

uint32_t pvfs_store_list_handles(struct pvfs_store *s, uint64_t *out, uint32_t room)
{
    uint32_t n = 0;
    pthread_mutex_lock(&s->hlock);
    for (unsigned j = 0; j < s->handles.cap; j++) {
        struct pvfs_handle *h = s->handles.slots[j];
        if (h == EMPTY || h == GONE)
            continue;
        if (n < room) {
            out[2 * n] = h->fh;
            out[2 * n + 1] = h->nodeid;
        }
        n++;
    }
    pthread_mutex_unlock(&s->hlock);
    return n;
}

void pvfs_store_next_ids(struct pvfs_store *s, uint64_t *next_nodeid, uint64_t *next_fh)
{
    pthread_mutex_lock(&s->ilock);
    *next_nodeid = s->next_nodeid;
    pthread_mutex_unlock(&s->ilock);
    pthread_mutex_lock(&s->hlock);
    *next_fh = s->next_fh;
    pthread_mutex_unlock(&s->hlock);
}

void pvfs_store_raise_next_ids(struct pvfs_store *s, uint64_t next_nodeid, uint64_t next_fh)
{
    pthread_mutex_lock(&s->ilock);
    if (next_nodeid > s->next_nodeid && next_nodeid <= PVFS_STORE_MAX_ID)
        s->next_nodeid = next_nodeid;
    pthread_mutex_unlock(&s->ilock);
    pthread_mutex_lock(&s->hlock);
    if (next_fh > s->next_fh && next_fh <= PVFS_STORE_MAX_ID)
        s->next_fh = next_fh;
    pthread_mutex_unlock(&s->hlock);
}

int pvfs_store_insert_inode(struct pvfs_store *s, uint64_t nodeid, uint64_t lookups, int fd,
                            uint64_t dev, uint64_t ino, uint64_t mnt_id, uint32_t mode,
                            const uint8_t *handle, uint32_t handle_len)
{
    if (nodeid <= ROOT_ID || nodeid >= PVFS_STORE_MAX_ID || !lookups) {
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    int lost = fd < 0 && !handle_len;
    struct inode_key k = {dev, ino, mnt_id};
    struct pvfs_inode *i = inode_new(handle_len ? -1 : fd, &k, mode, handle, handle_len);
    int rc = 0;
    pthread_mutex_lock(&s->ilock);
    if (!i || ix_reserve(&s->by_id, 0) || ix_reserve(&s->by_key, 1))
        rc = -ENOMEM;
    else if (ix_find(&s->by_id, nodeid, NULL) >= 0 || (!lost && ix_find(&s->by_key, 0, &k) >= 0))
        rc = -EEXIST;
    if (!rc) {
        i->nodeid = nodeid;
        i->lookups = lookups;
        ix_insert(&s->by_id, i, 0);
        if (!lost)               /* a lost inode has no identity: nothing finds it by one */
            ix_insert(&s->by_key, i, 1);
        if (nodeid >= s->next_nodeid)
            s->next_nodeid = nodeid + 1;
        if (!handle_len)
            fd = -1;             /* the inode's now */
        i = NULL;
    }
    pthread_mutex_unlock(&s->ilock);
    free(i);
    if (fd >= 0)
        close(fd);
    return rc;
}

int pvfs_store_insert_handle(struct pvfs_store *s, uint64_t fh, int fd, uint64_t nodeid)
{
    if (!fh || fh >= PVFS_STORE_MAX_ID) {
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    struct pvfs_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        if (fd >= 0)
            close(fd);
        return -ENOMEM;
    }
    int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    h->fd = fd;
    h->fh = fh;
    h->nodeid = nodeid;
    h->append = fl < 0 || (fl & O_APPEND);
    h->refs = 1;
    pthread_mutex_init(&h->lock, NULL);
    int rc = 0;
    pthread_mutex_lock(&s->hlock);
    if (ix_reserve(&s->handles, 0))
        rc = -ENOMEM;
    else if (ix_find(&s->handles, fh, NULL) >= 0)
        rc = -EEXIST;
    else {
        ix_insert(&s->handles, h, 0);
        if (fh >= s->next_fh)
            s->next_fh = fh + 1;
    }
    pthread_mutex_unlock(&s->hlock);
    if (rc)
        handle_unref(h);
    return rc;
}
