/* The store of inodes and open handles (see store.h). */
#define _GNU_SOURCE
#include "store.h"

#include <endian.h>
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
    /* A file-handle inode whose fd is open while nobody borrows it is on the store's idle
     * list (most recently used last), under the inode lock. */
    int idle;
    struct pvfs_inode *idle_prev, *idle_next;
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

struct mount_fd {
    uint64_t mnt_id;
    int fd;                        /* O_RDONLY | O_DIRECTORY: open_by_handle_at refuses O_PATH */
};

struct pvfs_store {
    unsigned refs;                 /* atomic */
    int file_handles;              /* PVFS_HANDLES_*, set before anything is served */
    pthread_mutex_t mlock;         /* the mount fds */
    struct mount_fd *mounts;
    uint32_t nmounts;
    pthread_mutex_t ilock;         /* the inode indexes and every inode's lookups/in_store */
    struct index by_id, by_key;
    uint64_t next_nodeid;          /* under ilock */
    struct pvfs_inode *idle_head, *idle_tail;   /* under ilock: see pvfs_store_set_file_handles */
    uint32_t idle_count, idle_max;
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

static void inode_free(struct pvfs_inode *i)
{
    if (i->fd >= 0)
        close(i->fd);
    free(i);
}

static void inode_put(struct pvfs_inode *i)
{
    if (__atomic_sub_fetch(&i->refs, 1, __ATOMIC_ACQ_REL) == 0)
        inode_free(i);
}

/* The idle list (ilock held): file-handle inodes with an fd open and no borrower. */
static void idle_unlink(struct pvfs_store *s, struct pvfs_inode *i)
{
    if (!i->idle)
        return;
    if (i->idle_prev)
        i->idle_prev->idle_next = i->idle_next;
    else
        s->idle_head = i->idle_next;
    if (i->idle_next)
        i->idle_next->idle_prev = i->idle_prev;
    else
        s->idle_tail = i->idle_prev;
    i->idle_prev = i->idle_next = NULL;
    i->idle = 0;
    s->idle_count--;
}

/* i (fd open, nobody borrowing) goes idle, most recently used; the fd to close after the
 * lock: i's own when the store keeps none, else the least recently used one's when the
 * list is over its size, else -1. */
static int idle_add(struct pvfs_store *s, struct pvfs_inode *i)
{
    if (!s->idle_max) {
        int fd = i->fd;
        i->fd = -1;
        return fd;
    }
    i->idle = 1;
    i->idle_next = NULL;
    i->idle_prev = s->idle_tail;
    if (s->idle_tail)
        s->idle_tail->idle_next = i;
    else
        s->idle_head = i;
    s->idle_tail = i;
    s->idle_count++;
    if (s->idle_count <= s->idle_max)
        return -1;
    struct pvfs_inode *old = s->idle_head;
    idle_unlink(s, old);
    int fd = old->fd;
    old->fd = -1;
    return fd;
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
                                  uint32_t mode)
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
    s->proc_fd = -1;
    pthread_mutex_init(&s->mlock, NULL);
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

/* ---- file handles -------------------------------------------------------------------- */

#define HANDLE_HEAD 12                 /* mount id (u64), type (i32) */

struct handle_buf {
    struct file_handle fh;
    unsigned char bytes[MAX_HANDLE_SZ];
};

/* The directory fd kept for mount mnt_id, or -1.  Kept until the store closes. */
static int mount_fd(struct pvfs_store *s, uint64_t mnt_id)
{
    int fd = -1;
    pthread_mutex_lock(&s->mlock);
    for (uint32_t j = 0; j < s->nmounts; j++)
        if (s->mounts[j].mnt_id == mnt_id)
            fd = s->mounts[j].fd;
    pthread_mutex_unlock(&s->mlock);
    return fd;
}

/* Keep a directory fd for mount mnt_id, reopened from dir_fd (O_PATH is fine). */
static int remember_mount(struct pvfs_store *s, uint64_t mnt_id, int dir_fd)
{
    int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = 0;
    pthread_mutex_lock(&s->mlock);
    int known = 0;
    for (uint32_t j = 0; j < s->nmounts; j++)
        known |= s->mounts[j].mnt_id == mnt_id;
    if (!known) {
        struct mount_fd *m = realloc(s->mounts, (s->nmounts + 1) * sizeof(*m));
        if (m) {
            s->mounts = m;
            m[s->nmounts++] = (struct mount_fd){mnt_id, fd};
            fd = -1;
        } else {
            rc = -ENOMEM;
        }
    }
    pthread_mutex_unlock(&s->mlock);
    if (fd >= 0)
        close(fd);
    return rc;
}

static void close_mounts(struct pvfs_store *s)
{
    pthread_mutex_lock(&s->mlock);
    struct mount_fd *m = s->mounts;
    uint32_t n = s->nmounts;
    s->mounts = NULL;
    s->nmounts = 0;
    pthread_mutex_unlock(&s->mlock);
    for (uint32_t j = 0; j < n; j++)
        close(m[j].fd);
    free(m);
}

uint32_t pvfs_store_mounts(struct pvfs_store *s)
{
    pthread_mutex_lock(&s->mlock);
    uint32_t n = s->nmounts;
    pthread_mutex_unlock(&s->mlock);
    return n;
}

/* The file handle of what fd refers to, and its mount, with that mount's fd known (a
 * directory's fd is remembered for a mount met for the first time).  0 or -errno. */
static int handle_of(struct pvfs_store *s, int fd, uint32_t mode, struct handle_buf *h,
                     int *mnt)
{
    h->fh.handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(fd, "", &h->fh, mnt, AT_EMPTY_PATH) < 0)
        return -errno;
    if (mount_fd(s, (uint64_t)*mnt) >= 0)
        return 0;
    if (!S_ISDIR(mode))
        return -EOPNOTSUPP;            /* no directory of that mount to open handles with */
    return remember_mount(s, (uint64_t)*mnt, fd);
}

