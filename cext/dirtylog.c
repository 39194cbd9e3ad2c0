#define _GNU_SOURCE
#include "dirtylog.h"
#include "vq.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct pvfs_dirty pvfs_dirty_none = {.on = 0, .refcnt = 1, .lock = PTHREAD_RWLOCK_INITIALIZER};

struct pvfs_dirty *pvfs_dirty_new(void)
{
    struct pvfs_dirty *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->refcnt = 1;
    pthread_rwlock_init(&d->lock, NULL);
    return d;
}

static void unmap_log(void *map, uint64_t len)
{
    if (map)
        munmap(map, (size_t)len);
}

void pvfs_dirty_unref(struct pvfs_dirty *d)
{
    if (!d || d == &pvfs_dirty_none)
        return;
    if (__atomic_sub_fetch(&d->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        unmap_log(d->map, d->map_len);
        pthread_rwlock_destroy(&d->lock);
        free(d);
    }
}

void pvfs_dirty_ref(struct pvfs_dirty *d)
{
    if (d != &pvfs_dirty_none)
        __atomic_fetch_add(&d->refcnt, 1, __ATOMIC_RELAXED);
}

void pvfs_dirty_set_on(struct pvfs_dirty *d, int on)
{
    __atomic_store_n(&d->on, !!on, __ATOMIC_SEQ_CST);
}

int pvfs_dirty_is_on(struct pvfs_dirty *d)
{
    return __atomic_load_n(&d->on, __ATOMIC_RELAXED);
}

int pvfs_dirty_set_log(struct pvfs_dirty *d, int fd, uint64_t size, uint64_t offset, uint64_t min_size)
{
    uint64_t end;
    struct stat st;
    long ps = sysconf(_SC_PAGESIZE);

    if (d == &pvfs_dirty_none || size == 0 || size < min_size ||
        __builtin_add_overflow(offset, size, &end) || end > (uint64_t)SIZE_MAX / 2)
        return -EINVAL;
    if (fstat(fd, &st) < 0)
        return -errno;
    /* A log larger than its file would SIGBUS us on the first bit past EOF. */
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < end)
        return -EINVAL;
    uint64_t start = offset & ~(uint64_t)(ps - 1);
    uint64_t len = end - start;
    void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)start);
    if (p == MAP_FAILED)
        return -errno;

    pthread_rwlock_wrlock(&d->lock);
    void *old = d->map;
    uint64_t old_len = d->map_len;
    d->map = p;
    d->map_len = len;
    d->bits = (uint8_t *)p + (offset - start);
    d->size = size;
    pthread_rwlock_unlock(&d->lock);
    /* Every writer that could see the old log held the lock for reading: none is left. */
    unmap_log(old, old_len);
    return 0;
}

void pvfs_dirty_clear_log(struct pvfs_dirty *d)
{
    if (d == &pvfs_dirty_none)
        return;
    pthread_rwlock_wrlock(&d->lock);
    void *old = d->map;
    uint64_t old_len = d->map_len;
    d->map = NULL;
    d->map_len = 0;
    d->bits = NULL;
    d->size = 0;
    pthread_rwlock_unlock(&d->lock);
    unmap_log(old, old_len);
}

uint64_t pvfs_dirty_log_size(struct pvfs_dirty *d)
{
    pthread_rwlock_rdlock(&d->lock);
    uint64_t s = d->size;
    pthread_rwlock_unlock(&d->lock);
    return s;
}

uint64_t pvfs_dirty_overflow(struct pvfs_dirty *d)
{
    return __atomic_load_n(&d->overflow, __ATOMIC_RELAXED);
}

struct mark {
    struct pvfs_dirty *d;
    uint8_t *bits;
    uint64_t size, first, last;
};

static void mark_bits(void *arg)
{
    struct mark *m = arg;
    uint8_t *bits = m->bits;
    uint64_t size = m->size, last = m->last;
    uint64_t page = m->first;
    while (page <= last) {
        uint64_t byte = page >> 3;
        if (byte >= size) {
            __atomic_fetch_add(&m->d->overflow, last - page + 1, __ATOMIC_RELAXED);
            break;
        }
        /* The bits of this byte from page to min(last, the byte's last page). */
        unsigned lo = page & 7;
        unsigned hi = (last >> 3) == byte ? (unsigned)(last & 7) : 7;
        uint8_t mask = (uint8_t)((0xFFu >> (7 - hi)) & (0xFFu << lo));
        __atomic_fetch_or(&bits[byte], mask, __ATOMIC_RELAXED);
        if (page + (hi - lo) + 1 < page)
            break; /* the last page of the address space */
        page += (hi - lo) + 1;
    }
}

void pvfs_dirty_mark(struct pvfs_dirty *d, uint64_t gpa, uint64_t len)
{
    if (len == 0)
        return;
    struct mark m = {.d = d, .first = gpa >> PVFS_LOG_PAGE_SHIFT,
                     .last = (gpa + len - 1 < gpa ? UINT64_MAX : gpa + len - 1) >> PVFS_LOG_PAGE_SHIFT};
    pthread_rwlock_rdlock(&d->lock);
    m.bits = d->bits;
    m.size = d->size;
    if (m.bits) {
        /* The data was written before this: make it visible before the bit. */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        /* The log is the front-end's file: truncated under us, a bit's page is gone
         * (SIGBUS).  That costs the marks, not the daemon. */
        if (pvfs_sigbus_guard(mark_bits, &m) < 0)
            __atomic_fetch_add(&d->faults, 1, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&d->lock);
}

uint64_t pvfs_dirty_faults(struct pvfs_dirty *d)
{
    return __atomic_load_n(&d->faults, __ATOMIC_RELAXED);
}

void pvfs_dirty_log_write(struct pvfs_dirty *d, uint64_t gpa, uint64_t len)
{
    if (pvfs_dirty_active(d))
        pvfs_dirty_mark(d, gpa, len);
}
