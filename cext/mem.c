#define _GNU_SOURCE
#include "mem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct pvfs_region {
    int refcnt;
    struct pvfs_region_info info;
    void *map;         /* what mmap returned */
    size_t map_len;
    uint8_t *host;     /* host address of guest byte info.gpa */
};

struct pvfs_mem {
    int refcnt;
    unsigned n;
    struct pvfs_region *r[]; /* sorted by gpa, non-overlapping */
};

static long page_size(void)
{
    static long ps;
    if (!ps)
        ps = sysconf(_SC_PAGESIZE);
    return ps;
}

struct pvfs_region *pvfs_region_map(int fd, const struct pvfs_region_info *info, int *err)
{
    uint64_t end;
    struct stat st;

    if (info->size == 0 || __builtin_add_overflow(info->mmap_offset, info->size, &end) ||
        info->gpa + info->size < info->gpa || info->uva + info->size < info->uva ||
        info->size > (uint64_t)SIZE_MAX / 2) {
        *err = -EINVAL;
        return NULL;
    }
    /* A region larger than its file would SIGBUS us on first touch past EOF. */
    if (fstat(fd, &st) < 0) {
        *err = -errno;
        return NULL;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < end) {
        *err = -EINVAL;
        return NULL;
    }
    uint64_t start = info->mmap_offset & ~(uint64_t)(page_size() - 1);
    size_t len = (size_t)(end - start);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, (off_t)start);
    if (p == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    struct pvfs_region *r = calloc(1, sizeof(*r));
    if (!r) {
        munmap(p, len);
        *err = -ENOMEM;
        return NULL;
    }
    r->refcnt = 1;
    r->info = *info;
    r->map = p;
    r->map_len = len;
    r->host = (uint8_t *)p + (info->mmap_offset - start);
    *err = 0;
    return r;
}

static void region_ref(struct pvfs_region *r)
{
    __atomic_fetch_add(&r->refcnt, 1, __ATOMIC_RELAXED);
}