int pvfs_store_make_handle(struct pvfs_store *s, int fd, uint32_t mode, uint8_t *out)
{
    if (s->file_handles == PVFS_HANDLES_NEVER)
        return 0;
    struct handle_buf h;
    int mnt;
    int rc = handle_of(s, fd, mode, &h, &mnt);
    if (rc < 0)
        return s->file_handles == PVFS_HANDLES_MANDATORY ? rc : 0;
    uint64_t m = htole64((uint64_t)mnt);
    uint32_t t = htole32((uint32_t)h.fh.handle_type);
    memcpy(out, &m, 8);
    memcpy(out + 8, &t, 4);
    memcpy(out + HANDLE_HEAD, h.fh.f_handle, h.fh.handle_bytes);
    return HANDLE_HEAD + (int)h.fh.handle_bytes;
}

int pvfs_store_set_file_handles(struct pvfs_store *s, int mode, uint32_t idle_fds)
{
    if (mode < PVFS_HANDLES_NEVER || mode > PVFS_HANDLES_MANDATORY)
        return -EINVAL;
    s->file_handles = mode;
    s->idle_max = idle_fds;
    if (mode == PVFS_HANDLES_NEVER)
        return 0;
    struct handle_buf h;
    int mnt;
    int rc = handle_of(s, s->root->fd, s->root->mode, &h, &mnt);
    if (rc < 0)
        s->file_handles = PVFS_HANDLES_NEVER;
    return rc;
}

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
        idle_unlink(s, i);
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
    close_mounts(s);
}

void pvfs_store_unref(struct pvfs_store *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL))
        return;
    clear(s, 1);
    free(s->by_id.slots);
    free(s->by_key.slots);
    close_mounts(s);
    pthread_mutex_destroy(&s->mlock);
    pthread_mutex_destroy(&s->ilock);
    pthread_mutex_destroy(&s->hlock);
    if (s->proc_fd >= 0)
        close(s->proc_fd);
    free(s);
}

/* ---- inodes -------------------------------------------------------------------------- */

/* i's handle is stale: i leaves the identity index, so the file that has its identity now
 * gets a nodeid of its own; i's nodeid stays, answering ESTALE, until the guest forgets it. */
static void unindex(struct pvfs_store *s, struct pvfs_inode *i)
{
    pthread_mutex_lock(&s->ilock);
    int j = ix_find(&s->by_key, 0, &i->key);
    if (j >= 0 && s->by_key.slots[j] == i)
        ix_remove(&s->by_key, j);
    pthread_mutex_unlock(&s->ilock);
}

/* With file handles, an identity (st_dev, st_ino, mnt_id) the store holds may belong to a
 * file deleted since, whose inode number the file system has given to a new file: nothing
 * kept the old one alive, as an O_PATH fd would have.  Every open of a stale handle
 * unindexes its inode (pvfs_store_open_inode), so the guest's retry of a request that got
 * ESTALE (Linux retries a path walk once, revalidating) finds the new file.  A LOOKUP checks
 * before trusting the identity: a held file-handle inode without an open fd is opened by
 * its handle (which carries the inode's generation); alive, its fd stays idle for the
 * request that usually follows.  An inode with an fd open is pinned and needs no check.
 * May call open_by_handle_at: C callers run it marked busy. */
