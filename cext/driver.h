/* Driver side of a split virtqueue: what a guest's virtio driver does.  Used by
 * pyvirtiofsd.frontend (tests, fuzzing, benchmarks) to drive any vhost-user back-end
 * without a VM.  The rings live in memory the front-end shares with the back-end; all
 * pointers here are the front-end's own mappings of it.
 */
#ifndef PVFS_DRIVER_H
#define PVFS_DRIVER_H

#include <stdint.h>

/* CFFI-BEGIN */
struct pvfs_drv;

struct pvfs_drv *pvfs_drv_new(unsigned num, uintptr_t desc, uintptr_t avail, uintptr_t used,
                              int event_idx);
void pvfs_drv_free(struct pvfs_drv *q);
unsigned pvfs_drv_num_free(struct pvfs_drv *q);

/* Add a chain of n_out device-readable then n_in device-writable buffers (guest-physical
 * addresses).  With indirect_gpa != 0 the chain goes into an indirect table written at
 * indirect_host (guest address indirect_gpa), taking one ring descriptor.  Returns the head
 * id or -ENOSPC.  The chain is made available at once (avail->idx is published). */
int pvfs_drv_add(struct pvfs_drv *q, const uint64_t *addr, const uint32_t *len,
                 unsigned n_out, unsigned n_in, uint64_t indirect_gpa, uintptr_t indirect_host);
/* Raw access for hostile-input tests: write descriptor i, and make head available. */
void pvfs_drv_write_desc(struct pvfs_drv *q, unsigned i, uint64_t addr, uint32_t len,
                         uint16_t flags, uint16_t next);
void pvfs_drv_publish_head(struct pvfs_drv *q, uint16_t head);
/* Whether the device wants a kick for what was published since the last call. */
int pvfs_drv_kick_needed(struct pvfs_drv *q);
/* Take one used element: 1 with id/len set, 0 if none.  Frees the chain's descriptors
 * (not for raw heads: pass them back with pvfs_drv_reclaim_raw instead). */
int pvfs_drv_get_used(struct pvfs_drv *q, uint32_t *id, uint32_t *len);
/* Ask for an interrupt at the next used element; returns 1 if some are already there. */
int pvfs_drv_enable_cb(struct pvfs_drv *q);
uint16_t pvfs_drv_used_idx(struct pvfs_drv *q);
uint16_t pvfs_drv_avail_idx(struct pvfs_drv *q);
/* Wait (GIL released) until fd is readable or timeout_ms passes; read and clear it.
 * Returns 1, 0 on timeout, -errno. */
int pvfs_eventfd_wait(int fd, int timeout_ms);
/* CFFI-END */

#endif
