/* Leader/follower scheduling of the threads that serve one request queue.
 *
 * Of the threads serving a queue, one -- the leader -- waits for kicks and pops; the
 * others wait on a condition variable.  Whatever a request may block on, the queue stays
 * watched:
 *
 * - Before I/O that may block for long (a large READ or WRITE, a READ whose pages are not
 *   all cached) the leader hands the ring over and wakes a follower (pvfs_lead_handoff).
 * - A syscall that is quick on a healthy file system but may block on a sick one (a small
 *   WRITE; the fstat, statx, openat2, unlink, mkdir... of metadata served in C) the leader
 *   does itself, marked busy (pvfs_lead_busy / pvfs_lead_done): a follower takes the ring
 *   from it once it has been busy for PVFS_HOT_STALL_NS.  So a hung NFS server delays the
 *   other requests of the queue by that much, not until it answers.
 * - For a request Python serves the leader gives up the ring without waking anyone
 *   (Python runs one thread at a time anyway); should Python take PVFS_HOT_STALL_NS, a
 *   follower takes the ring over (pvfs_hotq_to_python).
 *
 * - A request that may block (metadata served in C, or by Python on the queue thread) is
 *   only taken on by the queue's threads while another of them is free to take the ring
 *   over (pvfs_hotq_spare); otherwise it goes to Python's worker pool.  So however many
 *   requests for a hung file system arrive, the queue keeps a thread.
 *
 * With one thread per queue (PYVIRTIOFSD_HOT_THREADS=1) there is no follower to take over.
 */
#ifndef PVFS_LEADER_H
#define PVFS_LEADER_H

#include <stdint.h>
#include "vq.h"

/* CFFI-BEGIN */
struct pvfs_hotq;
/* The state shared by the threads (how many) serving one queue. */
struct pvfs_hotq *pvfs_hotq_new(unsigned threads);
void pvfs_hotq_free(struct pvfs_hotq *q);
/* Every thread of the queue returns PVFS_HOT_RUN_STOP from pvfs_hot_run from now on (set
 * before joining them; a restarted queue gets a new pvfs_hotq). */
void pvfs_hotq_stop(struct pvfs_hotq *q);
/* A disabled ring (SET_VRING_ENABLE 0): pvfs_hot_run returns PVFS_HOT_RUN_STOP instead of
 * popping. */
void pvfs_hotq_set_paused(struct pvfs_hotq *q, int paused);
/* CFFI-END */

/* How long the leader may be busy in a syscall before a follower takes over, and how often
 * followers look. */
#define PVFS_HOT_STALL_NS 10000000ull   /* 10 ms */

/* One request's view of the queue it came from: q NULL (pvfs_hot_serve, tests) means
 * nobody to hand over to. */
struct pvfs_lead {
    struct pvfs_hotq *q;
    struct pvfs_vq *vq;
    int leading;      /* this thread owns the ring */
    uint64_t gen;     /* while busy: see pvfs_lead_busy */
};

/* Become the leader: 0, or nonzero (PVFS_HOT_RUN_STOP) if the queue is stopping or paused. */
int pvfs_lead(struct pvfs_hotq *q);
/* The leader gives the ring up to serve a request in Python on this thread (a follower
 * takes it over only if that takes PVFS_HOT_STALL_NS), and is back from it. */
void pvfs_hotq_to_python(struct pvfs_hotq *q);
void pvfs_hotq_from_python(struct pvfs_hotq *q);
/* Give the ring up (wake_one: and wake a follower to take it). */
void pvfs_unlead(struct pvfs_hotq *q, int wake_one);
/* Is another thread of the queue free to take the ring should this one block (or is there
 * only one)?  A request that may block is served on the queue's threads only then. */
int pvfs_hotq_spare(struct pvfs_hotq *q);
/* A thread enters (+1) or leaves (-1) something that may block. */
void pvfs_hotq_blocked(struct pvfs_hotq *q, int delta);
/* Stopping or paused (a leader checks between requests). */
int pvfs_hotq_halted(struct pvfs_hotq *q);
/* Before I/O that may block for long: hand the ring over now. */
void pvfs_lead_handoff(struct pvfs_lead *l);
/* Around a syscall that may block on a sick file system: a follower takes the ring over
 * if it takes longer than PVFS_HOT_STALL_NS (l->leading is 0 afterwards then). */
void pvfs_lead_busy(struct pvfs_lead *l);
void pvfs_lead_done(struct pvfs_lead *l);

#endif
