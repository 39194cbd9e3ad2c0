#define _GNU_SOURCE
#include "vq.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Layouts from the virtio spec (split-ring.tex); all fields little-endian. */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[]; /* num entries, then used_event (EVENT_IDX) */
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[]; /* num entries, then avail_event (EVENT_IDX) */
};

struct pvfs_vq {
    pthread_mutex_t lock;
    int refcnt;
    unsigned index;
    unsigned num;
    uint64_t desc_uva, used_uva, avail_uva;
    int have_addr;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    struct pvfs_mem *mem;
    int started;
    int broken;
    int event_idx;
    int call_fd;
    uint16_t last_avail_idx;
    uint16_t used_idx;           /* our copy of used->idx */
    uint16_t signalled_used;     /* used_idx at the last interrupt */
    int signalled_used_valid;
    int deferred;                /* used entries pushed whose interrupt decision waits */
    uint16_t deferred_old;       /* used_idx before the first of them */
    unsigned inflight;
    struct pvfs_req *free_list;
    struct pvfs_dirty *dirty;    /* the device's dirty log; &pvfs_dirty_none if none */
    int log_ring;                /* VHOST_VRING_F_LOG: log used-ring writes at log_gpa */
    uint64_t log_gpa;
    uint64_t popped, signalled, bad_chains;
};

int pvfs_abi_version(void);

/* ---- copies that survive SIGBUS ----------------------------------------------------
 * Guest memory regions are mmaps of the front-end's fds.  For RAM (a memfd) every page
 * exists, but a region can also be a file (QEMU 11.1 adds each DAX mapping to the table),
 * and a page past the end of a file that someone truncated raises SIGBUS on access.  Our
 * memcpy from or to guest memory runs under a per-thread recovery point, so such an access
 * fails that copy with -EFAULT instead of killing the daemon.  (preadv/pwritev need none:
 * the kernel returns EFAULT.)  Faults anywhere else go to the previous handler. */

static __thread sigjmp_buf *volatile copy_recovery;
static struct sigaction previous_sigbus;
static pthread_once_t sigbus_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    sigjmp_buf *jb = copy_recovery;
    if (jb) {
        copy_recovery = NULL;
        siglongjmp(*jb, 1);
    }
    /* Not a guarded copy: put the old handler back; returning re-runs the faulting
     * instruction, which faults again into it. */
    sigaction(SIGBUS, &previous_sigbus, NULL);
    (void)sig, (void)info, (void)ctx;
}

static void install_sigbus(void)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER; /* NODEFER: siglongjmp leaves SIGBUS unblocked */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_sigbus);
}

static int guarded_copy(void *dst, const void *src, size_t n)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 0))
        return -EFAULT;
    copy_recovery = &jb;
    /* The compiler must not move these stores across the copy (it knows memcpy does not
     * touch copy_recovery, but the signal handler reads it). */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    memcpy(dst, src, n);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    copy_recovery = NULL;
    return 0;
}

int pvfs_sigbus_guard(void (*fn)(void *), void *arg)
{
    pthread_once(&sigbus_once, install_sigbus);
    sigjmp_buf jb;
    if (sigsetjmp(jb, 0))
        return -EFAULT;
    copy_recovery = &jb;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    fn(arg);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    copy_recovery = NULL;
    return 0;
}

struct pvfs_vq *pvfs_vq_new(unsigned index)
{
    pthread_once(&sigbus_once, install_sigbus);
    struct pvfs_vq *vq = calloc(1, sizeof(*vq));
    if (!vq)
        return NULL;
    pthread_mutex_init(&vq->lock, NULL);
    vq->refcnt = 1;
    vq->index = index;
    vq->call_fd = -1;
    vq->dirty = &pvfs_dirty_none;
    return vq;
}

