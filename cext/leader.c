/* Leader/follower scheduling of a queue's serving threads (see leader.h). */
#define _GNU_SOURCE
#include "leader.h"
#include "hotpath.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct pvfs_hotq {
    pthread_mutex_t m;
    pthread_cond_t c;
    int leader;   /* a thread owns the ring */
    int stop;
    int paused;   /* the ring is disabled: nobody may pop */
    uint64_t busy_since;  /* the leader is in a syscall since (CLOCK_MONOTONIC ns), or 0 */
    uint64_t gen;         /* bumped when a follower takes the ring from a busy leader */
    unsigned threads;     /* serving this queue */
    unsigned blocked;     /* atomic: of them, in something that may block -- a syscall
                             marked busy, or a request Python serves on the thread */
    uint64_t py_since;    /* the last leader left the ring to serve a request in Python
                             then (CLOCK_MONOTONIC ns), and is not back yet; or 0 */
    const void *py_owner; /* which thread that was */
};

/* What identifies the calling thread to its queue. */
static __thread char thread_token;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct pvfs_hotq *pvfs_hotq_new(unsigned threads)
{
    struct pvfs_hotq *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->threads = threads;
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

int pvfs_hotq_spare(struct pvfs_hotq *q)
{
    return !q || q->threads <= 1 || __atomic_load_n(&q->blocked, __ATOMIC_RELAXED) + 1 < q->threads;
}

void pvfs_hotq_blocked(struct pvfs_hotq *q, int delta)
{
    if (q)
        __atomic_add_fetch(&q->blocked, (unsigned)delta, __ATOMIC_RELAXED);
}

int pvfs_hotq_halted(struct pvfs_hotq *q)
{
    return q && (__atomic_load_n(&q->paused, __ATOMIC_ACQUIRE) ||
                 __atomic_load_n(&q->stop, __ATOMIC_ACQUIRE));
}

int pvfs_lead(struct pvfs_hotq *q)
{
    if (!q)
        return 0;
    pthread_mutex_lock(&q->m);
    while (!q->stop && !q->paused) {
        /* A leader stuck in a syscall loses the ring after PVFS_HOT_STALL_NS, and a ring its
         * leader left to serve a request in Python is taken over once that took as long:
         * followers check that often.  Not sooner: the leader is normally back well
         * before, and a follower that took the ring while it is away would find no thread
         * to spare and send quick requests to the worker pool. */
        uint64_t now = mono_ns(), until;
        if (!q->leader) {
            if (!q->py_since || now - q->py_since >= PVFS_HOT_STALL_NS)
                break;      /* free: ours */
            until = q->py_since + PVFS_HOT_STALL_NS;
        } else if (q->busy_since && now - q->busy_since >= PVFS_HOT_STALL_NS) {
            q->gen++;
            q->busy_since = 0;
            break;          /* ours now (leader stays 1) */
        } else {
            until = (q->busy_since ? q->busy_since : now) + PVFS_HOT_STALL_NS;
        }
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

void pvfs_hotq_to_python(struct pvfs_hotq *q)
{
    if (!q)
        return;
    pvfs_hotq_blocked(q, 1);
    pthread_mutex_lock(&q->m);
    q->leader = 0;
    q->py_since = mono_ns();
    q->py_owner = &thread_token;
    pthread_mutex_unlock(&q->m);
}

void pvfs_hotq_from_python(struct pvfs_hotq *q)
{
    if (!q)
        return;
    pvfs_hotq_blocked(q, -1);
    pthread_mutex_lock(&q->m);
    if (q->py_owner == &thread_token)
        q->py_since = 0;
    pthread_mutex_unlock(&q->m);
}

void pvfs_unlead(struct pvfs_hotq *q, int wake_one)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->m);
    q->leader = 0;
    if (wake_one)
        pthread_cond_signal(&q->c);
    pthread_mutex_unlock(&q->m);
}

void pvfs_lead_handoff(struct pvfs_lead *l)
{
    if (l && l->q && l->leading) {
        pvfs_vq_flush_signal(l->vq);   /* what we completed must not wait for this I/O */
        pvfs_unlead(l->q, 1);
        l->leading = 0;
    }
}

void pvfs_lead_busy(struct pvfs_lead *l)
{
    if (!l || !l->q || !l->leading)
        return;
    pvfs_hotq_blocked(l->q, 1);
    pthread_mutex_lock(&l->q->m);
    l->q->busy_since = mono_ns();
    l->gen = l->q->gen;
    pthread_mutex_unlock(&l->q->m);
}

void pvfs_lead_done(struct pvfs_lead *l)
{
    if (!l || !l->q || !l->leading)
        return;
    pvfs_hotq_blocked(l->q, -1);
    pthread_mutex_lock(&l->q->m);
    if (l->q->gen == l->gen)
        l->q->busy_since = 0;
    else
        l->leading = 0;     /* a follower took the ring meanwhile */
    pthread_mutex_unlock(&l->q->m);
}
