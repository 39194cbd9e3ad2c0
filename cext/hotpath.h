/* The hot path: FUSE READ, WRITE, GETATTR and LOOKUP served in C without entering Python,
 * and READDIRPLUS records packed in C for the Python server.
 *
 * Three pieces:
 *
 * - A table (pvfs_fhtab) used twice: fh -> fd, filled by the passthrough file system as it
 *   opens files (passthrough/handles.py) and emptied on RELEASE; and nodeid -> O_PATH fd
 *   plus the file's identity, the inode table (passthrough/inodes.py), which C LOOKUPs may
 *   add to.  An entry is reference counted: the Python owner holds one reference, and
 *   every C request holds one while it uses the fd, so a RELEASE racing with a READ never
 *   closes the fd under it (nor lets the number be reused by another open): the fd is
 *   closed by whichever of them lets go last.
 *
 * - A serving loop (pvfs_hot_run) for a request queue: it waits for kicks, pops chains,
 *   and serves READ/WRITE (preadv/pwritev between the file and guest memory), GETATTR
 *   (fstat of the inode's fd) and LOOKUP (statx of the name, a hit in the inode table)
 *   itself when it is safe to -- the session is initialised, the opcode is enabled, the
 *   request is well-formed and ordinary, the fh or nodeid is in its table -- writing the
 *   reply and pushing the used entry.  Everything else (other opcodes, anything unusual,
 *   every error the Python server would have to explain) is handed back to the caller
 *   untouched, who gives it to the Python server -- on the queue thread itself for quick
 *   opcodes (a hand-off to a worker thread costs more than a GETATTR), to the worker pool
 *   for the ones that may block.  So the C path never answers differently from Python: it
 *   answers only the cases where Python's answer would be the same bytes.
 *
 * - pvfs_dirplus: READDIRPLUS records for PassthroughFs.readdirplus_records.
 *
 * Several threads may run the loop on one queue, leader/follower style (pvfs_hotq); the
 * loop does not allocate.  A READ or WRITE that may block hands the ring to another thread
 * first; a GETATTR or LOOKUP served in C does not (see the note above pvfs_hot_run).
 */
#ifndef PVFS_HOTPATH_H
#define PVFS_HOTPATH_H

#include <stdint.h>
#include "vq.h"

/* CFFI-BEGIN */
struct pvfs_fhtab;
struct pvfs_fh;

struct pvfs_fhtab *pvfs_fhtab_new(void);
/* Drop a reference to the table (the owner's, or a serving context's). */
void pvfs_fhtab_unref(struct pvfs_fhtab *t);
/* Register fh -> fd; the entry takes over closing fd (see pvfs_fh_close).  NULL if fh is
 * 0 or ~0 (reserved), already present, or memory is short: the caller keeps the fd. */
struct pvfs_fh *pvfs_fhtab_add(struct pvfs_fhtab *t, uint64_t fh, int fd);
/* An inode: nodeid -> O_PATH fd as pvfs_fhtab_add, plus the file's identity, so that a
 * C LOOKUP of a name that resolves to it answers with its nodeid and counts the lookup in
 * the entry.  NULL also if the identity is already registered. */
struct pvfs_fh *pvfs_fhtab_add_inode(struct pvfs_fhtab *t, uint64_t nodeid, int fd,
                                     uint64_t dev, uint64_t ino, uint64_t mnt_id, uint32_t mode);
/* A fresh nodeid (C LOOKUPs that open new inodes take theirs from the same counter). */
uint64_t pvfs_fhtab_new_id(struct pvfs_fhtab *t);
/* What the owner needs to know of an inode a C LOOKUP registered. */
struct pvfs_inode_info {
    uint64_t nodeid;
    int fd;            /* the entry's: closed through pvfs_fh_close */
    uint64_t dev, ino, mnt_id;
    uint32_t mode;
};
/* Take over an inode a C LOOKUP registered and the owner has not seen yet, found by nodeid
 * (key NULL) or by identity (key: dev, ino, mnt_id): the entry (the owner now holds its
 * reference; its lookups are all in the entry's count, see pvfs_fh_settle) with *info
 * filled, or NULL if there is none not yet adopted. */
struct pvfs_fh *pvfs_fhtab_adopt(struct pvfs_fhtab *t, uint64_t nodeid, const uint64_t *key,
                                 struct pvfs_inode_info *info);