static void vq_free(struct pvfs_vq *vq)
{
    struct pvfs_req *r = vq->free_list;
    while (r) {
        struct pvfs_req *next = r->next_free;
        free(r);
        r = next;
    }
    if (vq->call_fd >= 0)
        close(vq->call_fd);
    pvfs_mem_unref(vq->mem);
    pvfs_dirty_unref(vq->dirty);
    pthread_mutex_destroy(&vq->lock);
    free(vq);
}

void pvfs_vq_unref(struct pvfs_vq *vq)
{
    if (vq && __atomic_sub_fetch(&vq->refcnt, 1, __ATOMIC_ACQ_REL) == 0)
        vq_free(vq);
}

int pvfs_vq_set_num(struct pvfs_vq *vq, unsigned num)
{
    if (num == 0 || num > PVFS_VQ_MAX_SIZE || (num & (num - 1)))
        return -EINVAL;
    pthread_mutex_lock(&vq->lock);
    vq->num = num;
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    pthread_mutex_unlock(&vq->lock);
    return 0;
}

void pvfs_vq_set_base(struct pvfs_vq *vq, uint16_t last_avail_idx)
{
    pthread_mutex_lock(&vq->lock);
    vq->last_avail_idx = last_avail_idx;
    pthread_mutex_unlock(&vq->lock);
}

uint16_t pvfs_vq_get_base(struct pvfs_vq *vq)
{
    pthread_mutex_lock(&vq->lock);
    uint16_t v = vq->last_avail_idx;
    pthread_mutex_unlock(&vq->lock);
    return v;
}

/* Map the three ring parts through the current table.  Called with the lock held. */
static int translate_rings(struct pvfs_vq *vq)
{
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    if (!vq->have_addr || !vq->mem || !vq->num)
        return -EFAULT;
    uint64_t n = vq->num;
    uintptr_t d = pvfs_mem_uva_to_ptr(vq->mem, vq->desc_uva, 16 * n);
    uintptr_t a = pvfs_mem_uva_to_ptr(vq->mem, vq->avail_uva, 6 + 2 * n);
    uintptr_t u = pvfs_mem_uva_to_ptr(vq->mem, vq->used_uva, 6 + 8 * n);
    if (!d || !a || !u)
        return -EFAULT;
    /* Alignment the spec requires; it also keeps our atomic 16-bit accesses aligned. */
    if ((d & 15) || (a & 1) || (u & 3))
        return -EINVAL;
    vq->desc = (struct vring_desc *)d;
    vq->avail = (struct vring_avail *)a;
    vq->used = (struct vring_used *)u;
    return 0;
}

int pvfs_vq_set_addr(struct pvfs_vq *vq, uint64_t desc_uva, uint64_t used_uva, uint64_t avail_uva)
{
    pthread_mutex_lock(&vq->lock);
    if (vq->started && vq->have_addr && vq->desc && vq->desc_uva == desc_uva &&
        vq->used_uva == used_uva && vq->avail_uva == avail_uva) {
        /* The same rings again on a running queue (a front-end turning VHOST_VRING_F_LOG on
         * or off): nothing to translate, and the used index and interrupt state stay.  A
         * stopped queue being set up again (same addresses after a reset) re-reads them. */
        pthread_mutex_unlock(&vq->lock);
        return 0;
    }
    vq->desc_uva = desc_uva;
    vq->used_uva = used_uva;
    vq->avail_uva = avail_uva;
    vq->have_addr = 1;
    int rc = translate_rings(vq);
    if (rc == 0)
        vq->used_idx = le16toh(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE));
    vq->signalled_used_valid = 0;
    vq->deferred = 0;
    pthread_mutex_unlock(&vq->lock);
    return rc;
}

int pvfs_vq_set_mem(struct pvfs_vq *vq, struct pvfs_mem *mem)
{
    if (mem)
        pvfs_mem_ref(mem);
    pthread_mutex_lock(&vq->lock);
    struct pvfs_mem *old = vq->mem;
    vq->mem = mem;
    int rc = vq->have_addr ? translate_rings(vq) : 0;
    if (rc && vq->started)
        vq->broken = 1; /* the ring moved out of guest memory while running */
    pthread_mutex_unlock(&vq->lock);
    pvfs_mem_unref(old);
    return rc;
}

