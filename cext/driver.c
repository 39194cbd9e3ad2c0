#define _GNU_SOURCE
#include "driver.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define NO_CHAIN 0xffff

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct pvfs_drv {
    unsigned num;
    struct desc *desc;
    uint16_t *avail;     /* flags, idx, ring[num], used_event */
    uint8_t *used;       /* flags, idx, {id,len}[num], avail_event */
    int event_idx;
    uint16_t free_head;
    unsigned num_free;
    uint16_t avail_idx;
    uint16_t kicked_idx; /* avail_idx at the last kick decision */
    uint16_t last_used;
    uint16_t *chain_len; /* descriptors per head, to free them */
};

struct pvfs_drv *pvfs_drv_new(unsigned num, uintptr_t desc, uintptr_t avail, uintptr_t used,
                              int event_idx)
{
    struct pvfs_drv *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->chain_len = calloc(num, sizeof(uint16_t));
    if (!q->chain_len) {
        free(q);
        return NULL;
    }
    q->num = num;
    q->desc = (struct desc *)desc;
    q->avail = (uint16_t *)avail;
    q->used = (uint8_t *)used;
    q->event_idx = event_idx;
    memset(q->desc, 0, 16 * (size_t)num);
    memset(q->avail, 0, 6 + 2 * (size_t)num);
    memset(q->used, 0, 6 + 8 * (size_t)num);
    for (unsigned i = 0; i < num; i++)
        q->desc[i].next = htole16((uint16_t)(i + 1));
    q->num_free = num;
    return q;
}

void pvfs_drv_free(struct pvfs_drv *q)
{
    if (q) {
        free(q->chain_len);
        free(q);
    }
}

unsigned pvfs_drv_num_free(struct pvfs_drv *q) { return q->num_free; }
uint16_t pvfs_drv_avail_idx(struct pvfs_drv *q) { return q->avail_idx; }

uint16_t pvfs_drv_used_idx(struct pvfs_drv *q)
{
    return le16toh(__atomic_load_n((uint16_t *)(q->used + 2), __ATOMIC_ACQUIRE));
}

void pvfs_drv_publish_head(struct pvfs_drv *q, uint16_t head)
{
    q->avail[2 + q->avail_idx % q->num] = htole16(head);
    q->avail_idx++;
    __atomic_store_n(&q->avail[1], htole16(q->avail_idx), __ATOMIC_RELEASE);
}

void pvfs_drv_write_desc(struct pvfs_drv *q, unsigned i, uint64_t addr, uint32_t len,
                         uint16_t flags, uint16_t next)
{
    if (i >= q->num)
        return;
    q->desc[i].addr = htole64(addr);
    q->desc[i].len = htole32(len);
    q->desc[i].flags = htole16(flags);
    q->desc[i].next = htole16(next);
}

static void fill(struct desc *d, const uint64_t *addr, const uint32_t *len, unsigned n_out,
                 unsigned i, uint16_t next)
{
    d->addr = htole64(addr[i]);
    d->len = htole32(len[i]);
    d->flags = htole16(i >= n_out ? F_WRITE : 0);
    (void)next;
}

int pvfs_drv_add(struct pvfs_drv *q, const uint64_t *addr, const uint32_t *len,
                 unsigned n_out, unsigned n_in, uint64_t indirect_gpa, uintptr_t indirect_host)
{
    unsigned n = n_out + n_in;
    unsigned need = indirect_gpa ? 1 : n;
    if (n == 0 || need > q->num_free)
        return -ENOSPC;
    uint16_t head = q->free_head;
    if (indirect_gpa) {
        struct desc *t = (struct desc *)indirect_host;
        for (unsigned i = 0; i < n; i++) {
            fill(&t[i], addr, len, n_out, i, 0);
            t[i].next = htole16((uint16_t)(i + 1));
            if (i + 1 < n)
                t[i].flags |= htole16(F_NEXT);
        }
        struct desc *d = &q->desc[head];
        q->free_head = le16toh(d->next);
        d->addr = htole64(indirect_gpa);
        d->len = htole32(16 * n);
        d->flags = htole16(F_INDIRECT);
    } else {
        uint16_t i = head, last = head;
        for (unsigned k = 0; k < n; k++) {
            struct desc *d = &q->desc[i];
            fill(d, addr, len, n_out, k, 0);
            last = i;
            i = le16toh(d->next);
            if (k + 1 < n)
                d->flags |= htole16(F_NEXT);
        }
        q->free_head = le16toh(q->desc[last].next);
    }
    q->num_free -= need;
    q->chain_len[head] = (uint16_t)need;
    pvfs_drv_publish_head(q, head);
    return head;
}

int pvfs_drv_kick_needed(struct pvfs_drv *q)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = q->kicked_idx, new_idx = q->avail_idx;
    q->kicked_idx = new_idx;
    if (q->event_idx) {
        uint16_t ev = le16toh(__atomic_load_n((uint16_t *)(q->used + 4 + 8 * q->num), __ATOMIC_RELAXED));
        return (uint16_t)(new_idx - ev - 1) < (uint16_t)(new_idx - old);
    }
    return !(le16toh(__atomic_load_n((uint16_t *)q->used, __ATOMIC_RELAXED)) & 1 /* NO_NOTIFY */);
}

int pvfs_drv_get_used(struct pvfs_drv *q, uint32_t *id, uint32_t *len)
{
    if (pvfs_drv_used_idx(q) == q->last_used)
        return 0;
    const uint8_t *e = q->used + 4 + 8 * (size_t)(q->last_used % q->num);
    uint32_t i, l;
    memcpy(&i, e, 4);
    memcpy(&l, e + 4, 4);
    *id = le32toh(i);
    *len = le32toh(l);
    q->last_used++;
    if (*id < q->num && q->chain_len[*id]) {
        /* Return the chain's descriptors to the free list. */
        uint16_t head = (uint16_t)*id, last = head;
        for (unsigned k = 1; k < q->chain_len[head]; k++)
            last = le16toh(q->desc[last].next);
        q->desc[last].next = htole16(q->free_head);
        q->free_head = head;
        q->num_free += q->chain_len[head];
        q->chain_len[head] = 0;
    }
    return 1;
}

int pvfs_drv_enable_cb(struct pvfs_drv *q)
{
    if (q->event_idx)
        __atomic_store_n(&q->avail[2 + q->num], htole16(q->last_used), __ATOMIC_RELAXED);
    else
        __atomic_store_n(&q->avail[0], 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return pvfs_drv_used_idx(q) != q->last_used;
}

int pvfs_eventfd_wait(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return -errno;
    if (n == 0)
        return 0;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return -errno;
    return 1;
}