/* How many registered inodes no owner has adopted yet; drop them all (end of session). */
unsigned pvfs_fhtab_unadopted(struct pvfs_fhtab *t);
unsigned pvfs_fhtab_purge_unadopted(struct pvfs_fhtab *t);
/* Settle an inode's lookup count: the owner's count ``held`` plus what C LOOKUPs counted
 * since the last settle, minus ``n`` (a FORGET's nlookup; 0 to just read it), floored at 0.
 * At 0 the entry leaves the table (as pvfs_fhtab_remove) under the same lock, so no C
 * LOOKUP can hand the nodeid out again.  Returns the total, which the owner now holds. */
uint64_t pvfs_fh_settle(struct pvfs_fhtab *t, struct pvfs_fh *e, uint64_t held, uint64_t n);
/* Lookups counted in C not yet settled (for statistics and tests). */
uint64_t pvfs_fh_pending(struct pvfs_fhtab *t, struct pvfs_fh *e);
/* C lookups of fh fail from now on (RELEASE).  The entry and its fd stay valid. */
void pvfs_fhtab_remove(struct pvfs_fhtab *t, uint64_t fh);
/* The owner is done with the entry: its fd is closed now, or by the last C user. */
void pvfs_fh_close(struct pvfs_fh *e);
unsigned pvfs_fhtab_count(struct pvfs_fhtab *t);

/* READDIRPLUS records of the directory open as dir_fd (whose O_PATH fd is parent_fd, on
 * mount parent_mnt), from offset on, packed into out (room bytes) as the Python server
 * packs them (server/dirs.py, server/packing.py):
 * each entry's lookup counted in the table (as a C LOOKUP's), an inode the table does not
 * hold opened and registered when new_ok (else the entry is left to Python); "." and ".."
 * as nodeid 0.  Returns the bytes packed, or a negative errno when nothing was;
 * *next_offset is where the entries packed (or skipped: gone since getdents) end, *why why
 * it stopped: */
#define PVFS_DIRPLUS_END 0      /* end of the directory */
#define PVFS_DIRPLUS_FULL 1     /* the next entry does not fit */
#define PVFS_DIRPLUS_PYTHON 2   /* the entry at *next_offset is Python's (another mount, an
                                   error, a new inode without new_ok: Python looks it up
                                   or reports the error) */
int64_t pvfs_dirplus(struct pvfs_fhtab *inodes, int dir_fd, int parent_fd, uint64_t parent_mnt,
                     int new_ok, uint64_t offset, uint8_t *out, uint32_t room, uint32_t blksize,
                     uint64_t valid_sec, uint32_t valid_nsec, uint64_t *next_offset, int *why);

/* The most argument bytes a request other than WRITE may claim: server.ARGS_MAX (a test
 * holds the two equal).  C leaves a longer one to Python, which refuses it unread. */
#define PVFS_FUSE_ARGS_MAX 77824

/* Opcodes the loop may serve (pvfs_hot_set_ops). */
#define PVFS_HOT_READ 1
#define PVFS_HOT_WRITE 2
#define PVFS_HOT_GETATTR 4
#define PVFS_HOT_LOOKUP 8

enum {
    PVFS_HOT_STAT_READS = 0,      /* READs served in C */
    PVFS_HOT_STAT_WRITES = 1,     /* WRITEs served in C */
    PVFS_HOT_STAT_PASSED = 2,     /* requests handed to Python */
    PVFS_HOT_STAT_BYTES = 3,      /* bytes read + written in C */
    PVFS_HOT_STAT_GETATTRS = 4,   /* GETATTRs served in C */
    PVFS_HOT_STAT_LOOKUPS = 5,    /* LOOKUPs served in C */
};

struct pvfs_hot;
/* A serving context over a handle table (which it keeps a reference to). */
struct pvfs_hot *pvfs_hot_new(struct pvfs_fhtab *t);
void pvfs_hot_free(struct pvfs_hot *h);
/* GETATTR and LOOKUP in C (with PVFS_HOT_GETATTR/LOOKUP in ops): nodeids are looked up in ``inodes`` (a
 * table of O_PATH fds the inode table fills, see passthrough/inodes.py); every reply says
 * blksize and the attribute timeout given here.  Set once, before serving. */
void pvfs_hot_set_getattr(struct pvfs_hot *h, struct pvfs_fhtab *inodes, uint32_t blksize,
                          uint64_t valid_sec, uint32_t valid_nsec);
/* With PVFS_HOT_LOOKUP: may a C LOOKUP also open and register inodes the table does not
 * hold (only when the owner keeps an fd per inode, i.e. no file handles)?  Default 0. */