void pvfs_vq_set_event_idx(struct pvfs_vq *vq, int on)
{
    pthread_mutex_lock(&vq->lock);
    if (vq->event_idx == !!on) {
        /* SET_FEATURES again on a running queue (VHOST_F_LOG_ALL turned on or off): the
         * interrupt state must stay, or a deferred interrupt would be forgotten. */
        pthread_mutex_unlock(&vq->lock);
        return;
    }
    vq->event_idx = !!on;
    vq->signalled_used_valid = 0;
    vq->deferred = 0;
    pthread_mutex_unlock(&vq->lock);
}

void pvfs_vq_set_dirty(struct pvfs_vq *vq, struct pvfs_dirty *dirty)
{
    pvfs_dirty_ref(dirty);
    pthread_mutex_lock(&vq->lock);
    struct pvfs_dirty *old = vq->dirty;
    vq->dirty = dirty;
    pthread_mutex_unlock(&vq->lock);
    pvfs_dirty_unref(old);
}

void pvfs_vq_set_log_addr(struct pvfs_vq *vq, int on, uint64_t log_gpa)
{
    pthread_mutex_lock(&vq->lock);
    vq->log_ring = !!on;
    vq->log_gpa = log_gpa;
    pthread_mutex_unlock(&vq->lock);
}

/* Log a write of len bytes at byte offset off of the used ring.  Lock held. */
static inline void log_used(struct pvfs_vq *vq, uint64_t off, uint64_t len)
{
    if (pvfs_dirty_active(vq->dirty) && vq->log_ring)
        pvfs_dirty_mark(vq->dirty, vq->log_gpa + off, len);
}

void pvfs_vq_set_call_fd(struct pvfs_vq *vq, int fd)
{
    pthread_mutex_lock(&vq->lock);
    int old = vq->call_fd;
    vq->call_fd = fd;
    pthread_mutex_unlock(&vq->lock);
    if (old >= 0)
        close(old);
}

int pvfs_vq_start(struct pvfs_vq *vq)
{
    pthread_mutex_lock(&vq->lock);
    int rc = vq->desc ? 0 : -EFAULT;
    if (rc == 0) {
        vq->started = 1;
        vq->broken = 0;
        vq->signalled_used_valid = 0;
        vq->deferred = 0;
    vq->deferred = 0;
    }
    pthread_mutex_unlock(&vq->lock);
    return rc;
}

void pvfs_vq_stop(struct pvfs_vq *vq)
{
    pthread_mutex_lock(&vq->lock);
    vq->started = 0;
    pthread_mutex_unlock(&vq->lock);
}

int pvfs_vq_is_broken(struct pvfs_vq *vq)
{
    return __atomic_load_n(&vq->broken, __ATOMIC_RELAXED);
}

unsigned pvfs_vq_inflight(struct pvfs_vq *vq)
{
    pthread_mutex_lock(&vq->lock);
    unsigned n = vq->inflight;
    pthread_mutex_unlock(&vq->lock);
    return n;
}

unsigned pvfs_vq_pending(struct pvfs_vq *vq)
{
    unsigned n = 0;
    pthread_mutex_lock(&vq->lock);
    if (vq->started && !vq->broken && vq->avail) {
        uint16_t avail_idx = le16toh(__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE));
        n = (uint16_t)(avail_idx - vq->last_avail_idx);
    }
    pthread_mutex_unlock(&vq->lock);
    return n;
}

uint64_t pvfs_vq_stat_popped(struct pvfs_vq *vq) { return __atomic_load_n(&vq->popped, __ATOMIC_RELAXED); }
uint64_t pvfs_vq_stat_signalled(struct pvfs_vq *vq) { return __atomic_load_n(&vq->signalled, __ATOMIC_RELAXED); }
uint64_t pvfs_vq_stat_bad_chains(struct pvfs_vq *vq) { return __atomic_load_n(&vq->bad_chains, __ATOMIC_RELAXED); }

