/* Device side of a split virtqueue (virtio 1.x, "split-ring"), and the requests popped
 * from it.
 *
 * Guest memory is hostile: every descriptor is copied out of the table once before use
 * (the guest may rewrite it concurrently), every buffer is translated through the memory
 * table with bounds checks, chains are limited in length (a loop ends as an error), nested
 * indirect tables and readable-after-writable buffers are errors.  A bad chain is an error
 * on that request only (it is returned to the driver with used length 0); a bad *ring*
 * (an avail index that jumps by more than the queue size, a head index out of range) marks
 * the queue broken and it is not touched again until it is set up anew.
 *
 * Locking: pop and complete take the queue's mutex briefly; the control thread takes it to
 * change the memory table, addresses or call fd.  Requests hold references to the queue
 * and to the memory table they were translated with.
 */
#ifndef PVFS_VQ_H
#define PVFS_VQ_H

#include <stdint.h>
#include <sys/uio.h>
#include "mem.h"
#include "dirtylog.h"

#define PVFS_MAX_IOV 1024 /* IOV_MAX: a chain may not need more iovecs than preadv takes */

/* Run fn(arg) under the SIGBUS recovery point that guards our copies of guest memory:
 * -EFAULT if it touched a page that vanished (a truncated file), 0 otherwise.  For other
 * memory the front-end shares (the dirty log).  fn must not hold locks it takes. */
int pvfs_sigbus_guard(void (*fn)(void *), void *arg);

/* CFFI-BEGIN */
#define PVFS_VQ_MAX_SIZE 32768

/* Why a chain was refused (pvfs_req.err). */
enum {
    PVFS_CHAIN_OK = 0,
    PVFS_CHAIN_BAD_NEXT = 1,       /* next index outside the table */
    PVFS_CHAIN_TOO_LONG = 2,       /* more descriptors than the table holds: a loop */
    PVFS_CHAIN_BAD_ADDR = 3,       /* soft: a buffer is not in guest memory; the request
                                      keeps its shape with a hole that data access refuses */
    PVFS_CHAIN_NESTED_INDIRECT = 4,
    PVFS_CHAIN_BAD_INDIRECT = 5,   /* bad table length, INDIRECT|NEXT, table not mapped */
    PVFS_CHAIN_READ_AFTER_WRITE = 6,
    PVFS_CHAIN_TOO_MANY_IOV = 7,
    PVFS_CHAIN_TOO_BIG = 8,        /* total length overflows 32 bits */
};

struct pvfs_vq;

struct pvfs_req {
    struct pvfs_vq *vq;
    uint16_t head;        /* descriptor index returned on the used ring */
    uint16_t err;         /* PVFS_CHAIN_*: nonzero means "complete me with 0 and move on" */
    uint32_t in_len;      /* device-readable bytes */
    uint32_t out_len;     /* device-writable bytes */
    uint32_t n_in;        /* iovecs 0..n_in-1 are readable */
    uint32_t n_out;       /* iovecs n_in..n_in+n_out-1 are writable */
    uint32_t session;     /* the hot path's session number when it popped this (hotpath.h) */
    struct pvfs_mem *mem;              // C only: the table the iovecs point into (a reference)
    int holes;                         // C only: some iovecs are holes (iov_base NULL)
    struct pvfs_req *next_free;        // C only
    struct iovec iov[PVFS_MAX_IOV];    // C only
    /*cffi: ...; */
};

struct pvfs_vq *pvfs_vq_new(unsigned index);
/* Drop the caller's reference; the queue is freed when its last request completes. */
void pvfs_vq_unref(struct pvfs_vq *vq);

/* Configuration (control thread). */
int pvfs_vq_set_num(struct pvfs_vq *vq, unsigned num);          /* -EINVAL unless 2^k <= 32768 */
void pvfs_vq_set_base(struct pvfs_vq *vq, uint16_t last_avail_idx);
uint16_t pvfs_vq_get_base(struct pvfs_vq *vq);
/* Ring addresses are front-end virtual addresses; translated now and again on every new
 * memory table.  Returns 0, or -EFAULT/-EINVAL if they cannot (yet) be translated. */
