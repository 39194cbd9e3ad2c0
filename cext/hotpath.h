/* The hot path: FUSE requests served in C without entering Python -- READ, WRITE, and the
 * metadata that makes up a package install or a build (GETATTR, LOOKUP, CREATE, OPEN,
 * RELEASE, UNLINK, MKDIR, RENAME, SETATTR, FORGET...: serving() in hotpath.c).
 *
 * A serving loop (pvfs_hot_run) for a request queue waits for kicks, pops chains and
 * serves, itself, the requests it is safe to: the session is initialised, the opcode is
 * enabled (the file system's offload description, see passthrough/offload.py), the request
 * is well-formed and ordinary, its fh or nodeid is in the store (store.h) -- writing the
 * reply and pushing the used entry.  Everything else (other opcodes, anything unusual,
 * every error the Python server would have to explain) is handed back to the caller
 * untouched, who gives it to the Python server -- on the queue thread itself for quick
 * opcodes (a hand-off to a worker thread costs more than a GETATTR), to the worker pool for
 * the ones that may block.  So the C path never answers differently from Python: it
 * answers only the cases where Python's answer would be the same bytes.
 *
 * The pieces, one file each: store.c (inodes and handles), pack.c (reply layouts), rw.c
 * (READ, WRITE), meta.c (GETATTR, LOOKUP, READDIRPLUS records), mutate.c (creating,
 * removing, opening, releasing, forgetting; caller.c acts as the guest user), setattr.c,
 * leader.c (which of a queue's threads holds the ring), opstats.c (statistics and ops-log
 * records of what C serves, with --stats / --ops-log), and this file (the context,
 * dispatch, the loop).
 *
 * Several threads may run the loop on one queue, leader/follower style (leader.h); no
 * request stalls the queue on a slow host file system (see leader.h for how).  The loop
 * does not allocate.
 */
#ifndef PVFS_HOTPATH_H
#define PVFS_HOTPATH_H

#include <stdint.h>
#include "vq.h"
#include "store.h"
#include "pack.h"
#include "leader.h"
#include "opstats.h"

/* CFFI-BEGIN */
/* The most argument bytes a request other than WRITE may claim: server.ARGS_MAX (a test
 * holds the two equal).  C leaves a longer one to Python, which refuses it unread. */
#define PVFS_FUSE_ARGS_MAX 77824

/* Opcodes the loop may serve (pvfs_hot_set_ops takes a set: bit n is opcode n); these are
 * the bits of the four served from the start. */
#define PVFS_HOT_READ 0x8000      /* 1 << FUSE_READ (15) */
#define PVFS_HOT_WRITE 0x10000    /* 1 << FUSE_WRITE (16) */
#define PVFS_HOT_GETATTR 0x8      /* 1 << FUSE_GETATTR (3) */
#define PVFS_HOT_LOOKUP 0x2       /* 1 << FUSE_LOOKUP (1) */
/* Whether C can serve opcode at all (whatever the set says). */
int pvfs_hot_can_serve(uint32_t opcode);

enum {
    PVFS_HOT_STAT_READS = 0,      /* READs served in C */
    PVFS_HOT_STAT_WRITES = 1,     /* WRITEs served in C */
    PVFS_HOT_STAT_PASSED = 2,     /* requests handed to Python */
    PVFS_HOT_STAT_BYTES = 3,      /* bytes read + written in C */
    PVFS_HOT_STAT_GETATTRS = 4,   /* GETATTRs served in C */
    PVFS_HOT_STAT_LOOKUPS = 5,    /* LOOKUPs served in C */
    PVFS_HOT_STAT_DIRPLUS = 6,    /* READDIRPLUS requests served in C */
    PVFS_HOT_STAT_DIRS = 7,       /* READDIR requests served in C */
};

struct pvfs_hot;
/* A serving context over a store (which it keeps a reference to). */
struct pvfs_hot *pvfs_hot_new(struct pvfs_store *s);
void pvfs_hot_free(struct pvfs_hot *h);
/* What every attribute C packs says: blksize (the guest page size) and the attribute and
 * entry timeout.  Set once, before serving. */
void pvfs_hot_set_attr(struct pvfs_hot *h, uint32_t blksize, uint64_t valid_sec,
                       uint32_t valid_nsec);
/* Which opcodes (bit n: opcode n < 64) the loop serves; 0 hands everything to Python. */
void pvfs_hot_set_ops(struct pvfs_hot *h, uint64_t ops);
uint64_t pvfs_hot_get_ops(struct pvfs_hot *h);
/* The fuse_open_out flags OPEN/CREATE (file) and OPENDIR (dir) replies carry: the server's
 * cache policy (server/packing.py _open_out). */
void pvfs_hot_set_open_flags(struct pvfs_hot *h, uint32_t file, uint32_t dir);
/* Opcodes (bit n: opcode n < 64) Python should serve on the queue thread itself rather
 * than hand to the worker pool (pvfs_hot_serve/run return PVFS_HOT_RUN_INLINE for them
 * instead of PVFS_HOT_RUN_POOL). */