/* ---- chain walking ---------------------------------------------------------------- */

static int add_buffer(struct pvfs_req *req, const struct pvfs_mem *mem, uint64_t addr,
                      uint32_t len, int writable)
{
    if (!writable && req->n_out)
        return PVFS_CHAIN_READ_AFTER_WRITE;
    uint32_t *total = writable ? &req->out_len : &req->in_len;
    if (__builtin_add_overflow(*total, len, total))
        return PVFS_CHAIN_TOO_BIG;
    if (len == 0)
        return PVFS_CHAIN_OK;
    unsigned used = req->n_in + req->n_out;
    int n = pvfs_mem_gpa_to_iov(mem, addr, len, &req->iov[used], PVFS_MAX_IOV - used);
    if (n == -E2BIG)
        return PVFS_CHAIN_TOO_MANY_IOV;
    if (n < 0) {
        /* Not in guest memory (e.g. a buffer inside a DAX window the front-end did not put
         * in the table).  Keep a hole in its place so the request still has the shape the
         * driver gave it: the data functions refuse to touch a hole (-EFAULT), so the
         * request fails with a reply when its header and reply area are reachable. */
        if (used == PVFS_MAX_IOV)
            return PVFS_CHAIN_TOO_MANY_IOV;
        req->iov[used].iov_base = NULL;
        req->iov[used].iov_len = len;
        n = 1;
        req->holes = 1;
    }
    if (writable)
        req->n_out += n;
    else
        req->n_in += n;
    return PVFS_CHAIN_OK;
}

/* Walk the chain starting at head into req.  Called with the lock held. */
static int walk_chain(struct pvfs_vq *vq, struct pvfs_req *req, uint16_t head)
{
    const struct vring_desc *table = vq->desc;
    unsigned table_size = vq->num;
    unsigned i = head, count = 0;
    int indirect = 0;

    for (;;) {
        struct vring_desc d;
        /* Copy once: the guest may rewrite the descriptor while we look at it. */
        if (guarded_copy(&d, (const void *)&table[i], sizeof(d)))
            return PVFS_CHAIN_BAD_INDIRECT; /* an indirect table in a vanished file page */
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        uint64_t addr = le64toh(d.addr);
        uint32_t len = le32toh(d.len);
        uint16_t flags = le16toh(d.flags);

        if (++count > table_size)
            return PVFS_CHAIN_TOO_LONG;
        if (flags & VRING_DESC_F_INDIRECT) {
            if (indirect)
                return PVFS_CHAIN_NESTED_INDIRECT;
            if ((flags & VRING_DESC_F_NEXT) || len == 0 || len % sizeof(struct vring_desc) ||
                len / sizeof(struct vring_desc) > PVFS_VQ_MAX_SIZE)
                return PVFS_CHAIN_BAD_INDIRECT;
            uintptr_t t = pvfs_mem_gpa_to_ptr(vq->mem, addr, len);
            if (!t || (t & 7))
                return PVFS_CHAIN_BAD_INDIRECT;
            table = (const struct vring_desc *)t;
            table_size = len / sizeof(struct vring_desc);
            i = 0;
            count = 0;
            indirect = 1;
            continue;
        }
        int rc = add_buffer(req, vq->mem, addr, len, flags & VRING_DESC_F_WRITE);
        if (rc)
            return rc;
        if (!(flags & VRING_DESC_F_NEXT))
            return PVFS_CHAIN_OK;
        i = le16toh(d.next);
        if (i >= table_size)
            return PVFS_CHAIN_BAD_NEXT;
    }
}

static struct pvfs_req *req_alloc(struct pvfs_vq *vq)
{
    struct pvfs_req *r = vq->free_list;
    if (r) {
        vq->free_list = r->next_free;
        return r;
    }
    return malloc(sizeof(*r));
}

