/* Dirty-page logging for live migration (vhost-user SET_LOG_BASE, VHOST_F_LOG_ALL).
 *
 * While the front-end migrates the VM, every byte we write into guest memory must be marked
 * in a bitmap it shares with us: one bit per 4 KiB page of guest-physical address space, bit
 * (gpa / 4096) % 8 of byte (gpa / 4096) / 8 (the vhost-user spec's layout, the Linux vhost
 * driver's on a little-endian host), set with an atomic OR because the front-end and our
 * other threads share the bytes.  A bit is set after the data it stands for is written, so
 * a front-end that clears the bit and then copies the page cannot miss the write.
 *
 * One struct pvfs_dirty per device, shared by its virtqueues (pvfs_vq_set_dirty).  The
 * only cost while logging is off is one predictable branch on d->on in the functions that
 * write guest memory (vq.c).  The log itself is swapped under a rwlock: writers hold it
 * for reading while they set bits, so the control thread, having taken it for writing once,
 * knows no thread still uses the old log and unmaps it before it replies to SET_LOG_BASE.
 * Bits past the end of the log are never written; they are counted (pvfs_dirty_overflow).
 */
#ifndef PVFS_DIRTYLOG_H
#define PVFS_DIRTYLOG_H

#include <pthread.h>
#include <stdint.h>

#define PVFS_LOG_PAGE_SHIFT 12

struct pvfs_dirty {
    int on;                    /* VHOST_F_LOG_ALL negotiated: read without the lock */
    int refcnt;
    pthread_rwlock_t lock;     /* held for reading while bits are set */
    uint8_t *bits;             /* the log's first byte, or NULL */
    uint64_t size;             /* bytes of log */
    void *map;                 /* what mmap returned */
    uint64_t map_len;
    uint64_t overflow;         /* marks that fell past the log's end */
    uint64_t faults;           /* marks lost to a log page that vanished (SIGBUS) */
};

static inline int pvfs_dirty_active(const struct pvfs_dirty *d)
{
    return __builtin_expect(__atomic_load_n(&d->on, __ATOMIC_RELAXED), 0);
}

/* Mark the pages of guest-physical [gpa, gpa+len) (len 0: nothing).  Call only when
 * pvfs_dirty_active(d). */
void pvfs_dirty_mark(struct pvfs_dirty *d, uint64_t gpa, uint64_t len);
void pvfs_dirty_ref(struct pvfs_dirty *d);

/* The device every new queue starts with: logging off, no log, never changed. */
extern struct pvfs_dirty pvfs_dirty_none;

/* CFFI-BEGIN */
struct pvfs_dirty *pvfs_dirty_new(void);
void pvfs_dirty_unref(struct pvfs_dirty *d);
/* Logging on or off (SET_FEATURES with or without VHOST_F_LOG_ALL). */
void pvfs_dirty_set_on(struct pvfs_dirty *d, int on);
int pvfs_dirty_is_on(struct pvfs_dirty *d);
/* SET_LOG_BASE: map [offset, offset+size) of fd (shared, read-write; the fd is not kept)
 * and make it the log, replacing and unmapping the previous one once no thread uses it.
 * min_size: bytes the current memory table needs (a smaller log is refused).  Returns 0,
 * or -EINVAL (size 0, smaller than min_size, a range that overflows or lies past the end of
 * the file), or mmap's -errno; the previous log stays on failure. */
int pvfs_dirty_set_log(struct pvfs_dirty *d, int fd, uint64_t size, uint64_t offset, uint64_t min_size);
/* Drop the log (reset). */
void pvfs_dirty_clear_log(struct pvfs_dirty *d);
/* Bytes of the current log (0: none). */
uint64_t pvfs_dirty_log_size(struct pvfs_dirty *d);
/* Marks that fell past the end of the log and were dropped (a page per write: a page
 * written twice counts twice). */
uint64_t pvfs_dirty_overflow(struct pvfs_dirty *d);
/* Marks lost because the log's file was truncated under us (the front-end's doing). */
uint64_t pvfs_dirty_faults(struct pvfs_dirty *d);
/* Mark [gpa, gpa+len) if logging is on (for writes made outside vq.c, and for tests). */
void pvfs_dirty_log_write(struct pvfs_dirty *d, uint64_t gpa, uint64_t len);
/* CFFI-END */

#endif