void pvfs_hot_set_inline(struct pvfs_hot *h, uint64_t opcodes);
/* The FUSE session as INIT negotiated it, known by its number (0: none, nothing is served
 * in C).  A READ asking for more than max_read (max_pages x guest page size) is left to
 * Python.  Turning it off returns once no request is being served in C any more, so the
 * caller may then clear the store (DESTROY, a reset) knowing C adds nothing to it.  Every
 * request C passes to Python carries the number current when it was popped (req->session):
 * ring order is session order, whenever Python gets to serve it. */
void pvfs_hot_set_session(struct pvfs_hot *h, uint32_t number, uint32_t minor,
                          uint32_t max_write, uint32_t max_read);
uint64_t pvfs_hot_stat(struct pvfs_hot *h, int which);
/* Record every request served in C in st (opstats.h: --stats, --ops-log), which the
 * context keeps a reference to.  Set once, before serving; without it (NULL) nothing is
 * recorded and recording costs one test per request. */
struct pvfs_opstats;
void pvfs_hot_set_opstats(struct pvfs_hot *h, struct pvfs_opstats *st);

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
/* The queue thread's loop: serve, wait for a kick (kick_fd, -1: poll every timeout_ms),
 * serve...  Returns PVFS_HOT_RUN_POOL or PVFS_HOT_RUN_INLINE with *out set (a request for
 * Python, as pvfs_hot_serve), PVFS_HOT_RUN_STOP, or a negative errno (-EIO: queue broken
 * or stopped).  q may be NULL (every thread then waits for kicks). */
int pvfs_hot_run(struct pvfs_hot *h, struct pvfs_vq *vq, struct pvfs_hotq *q, int kick_fd,
                 int stop_fd, int timeout_ms, struct pvfs_req **out);
/* CFFI-END */

/* ---- for the serving modules (rw.c, meta.c) ------------------------------------------- */

struct pvfs_hot {
    struct pvfs_store *store;
    struct pvfs_attr_policy attr;
    uint64_t ops;        /* atomic: bit n: opcode n */
    uint32_t fopen_file, fopen_dir;
    uint64_t inline_ops; /* atomic: bit n set: opcode n is served on the queue thread */
    uint64_t session;    /* atomic: on << 63 | minor << 32 | max_write */
    uint32_t max_read;   /* atomic, stored before session: max_pages x guest page size */
    uint32_t number;     /* atomic, stored before session: the session's number (0: none) */
    unsigned serving;    /* atomic: requests being served in C now (see set_session) */
    uint64_t stat[8];    /* atomic */
    struct pvfs_opstats *opstats;   /* NULL: nothing is recorded (pvfs_hot_set_opstats) */
};

/* A request being recorded (opstats.h): when it was popped, and whether its reply was. */
struct pvfs_hot_note {
    struct pvfs_opstats *st;
    uint64_t t0_ns;
    int done;
};

/* A request as the serving functions get it: the header decoded, the first argument bytes
 * copied, and the queue's leadership (NULL outside pvfs_hot_run). */
#define PVFS_HOT_ARGS 40
struct pvfs_hot_req {
    struct pvfs_req *req;
    struct pvfs_fuse_in_header in;   /* host byte order */
    uint8_t args[PVFS_HOT_ARGS];     /* the first argument bytes (little-endian) */
    uint32_t have_args;              /* how many of them the request has */
    uint32_t minor, max_write;       /* the session's */
    struct pvfs_lead *lead;
    struct pvfs_hot_note *note;      /* NULL unless requests are recorded */
};

/* What a serving function returns: SERVED (replied), or where Python should serve it
 * (nothing was written to it then). */
enum { PVFS_TO_PYTHON = 0, PVFS_SERVED = 1 };

static inline void pvfs_hot_count(struct pvfs_hot *h, int which, uint64_t n)
{
    __atomic_fetch_add(&h->stat[which], n, __ATOMIC_RELAXED);
}

/* The checks every C-served metadata request passes besides the session: the whole request
 * is within ARGS_MAX and the chain, and the reply area takes reply_len body bytes. */
int pvfs_hot_meta_ok(const struct pvfs_hot_req *r, uint32_t reply_len);
/* Borrow inode nodeid for a C request, with its O_PATH fd in v->fd: a file-handle inode's
 * handle is opened if nobody has it open, marked busy (open_by_handle_at may wait on the
 * file system).  NULL: unknown, lost in migration, or gone -- Python answers. */
struct pvfs_inode *pvfs_hot_inode(struct pvfs_hot *h, struct pvfs_lead *lead, uint64_t nodeid,
                                  struct pvfs_inode_view *v);
/* The request's strings from argument byte at on: exactly count NUL-terminated ones filling
 * the rest of the request (at most room bytes, copied into buf), or 0. */
int pvfs_hot_read_strings(const struct pvfs_hot_req *r, uint32_t at, char *buf, uint32_t room,
                          const char **out, int count);
/* One path component Python would take as it is: not empty, no '/', at most 255 bytes,
 * not "." or "..". */
int pvfs_hot_is_name(const char *s);
/* Complete r with error (errno, or 0 with body). */
void pvfs_hot_reply(const struct pvfs_hot_req *r, int error, const void *body, uint32_t len);
/* Complete r with success and the n data bytes already written after the out header. */
void pvfs_hot_reply_data(const struct pvfs_hot_req *r, uint32_t n);

#endif