int pvfs_vq_pop(struct pvfs_vq *vq, struct pvfs_req **out)
{
    pthread_mutex_lock(&vq->lock);
    if (!vq->started || vq->broken || !vq->desc) {
        pthread_mutex_unlock(&vq->lock);
        return -EIO;
    }
    uint16_t avail_idx = le16toh(__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE));
    uint16_t pending = (uint16_t)(avail_idx - vq->last_avail_idx);
    if (pending == 0) {
        pthread_mutex_unlock(&vq->lock);
        return 0;
    }
    if (pending > vq->num) {
        vq->broken = 1;
        pthread_mutex_unlock(&vq->lock);
        return -EIO;
    }
    uint16_t head = le16toh(vq->avail->ring[vq->last_avail_idx % vq->num]);
    if (head >= vq->num) {
        vq->broken = 1;
        pthread_mutex_unlock(&vq->lock);
        return -EIO;
    }
    struct pvfs_req *req = req_alloc(vq);
    if (!req) {
        pthread_mutex_unlock(&vq->lock);
        return -ENOMEM;
    }
    vq->last_avail_idx++;
    req->vq = vq;
    req->head = head;
    req->in_len = req->out_len = 0;
    req->n_in = req->n_out = 0;
    req->mem = vq->mem;
    pvfs_mem_ref(req->mem);
    req->holes = 0;
    req->session = 0;             /* set by the hot path, which popped it */
    req->err = (uint16_t)walk_chain(vq, req, head);
    if (!req->err && req->holes)
        req->err = PVFS_CHAIN_BAD_ADDR; /* soft: lengths and iovecs stay valid */
    else if (req->err) {
        req->n_in = req->n_out = 0;
        req->in_len = req->out_len = 0;
        vq->bad_chains++;
    }
    vq->inflight++;
    vq->popped++;
    __atomic_fetch_add(&vq->refcnt, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&vq->lock);
    *out = req;
    return 1;
}

/* vring_need_event() of the virtio spec: has new_idx passed event_idx since old? */
static int need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

/* Decide whether the driver wants an interrupt for the used entries up to used_idx.
 * Called with the lock held, after the used->idx store. */
static int should_signal(struct pvfs_vq *vq, uint16_t old)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!vq->event_idx)
        return !(le16toh(__atomic_load_n(&vq->avail->flags, __ATOMIC_RELAXED)) & 1 /* NO_INTERRUPT */);
    uint16_t used_event = le16toh(__atomic_load_n(&vq->avail->ring[vq->num], __ATOMIC_RELAXED));
    uint16_t since = vq->signalled_used_valid ? vq->signalled_used : old;
    int v = need_event(used_event, vq->used_idx, since);
    return v;
}

/* Decide on an interrupt for the used entries from old on and send it.  Lock held. */
static void signal_used(struct pvfs_vq *vq, uint16_t old)
{
    if (!should_signal(vq, old))
        return;
    vq->signalled_used = vq->used_idx;
    vq->signalled_used_valid = 1;
    if (vq->call_fd >= 0) {
        /* Under the lock: the call fd may be replaced and closed by the control thread. */
        uint64_t one = 1;
        if (write(vq->call_fd, &one, sizeof(one)) == sizeof(one))
            vq->signalled++;
    }
}

static void complete(struct pvfs_req *req, uint32_t used_len, int defer)
{
    struct pvfs_vq *vq = req->vq;

    pthread_mutex_lock(&vq->lock);
    if (vq->started && !vq->broken && vq->used) {
        if (used_len > req->out_len)
            used_len = req->out_len;
        uint16_t old = vq->used_idx;
        struct vring_used_elem *e = &vq->used->ring[old % vq->num];
        e->id = htole32(req->head);
        e->len = htole32(used_len);
        vq->used_idx = old + 1;
        __atomic_store_n(&vq->used->idx, htole16(vq->used_idx), __ATOMIC_RELEASE);
        log_used(vq, 4 + 8 * (uint64_t)(old % vq->num), 8);
        log_used(vq, 2, 2);
        if (defer) {
            if (!vq->deferred) {
                vq->deferred = 1;
                vq->deferred_old = old;
            }
        } else {
            signal_used(vq, vq->deferred ? vq->deferred_old : old);
            vq->deferred = 0;
        }
    }
    vq->inflight--;
    struct pvfs_mem *mem = req->mem;
    req->next_free = vq->free_list;
    vq->free_list = req;
    pthread_mutex_unlock(&vq->lock);
    pvfs_mem_unref(mem);
    pvfs_vq_unref(vq);
}

