/* Guest memory table: the regions a vhost-user front-end shares with us.
 *
 * A table is immutable once built and reference counted, as are the regions in it.  The
 * control thread builds a new table for every SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG and
 * swaps it into the virtqueues; a request popped from a ring holds a reference to the table
 * it was translated with, so a region is unmapped only after the last request that could
 * point into it has completed.  That lets the control connection install a new table
 * without waiting for workers (which may themselves be waiting for the front-end).
 *
 * Every guest address the daemon dereferences goes through pvfs_mem_gpa_to_iov() or
 * pvfs_mem_uva_to_ptr(): both check the whole range [addr, addr+len) against the table,
 * with overflow checks, and return nothing for a range that is not entirely mapped.
 */
#ifndef PVFS_MEM_H
#define PVFS_MEM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>

#define PVFS_MAX_REGIONS 512

struct pvfs_region;
struct pvfs_mem;

/* CFFI-BEGIN */
struct pvfs_region_info {
    uint64_t gpa;          /* guest physical address of the region */
    uint64_t size;         /* bytes */
    uint64_t uva;          /* front-end virtual address (ring addresses use these) */
    uint64_t mmap_offset;  /* offset of the region in the fd */
};

/* mmap a region from fd (MAP_SHARED, read-write).  Returns NULL and sets *err to a negative
 * errno (the fd is too small, the range overflows, mmap failed).  The fd is not kept. */
struct pvfs_region *pvfs_region_map(int fd, const struct pvfs_region_info *info, int *err);
void pvfs_region_unref(struct pvfs_region *r);
void pvfs_region_get_info(const struct pvfs_region *r, struct pvfs_region_info *out);
/* Host address of the region's first byte (for the front-end side and for tests). */
uintptr_t pvfs_region_host(const struct pvfs_region *r);

/* Build a table from n regions (each gains a reference).  Regions may not overlap in guest
 * physical space; returns NULL with *err = -EINVAL if they do, -E2BIG past the limit. */
struct pvfs_mem *pvfs_mem_new(struct pvfs_region *const *regions, unsigned n, int *err);
void pvfs_mem_ref(struct pvfs_mem *m);
void pvfs_mem_unref(struct pvfs_mem *m);
unsigned pvfs_mem_count(const struct pvfs_mem *m);
struct pvfs_region *pvfs_mem_region(const struct pvfs_mem *m, unsigned i);

/* Translate a guest-physical range into at most max iovecs (a range may span regions).
 * Returns the number of iovecs, or -EFAULT if any byte is unmapped, -E2BIG if more than
 * max iovecs would be needed. */
int pvfs_mem_gpa_to_iov(const struct pvfs_mem *m, uint64_t gpa, uint64_t len,
                        struct iovec *iov, unsigned max);
/* Translate a front-end virtual range that must lie inside one region; 0 if it does not. */
uintptr_t pvfs_mem_uva_to_ptr(const struct pvfs_mem *m, uint64_t uva, uint64_t len);
/* Same for a guest-physical range (for tests and the front-end). */
uintptr_t pvfs_mem_gpa_to_ptr(const struct pvfs_mem *m, uint64_t gpa, uint64_t len);
/* The guest-physical address of a host address inside one of the table's regions (a
 * reverse translation, for dirty logging: regions are separate mappings, so it is unique);
 * 0 and *gpa set, or -EFAULT. */
int pvfs_mem_host_to_gpa(const struct pvfs_mem *m, const void *host, uint64_t *gpa);
/* Copy between a guest-physical range and a host buffer; 0 or -EFAULT. */
int pvfs_mem_read(const struct pvfs_mem *m, uint64_t gpa, void *buf, uint64_t len);
int pvfs_mem_write(const struct pvfs_mem *m, uint64_t gpa, const void *buf, uint64_t len);
/* CFFI-END */

#endif
