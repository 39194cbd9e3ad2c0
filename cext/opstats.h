/* Statistics and ops-log records of the requests the C path serves (--stats, --ops-log).
 *
 * The Python server records what it serves itself (pyvirtiofsd/opslog.py); what C serves
 * is recorded here, so that neither option has to switch the C path off.  Every thread
 * that serves requests in C owns a slot (claimed the first time it serves one for a
 * pvfs_opstats, given back when the thread ends) and is the only writer of it: no cache
 * line is written by two serving threads.  A slot holds
 *
 * - per opcode: count, errors, bytes and a latency histogram in µs, in the buckets of
 *   stats.py's LatencyHistogram (bucket_of: exact below 32 µs, then 16 per power of two),
 *   so Python adds them to its own (pvfs_opstats_read sums the slots);
 * - with a ring size (an ops log): a single-producer ring of fixed-size records.  A
 *   Python thread drains them (pvfs_opstats_drain) into the ops-log file.  The data path
 *   never waits for it: a record that finds its ring full is dropped and counted.
 *
 * Latency is CLOCK_MONOTONIC from the pop to the reply; the record's time is the
 * CLOCK_MONOTONIC of the reply (Python adds the offset to wall-clock time).  A request is
 * recorded just before its reply is published: whoever sees the reply sees the record.
 * Without a pvfs_opstats on the context (neither option), nothing here runs.
 */
#ifndef PVFS_OPSTATS_H
#define PVFS_OPSTATS_H

#include <stdint.h>
#include <time.h>

/* CFFI-BEGIN */
/* Opcodes counted (C serves none above), and histogram buckets: bucket_of(2**31 - 1) + 1;
 * latencies beyond go to the last bucket (max_us stays exact). */
#define PVFS_OPSTATS_OPCODES 48
#define PVFS_OPSTATS_BUCKETS 448

/* One opcode's counters (pvfs_opstats_read: summed over the slots). */
struct pvfs_opstats_op {
    uint64_t count;
    uint64_t errors;
    uint64_t bytes;
    uint64_t max_us;
    uint64_t hist[448];     /* PVFS_OPSTATS_BUCKETS */
};

/* Which of a record's fh, offset and size the request carries (opslog.py's None). */
#define PVFS_OPREC_FH 1
#define PVFS_OPREC_OFFSET 2
#define PVFS_OPREC_SIZE 4

/* One ops-log record in a ring: opslog.py's OpRecord. */
struct pvfs_oprec {
    uint64_t done_ns;   /* CLOCK_MONOTONIC when the reply was made */
    uint64_t unique;
    uint64_t nodeid;
    uint64_t fh;
    uint64_t offset;
    uint64_t size;
    uint64_t bytes;     /* READ, READDIR[PLUS]: reply payload; WRITE: bytes written */
    uint32_t opcode;
    int32_t error;      /* errno, 0: success */
    uint32_t us;        /* pop to reply */
    uint32_t has;       /* PVFS_OPREC_* */
};

struct pvfs_opstats;
/* Counters, and with ring_records > 0 a ring of that many records (rounded up to a power
 * of two) per serving thread.  NULL if out of memory.  The caller holds one reference. */
struct pvfs_opstats *pvfs_opstats_new(uint32_t ring_records);
void pvfs_opstats_unref(struct pvfs_opstats *st);
/* The counters of opcode (< PVFS_OPSTATS_OPCODES), summed over every slot so far, into
 * *out.  Read while serving goes on: a request being counted may show in some fields and
 * not yet in others. */
void pvfs_opstats_read(struct pvfs_opstats *st, uint32_t opcode, struct pvfs_opstats_op *out);
/* The name a line gives opcode (opslog.py's opname: Python sets them all, one source). */
void pvfs_opstats_set_opname(struct pvfs_opstats *st, uint32_t opcode, const char *name);
/* The longest line pvfs_opstats_drain writes. */
#define PVFS_OPLINE_MAX 512
/* Move records out of the rings as ops-log lines into buf (whole lines, at most cap bytes;
 * give it at least PVFS_OPLINE_MAX), in the order they were made (merged across the rings
 * by time): the lines opslog.py's json_line makes of Python's records, byte for byte.
 * Returns the bytes written and sets *records.  wall_offset_ns: CLOCK_REALTIME minus
 * CLOCK_MONOTONIC, to turn the records' times into wall-clock time. */
uint64_t pvfs_opstats_drain(struct pvfs_opstats *st, char *buf, uint64_t cap,
                            int64_t wall_offset_ns, uint32_t *records);
/* Records dropped so far because a ring was full. */
uint64_t pvfs_opstats_dropped(struct pvfs_opstats *st);
/* CFFI-END */

void pvfs_opstats_ref(struct pvfs_opstats *st);

/* A request C served, as the hot path reports it (hotpath.c). */
struct pvfs_opstats_req {
    uint32_t opcode;
    uint64_t unique, nodeid;
    const uint8_t *args;       /* the first argument bytes (little-endian) */
    uint32_t have_args;
    uint64_t t0_ns;            /* CLOCK_MONOTONIC at the pop */
};
/* Record a served request: error (errno or 0), the reply body it got (body, body_len) and
 * the data bytes after it. */
void pvfs_opstats_served(struct pvfs_opstats *st, const struct pvfs_opstats_req *r, int error,
                         const void *body, uint32_t body_len, uint32_t data_len);

/* CLOCK_MONOTONIC in ns. */
static inline uint64_t pvfs_opstats_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