void pvfs_req_complete(struct pvfs_req *req, uint32_t used_len)
{
    complete(req, used_len, 0);
}

void pvfs_req_complete_deferred(struct pvfs_req *req, uint32_t used_len)
{
    complete(req, used_len, 1);
}

void pvfs_vq_flush_signal(struct pvfs_vq *vq)
{
    pthread_mutex_lock(&vq->lock);
    if (vq->deferred && vq->started && !vq->broken && vq->used)
        signal_used(vq, vq->deferred_old);
    vq->deferred = 0;
    pthread_mutex_unlock(&vq->lock);
}

int pvfs_vq_enable_notify(struct pvfs_vq *vq)
{
    int more = 0;
    pthread_mutex_lock(&vq->lock);
    if (vq->started && !vq->broken && vq->used) {
        if (vq->event_idx) {
            __atomic_store_n((uint16_t *)&vq->used->ring[vq->num], htole16(vq->last_avail_idx),
                             __ATOMIC_RELAXED);
            log_used(vq, 4 + 8 * (uint64_t)vq->num, 2);   /* avail_event */
        } else {
            __atomic_store_n(&vq->used->flags, 0, __ATOMIC_RELAXED);
            log_used(vq, 0, 2);
        }
        /* The driver checks our avail_event after publishing avail->idx; we check its
         * avail->idx after publishing avail_event.  Both need a full barrier. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t avail_idx = le16toh(__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE));
        more = avail_idx != vq->last_avail_idx;
    }
    pthread_mutex_unlock(&vq->lock);
    return more;
}

int pvfs_wait_kick(int kick_fd, int stop_fd, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = kick_fd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
    int n = poll(p, stop_fd >= 0 ? 2 : 1, timeout_ms);
    if (n < 0)
        return -errno;
    if (n == 0)
        return 0;
    if (stop_fd >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
        return 2;
    if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL))
        return -EBADF;
    uint64_t v;
    if (read(kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return -errno;
    return 1;
}

/* ---- data access ------------------------------------------------------------------ */

/* Build in dst the iovecs covering [offset, offset+size) of src[0..n). Returns the count;
 * *got is the number of bytes covered (less than size if the area ends first). */
static int sub_iov(const struct iovec *src, unsigned n, uint64_t offset, uint64_t size,
                   struct iovec *dst, uint64_t *got)
{
    int k = 0;
    *got = 0;
    for (unsigned i = 0; i < n && size; i++) {
        uint64_t l = src[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        if (!src[i].iov_base)
            return -EFAULT; /* a hole: the buffer is not in guest memory */
        uint64_t chunk = l - offset;
        if (chunk > size)
            chunk = size;
        dst[k].iov_base = (uint8_t *)src[i].iov_base + offset;
        dst[k].iov_len = chunk;
        k++;
        offset = 0;
        size -= chunk;
        *got += chunk;
    }
    return k;
}

static int64_t copy_iov(const struct iovec *iov, unsigned n, uint64_t offset, uint8_t *buf,
                        uint64_t size, int to_iov)
{
    struct iovec part[PVFS_MAX_IOV];
    uint64_t got;
    int k = sub_iov(iov, n, offset, size, part, &got);
    if (k < 0)
        return k;
    for (int i = 0; i < k; i++) {
        int rc = to_iov ? guarded_copy(part[i].iov_base, buf, part[i].iov_len)
                        : guarded_copy(buf, part[i].iov_base, part[i].iov_len);
        if (rc)
            return rc;
        buf += part[i].iov_len;
    }
    return (int64_t)got;
}

/* Dirty logging of the writable area: every function that writes into it ends here, with
 * the range it wrote.  Off: one predictable branch. */
static void log_out_slow(struct pvfs_req *req, uint64_t offset, uint64_t size)
{
    const struct iovec *iov = req->iov + req->n_in;
    for (unsigned i = 0; i < req->n_out && size; i++) {
        uint64_t l = iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        uint64_t chunk = l - offset;
        if (chunk > size)
            chunk = size;
        uint64_t gpa;
        /* An iovec from pvfs_mem_gpa_to_iov lies inside one region of req->mem. */
        if (iov[i].iov_base &&
            pvfs_mem_host_to_gpa(req->mem, (const uint8_t *)iov[i].iov_base + offset, &gpa) == 0)
            pvfs_dirty_mark(req->vq->dirty, gpa, chunk);
        offset = 0;
        size -= chunk;
    }
}

static inline void log_out(struct pvfs_req *req, uint64_t offset, int64_t written)
{
    if (pvfs_dirty_active(req->vq->dirty) && written > 0)
        log_out_slow(req, offset, (uint64_t)written);
}

int64_t pvfs_req_read_in(struct pvfs_req *req, uint64_t offset, void *buf, uint64_t size)
{
    return copy_iov(req->iov, req->n_in, offset, buf, size, 0);
}

int64_t pvfs_req_write_out(struct pvfs_req *req, uint64_t offset, const void *buf, uint64_t size)
{
    if (offset > req->out_len || size > req->out_len - offset)
        return -ENOSPC;
    int64_t n = copy_iov(req->iov + req->n_in, req->n_out, offset, (uint8_t *)buf, size, 1);
    /* A failed copy (SIGBUS in a file-backed region) may have written part: log it all. */
    log_out(req, offset, n < 0 ? (int64_t)size : n);
    return n;
}

/* preadv/pwritev until done, end of file, or an error after some progress. */
static int64_t rw_loop(int fd, struct iovec *iov, unsigned k, int64_t file_offset, int write_)
{
    int64_t total = 0;
    while (k) {
        ssize_t n = write_ ? pwritev(fd, iov, (int)k, file_offset) : preadv(fd, iov, (int)k, file_offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return total ? total : -errno;
        }
        if (n == 0)
            break;
        total += n;
        file_offset += n;
        while (k && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            k--;
        }
        if (k) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return total;
}

int64_t pvfs_req_preadv(struct pvfs_req *req, int fd, uint64_t out_offset, uint64_t size, int64_t file_offset)
{
    struct iovec part[PVFS_MAX_IOV];
    uint64_t got;
    int k = sub_iov(req->iov + req->n_in, req->n_out, out_offset, size, part, &got);
    if (k < 0)
        return k;
    int64_t n = rw_loop(fd, part, (unsigned)k, file_offset, 0);
    log_out(req, out_offset, n);
    return n;
}

int64_t pvfs_req_pwritev(struct pvfs_req *req, int fd, uint64_t in_offset, uint64_t size, int64_t file_offset)
{
    struct iovec part[PVFS_MAX_IOV];
    uint64_t got;
    int k = sub_iov(req->iov, req->n_in, in_offset, size, part, &got);
    if (k < 0)
        return k;
    if (got < size)
        return -EINVAL;
    return rw_loop(fd, part, (unsigned)k, file_offset, 1);
}

int64_t pvfs_req_preadv2_once(struct pvfs_req *req, int fd, uint64_t out_offset, uint64_t size,
                              int64_t file_offset, int flags)
{
    struct iovec part[PVFS_MAX_IOV];
    uint64_t got;
    int k = sub_iov(req->iov + req->n_in, req->n_out, out_offset, size, part, &got);
    if (k < 0)
        return k;
    ssize_t n = preadv2(fd, part, k, file_offset, flags);
    if (n < 0)
        return -errno;
    log_out(req, out_offset, n);
    return n;
}