static void check_identity(struct pvfs_store *s, const struct inode_key *k)
{
    if (s->file_handles == PVFS_HANDLES_NEVER)
        return;
    pthread_mutex_lock(&s->ilock);
    int j = ix_find(&s->by_key, 0, k);
    struct pvfs_inode *i = j < 0 ? NULL : s->by_key.slots[j];
    if (i && (i->fd >= 0 || !i->handle_len))
        i = NULL;
    if (i)
        __atomic_add_fetch(&i->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->ilock);
    if (!i)
        return;
    pvfs_store_open_inode(s, i);      /* unindexes i if stale */
    pvfs_inode_put(s, i);
}

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
        if (handle_len) {            /* the fd just opened stays, idle, if the store keeps any */
            i->fd = fd;
            fd = idle_add(s, i);
        } else {
            fd = -1;                 /* the inode's now */
        }
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
    check_identity(s, &k);
    return lookup(s, fd, &k, mode, handle_len ? handle : NULL, handle_len);
}

static void key_of(const struct statx *sx, struct inode_key *k)
{
    k->dev = makedev(sx->stx_dev_major, sx->stx_dev_minor);
    k->ino = sx->stx_ino;
    k->mnt_id = sx->stx_mnt_id;
}

uint64_t pvfs_store_count_known(struct pvfs_store *s, const struct statx *sx, int verify)
{
    struct inode_key k;
    key_of(sx, &k);
    if (verify)
        check_identity(s, &k);
    pthread_mutex_lock(&s->ilock);
    uint64_t nodeid = count_held(s, &k);
    pthread_mutex_unlock(&s->ilock);
    return nodeid;
}

uint64_t pvfs_store_count_or_add(struct pvfs_store *s, int fd, const struct statx *sx)
{
    struct inode_key k;
    key_of(sx, &k);
    if (s->file_handles == PVFS_HANDLES_NEVER)
        return lookup(s, fd, &k, sx->stx_mode, NULL, 0);
    /* a handle is made only for a file the store does not hold (a racing lookup of the
     * same file may register it meanwhile: lookup() then counts that one) */
    uint64_t nodeid = pvfs_store_count_known(s, sx, 1);
    if (nodeid) {
        close(fd);
        return nodeid;
    }
    uint8_t h[PVFS_HANDLE_ROOM];
    int len = pvfs_store_make_handle(s, fd, sx->stx_mode, h);
    if (len < 0) {
        close(fd);
        errno = -len;
        return 0;
    }
    nodeid = lookup(s, fd, &k, sx->stx_mode, len ? h : NULL, (uint32_t)len);
    if (!nodeid)
        errno = ENOMEM;
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
    idle_unlink(s, i);                 /* borrowed: not idle any more */
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

int pvfs_store_open_inode(struct pvfs_store *s, struct pvfs_inode *i)
{
    pthread_mutex_lock(&s->ilock);
    int fd = i->fd;
    pthread_mutex_unlock(&s->ilock);
    if (fd >= 0)
        return fd;
    if (i->handle_len <= HANDLE_HEAD)
        return -EIO;                   /* neither fd nor handle: lost in migration */
    uint64_t m;
    uint32_t t;
    memcpy(&m, i->handle, 8);
    memcpy(&t, i->handle + 8, 4);
    int mfd = mount_fd(s, le64toh(m));
    if (mfd < 0)
        return -ESTALE;
    struct handle_buf h;
    uint32_t n = i->handle_len - HANDLE_HEAD;
    if (n > MAX_HANDLE_SZ)
        return -ESTALE;
    h.fh.handle_bytes = n;
    h.fh.handle_type = (int)le32toh(t);
    memcpy(h.fh.f_handle, i->handle + HANDLE_HEAD, n);
    fd = open_by_handle_at(mfd, &h.fh, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ESTALE)
            unindex(s, i);
        return -e;
    }
    int used = pvfs_inode_set_fd(s, i, fd);
    if (used != fd)
        close(fd);
    return used;
}

void pvfs_inode_put(struct pvfs_store *s, struct pvfs_inode *i)
{
    if (!i->handle_len) {
        inode_put(i);
        return;
    }
    /* A file-handle inode's fd is open only while borrowed, or idle among the idle_max used
     * last: the last borrower of one still in the store makes it idle.  "Last" is decided
     * with the reference given back under ilock (borrowers take theirs under it too): two
     * borrowers putting it back at once cannot both see the other's reference and leave
     * its fd open, off the idle list. */
    int close_fd = -1;
    pthread_mutex_lock(&s->ilock);
    unsigned left = __atomic_sub_fetch(&i->refs, 1, __ATOMIC_ACQ_REL);
    if (left == 1 && i->in_store && i->fd >= 0 && !i->idle)
        close_fd = idle_add(s, i);
    pthread_mutex_unlock(&s->ilock);
    if (close_fd >= 0)
        close(close_fd);
    if (left == 0)                /* the store let it go first (FORGET): the fd closes here */
        inode_free(i);
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
    idle_unlink(s, i);                 /* its fd closes with its last reference */
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