void pvfs_region_unref(struct pvfs_region *r)
{
    if (r && __atomic_sub_fetch(&r->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        munmap(r->map, r->map_len);
        free(r);
    }
}

void pvfs_region_get_info(const struct pvfs_region *r, struct pvfs_region_info *out)
{
    *out = r->info;
}

uintptr_t pvfs_region_host(const struct pvfs_region *r)
{
    return (uintptr_t)r->host;
}

static int by_gpa(const void *a, const void *b)
{
    const struct pvfs_region *x = *(struct pvfs_region *const *)a;
    const struct pvfs_region *y = *(struct pvfs_region *const *)b;
    return x->info.gpa < y->info.gpa ? -1 : x->info.gpa > y->info.gpa;
}

struct pvfs_mem *pvfs_mem_new(struct pvfs_region *const *regions, unsigned n, int *err)
{
    if (n > PVFS_MAX_REGIONS) {
        *err = -E2BIG;
        return NULL;
    }
    struct pvfs_mem *m = calloc(1, sizeof(*m) + n * sizeof(m->r[0]));
    if (!m) {
        *err = -ENOMEM;
        return NULL;
    }
    m->refcnt = 1;
    m->n = n;
    memcpy(m->r, regions, n * sizeof(m->r[0]));
    qsort(m->r, n, sizeof(m->r[0]), by_gpa);
    for (unsigned i = 1; i < n; i++) {
        const struct pvfs_region_info *prev = &m->r[i - 1]->info;
        if (prev->gpa + prev->size > m->r[i]->info.gpa) {
            free(m);
            *err = -EINVAL;
            return NULL;
        }
    }
    for (unsigned i = 0; i < n; i++)
        region_ref(m->r[i]);
    *err = 0;
    return m;
}

void pvfs_mem_ref(struct pvfs_mem *m)
{
    __atomic_fetch_add(&m->refcnt, 1, __ATOMIC_RELAXED);
}

void pvfs_mem_unref(struct pvfs_mem *m)
{
    if (m && __atomic_sub_fetch(&m->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        for (unsigned i = 0; i < m->n; i++)
            pvfs_region_unref(m->r[i]);
        free(m);
    }
}

unsigned pvfs_mem_count(const struct pvfs_mem *m)
{
    return m->n;
}

struct pvfs_region *pvfs_mem_region(const struct pvfs_mem *m, unsigned i)
{
    return i < m->n ? m->r[i] : NULL;
}

/* The region containing gpa, by binary search; NULL if none. */
static const struct pvfs_region *find_gpa(const struct pvfs_mem *m, uint64_t gpa)
{
    unsigned lo = 0, hi = m->n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        const struct pvfs_region_info *ri = &m->r[mid]->info;
        if (gpa < ri->gpa)
            hi = mid;
        else if (gpa - ri->gpa >= ri->size)
            lo = mid + 1;
        else
            return m->r[mid];
    }
    return NULL;
}

int pvfs_mem_gpa_to_iov(const struct pvfs_mem *m, uint64_t gpa, uint64_t len,
                        struct iovec *iov, unsigned max)
{
    unsigned n = 0;
    if (gpa + len < gpa)
        return -EFAULT;
    while (len) {
        const struct pvfs_region *r = find_gpa(m, gpa);
        if (!r)
            return -EFAULT;
        if (n == max)
            return -E2BIG;
        uint64_t off = gpa - r->info.gpa;
        uint64_t chunk = r->info.size - off;
        if (chunk > len)
            chunk = len;
        iov[n].iov_base = r->host + off;
        iov[n].iov_len = (size_t)chunk;
        n++;
        gpa += chunk;
        len -= chunk;
    }
    return (int)n;
}

uintptr_t pvfs_mem_uva_to_ptr(const struct pvfs_mem *m, uint64_t uva, uint64_t len)
{
    if (uva + len < uva)
        return 0;
    for (unsigned i = 0; i < m->n; i++) {
        const struct pvfs_region_info *ri = &m->r[i]->info;
        if (uva >= ri->uva && uva - ri->uva < ri->size && len <= ri->size - (uva - ri->uva))
            return (uintptr_t)(m->r[i]->host + (uva - ri->uva));
    }
    return 0;
}

uintptr_t pvfs_mem_gpa_to_ptr(const struct pvfs_mem *m, uint64_t gpa, uint64_t len)
{
    const struct pvfs_region *r = find_gpa(m, gpa);
    if (!r || gpa + len < gpa || len > r->info.size - (gpa - r->info.gpa))
        return 0;
    return (uintptr_t)(r->host + (gpa - r->info.gpa));
}

int pvfs_mem_host_to_gpa(const struct pvfs_mem *m, const void *host, uint64_t *gpa)
{
    uintptr_t p = (uintptr_t)host;
    for (unsigned i = 0; i < m->n; i++) {
        const struct pvfs_region *r = m->r[i];
        uintptr_t h = (uintptr_t)r->host;
        if (p >= h && p - h < r->info.size) {
            *gpa = r->info.gpa + (p - h);
            return 0;
        }
    }
    return -EFAULT;
}

static int copy_gpa(const struct pvfs_mem *m, uint64_t gpa, uint8_t *buf, uint64_t len, int to_guest)
{
    while (len) {
        const struct pvfs_region *r = find_gpa(m, gpa);
        if (!r)
            return -EFAULT;
        uint64_t off = gpa - r->info.gpa;
        uint64_t chunk = r->info.size - off;
        if (chunk > len)
            chunk = len;
        if (to_guest)
            memcpy(r->host + off, buf, chunk);
        else
            memcpy(buf, r->host + off, chunk);
        gpa += chunk;
        buf += chunk;
        len -= chunk;
    }
    return 0;
}

int pvfs_mem_read(const struct pvfs_mem *m, uint64_t gpa, void *buf, uint64_t len)
{
    if (gpa + len < gpa)
        return -EFAULT;
    return copy_gpa(m, gpa, buf, len, 0);
}

int pvfs_mem_write(const struct pvfs_mem *m, uint64_t gpa, const void *buf, uint64_t len)
{
    if (gpa + len < gpa)
        return -EFAULT;
    return copy_gpa(m, gpa, (uint8_t *)buf, len, 1);
}