int pvfs_vq_set_addr(struct pvfs_vq *vq, uint64_t desc_uva, uint64_t used_uva, uint64_t avail_uva);
int pvfs_vq_set_mem(struct pvfs_vq *vq, struct pvfs_mem *mem);
void pvfs_vq_set_event_idx(struct pvfs_vq *vq, int on);
/* The device's dirty log (dirtylog.h), shared by its queues; set before the queue starts.
 * The queue takes a reference.  Every write into guest memory below is logged in it while
 * logging is on: reply bytes (pvfs_req_write_out, pvfs_req_preadv, pvfs_req_preadv2_once)
 * and, if pvfs_vq_set_log_addr turned it on, the used ring. */
void pvfs_vq_set_dirty(struct pvfs_vq *vq, struct pvfs_dirty *dirty);
/* SET_VRING_ADDR's VHOST_VRING_F_LOG and log address (the used ring's guest-physical
 * address): used-ring writes are logged at log_gpa + their offset in the ring. */
void pvfs_vq_set_log_addr(struct pvfs_vq *vq, int on, uint64_t log_gpa);
/* The queue takes ownership of fd (-1: none) and closes the previous one. */
void pvfs_vq_set_call_fd(struct pvfs_vq *vq, int fd);
/* Start/stop: a stopped queue never touches guest memory; completions are dropped. */
int pvfs_vq_start(struct pvfs_vq *vq);   /* -EFAULT if the ring is not mapped */
void pvfs_vq_stop(struct pvfs_vq *vq);
int pvfs_vq_is_broken(struct pvfs_vq *vq);
unsigned pvfs_vq_inflight(struct pvfs_vq *vq);
/* Buffers the driver made available that nobody popped yet (0 if stopped or broken). */
unsigned pvfs_vq_pending(struct pvfs_vq *vq);
/* Counters for logs and tests. */
uint64_t pvfs_vq_stat_popped(struct pvfs_vq *vq);
uint64_t pvfs_vq_stat_signalled(struct pvfs_vq *vq);
uint64_t pvfs_vq_stat_bad_chains(struct pvfs_vq *vq);

/* Worker side.  pop: 1 and *out set, 0 if the ring is empty, -EIO if the queue is broken
 * (or stopped).  Chain errors still return 1 with (*out)->err set. */
int pvfs_vq_pop(struct pvfs_vq *vq, struct pvfs_req **out);
/* Put a used element, signal the driver if it wants it, release the request. */
void pvfs_req_complete(struct pvfs_req *req, uint32_t used_len);
/* The same without the interrupt: the decision waits for pvfs_vq_flush_signal (or the next
 * pvfs_req_complete), so a batch of completions costs the driver one interrupt. */
void pvfs_req_complete_deferred(struct pvfs_req *req, uint32_t used_len);
void pvfs_vq_flush_signal(struct pvfs_vq *vq);
/* After draining: ask for kicks again (EVENT_IDX: publish avail_event).  Returns 1 if more
 * buffers arrived meanwhile (pop again), 0 otherwise. */
int pvfs_vq_enable_notify(struct pvfs_vq *vq);

/* Block (GIL released) until kick_fd or stop_fd is readable or timeout_ms passes (-1:
 * forever).  Clears kick_fd.  Returns 1 kick, 2 stop, 0 timeout, -errno. */
int pvfs_wait_kick(int kick_fd, int stop_fd, int timeout_ms);

/* Data access on a request.  Offsets are within the readable ("in") or writable ("out")
 * area.  All return bytes moved or -errno. */
int64_t pvfs_req_read_in(struct pvfs_req *req, uint64_t offset, void *buf, uint64_t size);
int64_t pvfs_req_write_out(struct pvfs_req *req, uint64_t offset, const void *buf, uint64_t size);
int64_t pvfs_req_preadv(struct pvfs_req *req, int fd, uint64_t out_offset, uint64_t size, int64_t file_offset);
int64_t pvfs_req_pwritev(struct pvfs_req *req, int fd, uint64_t in_offset, uint64_t size, int64_t file_offset);
/* One preadv2 into the writable area with flags (e.g. RWF_NOWAIT): bytes read, which may
 * be short, or -errno (-EAGAIN: it would block).  No retry loop. */
int64_t pvfs_req_preadv2_once(struct pvfs_req *req, int fd, uint64_t out_offset, uint64_t size,
                              int64_t file_offset, int flags);
/* CFFI-END */

#endif
