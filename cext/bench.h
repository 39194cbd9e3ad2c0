/* The benchmark's request loop, in C so that the front-end costs the same (and little) for
 * every back-end it drives: pyvirtiofsd.bench lays out request slots in guest RAM once,
 * then pvfs_bench_run() keeps `qd` FUSE requests in flight on a pvfs_drv queue -- build,
 * add, kick, wait for the call eventfd, reap, check, record the latency, resubmit -- until
 * a deadline or an op count.  pvfs_bench_native() is the same workload done by the host
 * itself with pread/pwrite (the physical limit of the data rows).
 *
 * File data follows one pattern everywhere: a file is a sequence of 4 KiB blocks, each a
 * copy of one 4 KiB "base" page whose first 8 bytes are replaced by (block index ^ tag).
 * Writers patch those 8 bytes per block; readers check every block's tag (so an offset
 * mistake is always caught) and compare the rest of the block with the base page on every
 * verify_every-th op (a full check of the data).
 */
#ifndef PVFS_BENCH_H
#define PVFS_BENCH_H

#include <stdint.h>
#include "driver.h"

/* CFFI-BEGIN */
#define PVFS_BENCH_BLOCK 4096
#define PVFS_BENCH_MAX_QD 64

enum {
    PVFS_BENCH_READ = 1,
    PVFS_BENCH_WRITE = 2,
    PVFS_BENCH_GETATTR = 3,
    PVFS_BENCH_LOOKUP = 4,
    PVFS_BENCH_CREATE_UNLINK = 5,   /* CREATE, RELEASE, UNLINK, FORGET (hiprio): one op */
    PVFS_BENCH_READDIRPLUS = 6,     /* a whole listing (READDIRPLUS until empty): one op */
};

struct pvfs_bench_spec {
    uint32_t kind;          /* PVFS_BENCH_* */
    uint32_t qd;            /* requests in flight, 1..PVFS_BENCH_MAX_QD */
    uint32_t block;         /* bytes per READ/WRITE (multiple of 4096); READDIRPLUS size */
    uint32_t random;        /* random block-aligned offsets instead of sequential */
    uint64_t nodeid;        /* the file (READ/WRITE/GETATTR), the directory (others) */
    uint64_t fh;            /* open handle for READ/WRITE/READDIRPLUS */
    uint64_t file_size;     /* offsets stay within [0, file_size - block] */
    uint64_t tag;           /* pattern tag (see above) */
    uint32_t verify_every;  /* full data check every N-th read (0: tags only) */
    uint32_t name_len;
    const char *name;       /* LOOKUP: the name; CREATE_UNLINK: prefix of per-slot names */
    const uint8_t *base;    /* the 4096-byte base page */
    uint64_t duration_ns;   /* stop issuing after this long (0: no limit) */
    uint64_t max_ops;       /* stop issuing after this many ops (also the latency capacity) */
    /* Guest RAM: host address = gpa + host_delta.  Slots: qd areas of slot_size bytes from
     * slot_gpa, each big enough for in (80 + block + names) and out (16 + max(block, 4096)). */
    uint64_t slot_gpa;
    uint64_t slot_size;
    int64_t host_delta;
    /* hiprio queue for FORGET (CREATE_UNLINK); forget_gpa: hiprio_size * 64 bytes */
    struct pvfs_drv *hiprio;
    int hiprio_kick_fd;
    int hiprio_call_fd;
    uint32_t hiprio_size;
    uint64_t forget_gpa;
    uint64_t stall_ns;      /* give up when no reply arrives for this long */
    int gone_fd;            /* the back-end's pidfd: readable once it exited (0: none) */
};

struct pvfs_bench_result {
    uint64_t ops;           /* completed ops (counted in latencies) */
    uint64_t requests;      /* FUSE requests (an op may be several) */
    uint64_t bytes;         /* data moved by READ/WRITE */
    uint64_t entries;       /* READDIRPLUS entries seen */
    uint64_t elapsed_ns;    /* first submit to last completion */
    uint64_t errors;        /* replies with an error (the op is not counted) */
    int32_t first_error;    /* -errno of the first one */
    uint32_t first_error_opcode;
    uint64_t verified;      /* reads whose whole data was compared */
    uint64_t bad_data;      /* reads whose data did not match (tag or content) */
    uint64_t bad_replies;   /* malformed replies: wrong unique, length */
    uint64_t kicks;
    uint64_t waits;
};

/* Returns 0, or -ETIMEDOUT (no reply for stall_ns), -EPIPE (the back-end exited: gone_fd,
 * checked whenever 100 ms pass without a reply), -ENOSPC (ring full at start), -EINVAL
 * (bad spec).  latencies (ns, capacity max_ops) get one entry per op.  CREATE_UNLINK runs
 * qd cycles at once, each slot on its own name (name + slot number). */
int pvfs_bench_run(struct pvfs_drv *q, int kick_fd, int call_fd, const struct pvfs_bench_spec *spec,
                   struct pvfs_bench_result *res, uint32_t *latencies);

/* The host doing the same reads/writes on fd with pread/pwrite into its own buffers,
 * min(qd, threads) threads.  Same spec fields as above (kind READ or WRITE). */
int pvfs_bench_native(int fd, const struct pvfs_bench_spec *spec, uint32_t threads,
                      struct pvfs_bench_result *res, uint32_t *latencies);

/* Fill buf with the pattern for file offset off (both multiples of 4096). */
void pvfs_bench_fill(uint8_t *buf, uint64_t len, uint64_t off, uint64_t tag, const uint8_t *base);
/* Check buf against the pattern: returns the number of mismatching 4 KiB blocks. */
uint64_t pvfs_bench_check(const uint8_t *buf, uint64_t len, uint64_t off, uint64_t tag,
                          const uint8_t *base, int full);
/* CFFI-END */

#endif