void pvfs_hot_set_lookup_new(struct pvfs_hot *h, int on);
/* Which opcodes (PVFS_HOT_*) the loop serves; 0 hands everything to Python. */
void pvfs_hot_set_ops(struct pvfs_hot *h, unsigned ops);
unsigned pvfs_hot_get_ops(struct pvfs_hot *h);
/* Opcodes (bit n: opcode n < 64) Python should serve on the queue thread itself rather
 * than hand to the worker pool (pvfs_hot_serve/run return PVFS_HOT_RUN_INLINE for them
 * instead of PVFS_HOT_RUN_POOL). */
void pvfs_hot_set_inline(struct pvfs_hot *h, uint64_t opcodes);
/* The FUSE session as INIT negotiated it: nothing is served in C while it is off.  A READ
 * asking for more than max_read (max_pages x guest page size) is left to Python. */
void pvfs_hot_set_session(struct pvfs_hot *h, int on, uint32_t minor, uint32_t max_write,
                          uint32_t max_read);
uint64_t pvfs_hot_stat(struct pvfs_hot *h, int which);

/* What pvfs_hot_serve and pvfs_hot_run return (or a negative errno). */
#define PVFS_HOT_RUN_EMPTY 0    /* pvfs_hot_serve: the ring is empty, notifications re-enabled */
#define PVFS_HOT_RUN_POOL 1     /* *out is a request for Python's worker pool */
#define PVFS_HOT_RUN_STOP 2     /* pvfs_hot_run: stop_fd is readable (not consumed), or the
                                   pvfs_hotq was stopped or paused */
#define PVFS_HOT_RUN_INLINE 3   /* *out is a request Python serves on this thread
                                   (its opcode is in pvfs_hot_set_inline's set) */

/* Serve what the ring holds.  Returns PVFS_HOT_RUN_POOL or PVFS_HOT_RUN_INLINE with *out
 * set, PVFS_HOT_RUN_EMPTY, or -EIO if the queue is broken or stopped. */
int pvfs_hot_serve(struct pvfs_hot *h, struct pvfs_vq *vq, struct pvfs_req **out);
/* The threads serving one queue share a struct pvfs_hotq: one of them at a time (the
 * leader) waits for kicks and pops, and hands over to another before serving what it
 * popped, waking it only when more requests are pending (see hotpath.c). */
struct pvfs_hotq;
struct pvfs_hotq *pvfs_hotq_new(void);
void pvfs_hotq_free(struct pvfs_hotq *q);
/* Every thread of the queue returns PVFS_HOT_RUN_STOP from pvfs_hot_run from now on (set
 * before joining them; a restarted queue gets a new pvfs_hotq). */
void pvfs_hotq_stop(struct pvfs_hotq *q);
/* A disabled ring (SET_VRING_ENABLE 0): pvfs_hot_run returns PVFS_HOT_RUN_STOP instead of
 * popping. */
void pvfs_hotq_set_paused(struct pvfs_hotq *q, int paused);
/* The queue thread's loop: serve, wait for a kick (kick_fd, -1: poll every timeout_ms),
 * serve...  Returns PVFS_HOT_RUN_POOL or PVFS_HOT_RUN_INLINE with *out set (a request for
 * Python, as pvfs_hot_serve), PVFS_HOT_RUN_STOP, or a negative errno (-EIO: queue broken
 * or stopped).  q may be NULL (every thread then waits for kicks).
 *
 * What may stall the queue: a READ or WRITE of 32 KiB or more, and a smaller READ not all
 * in the page cache, hand the ring to another thread before their preadv/pwritev; a smaller
 * WRITE is done by the thread holding the ring, and a follower takes the ring over once
 * it has taken PVFS_HOT_STALL_NS; a request passed up to Python gives up the ring, and a
 * follower takes it within PVFS_HOT_STALL_NS if Python is slow.  A GETATTR or LOOKUP
 * served in C does neither: its fstat/statx (and, for a new inode, openat2) runs on the
 * thread that holds the ring, so a stat that blocks on a slow host file system stalls the
 * queue until it returns.  With one thread per queue (PYVIRTIOFSD_HOT_THREADS=1) there is
 * no follower to take over at all. */
int pvfs_hot_run(struct pvfs_hot *h, struct pvfs_vq *vq, struct pvfs_hotq *q, int kick_fd,
                 int stop_fd, int timeout_ms, struct pvfs_req **out);
/* CFFI-END */

#endif
