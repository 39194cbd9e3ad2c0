/* The store: every inode the guest knows and every file it has open, for the passthrough
 * file system.  C owns it; Python (passthrough/inodes.py and handles.py) reaches it through
 * the calls below and keeps no copy of it.  The hot path (hotpath.c) and the READDIRPLUS
 * packer use the same store, so there is one answer to "which nodeid is this file", "how
 * many lookups does the guest hold" and "which fd is fh N".
 *
 * Inodes.  An inode is an O_PATH fd (or, with --inode-file-handles, a file handle that is
 * opened only while somebody borrows the inode: see "File handles" below), the file's identity (st_dev, st_ino,
 * mnt_id) -- two names of one file share one nodeid -- its file type, and the lookups the
 * guest holds.  pvfs_store_lookup counts a lookup (registering the file if it is new);
 * FORGET gives lookups back, and at zero the inode leaves the store.  Nodeids come from a
 * counter and are never reused within a store's life, so a stale nodeid finds nothing.
 * The root is nodeid 1 and is never forgotten.
 *
 * Handles.  An open file: fh -> an ordinary fd, the inode it was opened on, and what the
 * hot path needs to serve it (O_APPEND, a lock that serialises large writes and directory
 * reads).  fh numbers come from a counter too.
 *
 * Borrowing.  Every user -- a Python operation, a C request -- borrows an entry for as long
 * as it uses the fd (pvfs_inode_get/put, pvfs_handle_get/put).  An entry that leaves the
 * store (FORGET to zero, RELEASE, DESTROY) keeps its fd until the last borrower puts it
 * back, so a FORGET or RELEASE racing with a READ never closes the fd under it, nor lets
 * the fd number be reused by another open while the READ still uses it.
 *
 * Locking: one mutex per table (inodes, handles), held only for table work (never across
 * a syscall that may block).  Reference counts are atomic.
 */
#ifndef PVFS_STORE_H
#define PVFS_STORE_H

#include <stdint.h>

/* CFFI-BEGIN */
struct pvfs_store;
struct pvfs_inode;
struct pvfs_handle;

/* What a borrower sees of an inode (filled by pvfs_inode_get). */
struct pvfs_inode_view {
    uint64_t nodeid;
    int fd;              /* O_PATH; -1 for a handle-only inode until pvfs_inode_set_fd */
    uint32_t mode;       /* st_mode at lookup time (only the type bits are relied upon) */
    uint64_t dev, ino, mnt_id;
    uint32_t handle_len; /* > 0: a file-handle inode (pvfs_inode_handle gives the bytes) */
};

/* A store whose root (nodeid 1) is root_fd (an O_PATH fd of the shared directory, now the
 * store's); every inode keeps an fd until pvfs_store_set_file_handles says otherwise.  NULL
 * if memory is short (root_fd closed). */
struct pvfs_store *pvfs_store_new(int root_fd, uint64_t dev, uint64_t ino, uint64_t mnt_id,
                                  uint32_t mode);
/* The owner is done: every inode (the root too) and handle leave the store now, and their
 * fds are closed (borrowed ones when put back), whoever else still holds a reference. */
void pvfs_store_close(struct pvfs_store *s);
/* Drop a reference (the owner's, or a serving context's); the last one frees the store
 * (closing what pvfs_store_close has not). */
void pvfs_store_unref(struct pvfs_store *s);

/* File handles (--inode-file-handles).  A new inode keeps a file handle (name_to_handle_at)
 * instead of its O_PATH fd; a borrower that needs the fd opens the handle
 * (open_by_handle_at, pvfs_store_open_inode) and, when the last borrower is done, it stays
 * open among the few used last (idle_fds below) or is closed, so the daemon holds a bounded
 * number of inode fds however many files the guest knows.  The handle is kept as: the mount id (u64, little
 * endian), the handle type (i32), the handle bytes.  open_by_handle_at wants an fd on the
 * file's mount: the store keeps one (a real directory fd, not O_PATH) per mount, taken
 * from the first directory met there -- the root for the shared directory's own mount.  A
 * file on a mount without one (a bind-mounted file), or on a file system that makes no
 * handles, keeps its fd under "prefer"; under "mandatory" it cannot be looked up.
 * Both the C hot path and Python (passthrough/common.py) register inodes through these,
 * so the rules are written once. */
#define PVFS_HANDLES_NEVER 0
#define PVFS_HANDLES_PREFER 1
#define PVFS_HANDLES_MANDATORY 2
#define PVFS_HANDLE_ROOM 140     /* 12 bytes of head + MAX_HANDLE_SZ (128) */
/* Set once, before anything is served: PVFS_HANDLES_*; with handles, the root's mount is
 * remembered.  idle_fds: how many file-handle inodes nobody borrows keep their fd open,
 * the ones used last (an LRU list), so a GETATTR or LOOKUP under a busy directory does not
 * pay open_by_handle_at and close each time; 0: an fd is open only while borrowed.  The
 * daemon holds at most that many inode fds beyond those in use.  0, or -errno (the root's
 * file system makes no handles). */
int pvfs_store_set_file_handles(struct pvfs_store *s, int mode, uint32_t idle_fds);
/* The handle to keep for the file O_PATH fd refers to (file type from mode) into out
 * (PVFS_HANDLE_ROOM bytes): its length; 0: keep the fd instead ("never", or "prefer" and
 * no handle to be had); -errno under "mandatory" when there is no handle. */
int pvfs_store_make_handle(struct pvfs_store *s, int fd, uint32_t mode, uint8_t *out);
/* A borrowed inode's O_PATH fd, opening its handle if nobody has (the fd is the inode's,
 * valid until put back): the fd, or -errno (-EIO: an inode lost in migration, -ESTALE:
 * the file is gone or its mount unknown). */
int pvfs_store_open_inode(struct pvfs_store *s, struct pvfs_inode *i);
/* How many mounts the store keeps an fd for. */
uint32_t pvfs_store_mounts(struct pvfs_store *s);

/* Count one lookup of the file O_PATH fd refers to, whose identity and mode the caller
 * took from statx.  The store takes fd: it becomes the new inode's, or is closed when the
 * file has a nodeid already -- or when handle (handle_len bytes, opaque to the store) is
 * given, which a new inode keeps instead of the fd.  Returns the nodeid, or 0 if memory is
 * short (fd closed, nothing counted). */
uint64_t pvfs_store_lookup(struct pvfs_store *s, int fd, uint64_t dev, uint64_t ino,
                           uint64_t mnt_id, uint32_t mode, const uint8_t *handle,
                           uint32_t handle_len);
/* The nodeid of the file with this identity, if the guest holds it (0: none). */
uint64_t pvfs_store_find(struct pvfs_store *s, uint64_t dev, uint64_t ino, uint64_t mnt_id);
/* Borrow inode nodeid (NULL: unknown; *v is filled otherwise). */
struct pvfs_inode *pvfs_inode_get(struct pvfs_store *s, uint64_t nodeid,
                                  struct pvfs_inode_view *v);
void pvfs_inode_put(struct pvfs_store *s, struct pvfs_inode *i);
/* A file-handle inode's borrower opened fd for it: returns the fd borrowers use now --
 * fd, or the one a racing borrower installed first (the caller then closes its own).  The
 * fd is closed when the last borrower puts the inode back. */
int pvfs_inode_set_fd(struct pvfs_store *s, struct pvfs_inode *i, int fd);
/* Copy a file-handle inode's handle bytes into out (room bytes): their length. */
uint32_t pvfs_inode_handle(struct pvfs_inode *i, uint8_t *out, uint32_t room);
/* One more lookup of a borrowed inode (LOOKUP of "."). */
void pvfs_inode_add_lookup(struct pvfs_store *s, struct pvfs_inode *i);
/* FORGET: give back nlookup lookups of nodeid; at zero it leaves the store.  Unknown
 * nodeids and the root are ignored (FORGET has no reply to say so). */
void pvfs_store_forget(struct pvfs_store *s, uint64_t nodeid, uint64_t nlookup);
/* BATCH_FORGET: n (nodeid, nlookup) pairs. */
void pvfs_store_forget_many(struct pvfs_store *s, const uint64_t *pairs, uint32_t n);
/* Lookups the guest holds on nodeid (0: unknown). */
uint64_t pvfs_store_lookups(struct pvfs_store *s, uint64_t nodeid);

/* Open handles: fh for fd (now the store's) opened on nodeid; 0 if memory is short (fd
 * closed). */
uint64_t pvfs_store_open(struct pvfs_store *s, int fd, uint64_t nodeid);
/* Borrow handle fh (NULL: unknown); *fd and *nodeid are filled. */
struct pvfs_handle *pvfs_handle_get(struct pvfs_store *s, uint64_t fh, int *fd,
                                    uint64_t *nodeid);
void pvfs_handle_put(struct pvfs_handle *h);
/* RELEASE: fh leaves the store (its fd closes when the last borrower is done).  0, or
 * -EBADF if unknown. */
int pvfs_store_release(struct pvfs_store *s, uint64_t fh);
/* Serialise users of a handle's file position (directory reads) -- the same lock large
 * WRITEs through it take turns on. */
void pvfs_handle_lock(struct pvfs_handle *h);
void pvfs_handle_unlock(struct pvfs_handle *h);

/* DESTROY: every handle and every inode but the root leave the store. */
void pvfs_store_clear(struct pvfs_store *s);

/* What the file system does that the store's C users must do alike (metadata served in C,
 * cext/mutate.c): its options, and what INIT negotiated.  Set by PassthroughFs at
 * construction and at every INIT, before the session is published to C. */
#define PVFS_FS_SWITCH_IDS 1     /* create as the caller (setfsuid/setfsgid): daemon is root */
#define PVFS_FS_POSIX_ACL 2      /* FUSE_POSIX_ACL: apply the guest's umask here */
#define PVFS_FS_WRITEBACK 4      /* FUSE_WRITEBACK_CACHE: no O_APPEND, no write-only fds */
#define PVFS_FS_DIRECT_IO 8      /* --allow-direct-io: keep O_DIRECT */
#define PVFS_FS_NOATIME 16       /* --preserve-noatime: keep O_NOATIME */
void pvfs_store_set_policy(struct pvfs_store *s, uint32_t flags);
/* The /proc/self/fd directory (an O_PATH fd, which the store dups): files are reopened
 * through it.  0, or -errno. */
int pvfs_store_set_proc(struct pvfs_store *s, int proc_fd);

struct pvfs_store_counts {
    uint32_t inodes;     /* in the store, root included */
    uint32_t inode_fds;  /* of those, how many have an fd open now */
    uint32_t handles;
};
void pvfs_store_counts(struct pvfs_store *s, struct pvfs_store_counts *c);

/* Migration (backend/pyvirtiofsd/migration/): what the store holds, and putting it back
 * into another daemon's store under the same numbers, so the guest's nodeids and fhs go
 * on working.  Numbers at or above PVFS_STORE_MAX_ID are refused (a counter never wraps). */
#define PVFS_STORE_MAX_ID 0x7fffffffffffffff
/* (nodeid, lookups) of every inode but the root into out (room pairs): returns how many
 * there are, which may be more than room (call again with more). */
uint32_t pvfs_store_list_inodes(struct pvfs_store *s, uint64_t *out, uint32_t room);
/* (fh, nodeid) of every open handle into out (room pairs): how many there are. */
uint32_t pvfs_store_list_handles(struct pvfs_store *s, uint64_t *out, uint32_t room);
/* The numbers the next new inode and handle would get. */
void pvfs_store_next_ids(struct pvfs_store *s, uint64_t *next_nodeid, uint64_t *next_fh);
/* Raise the counters to at least these (never lowers them). */
void pvfs_store_raise_next_ids(struct pvfs_store *s, uint64_t next_nodeid, uint64_t next_fh);
/* Insert inode nodeid (> 1) holding lookups (> 0) lookups, as pvfs_store_lookup would
 * register it (takes fd; with a handle the fd is closed and the handle kept).  fd -1
 * without a handle: a "lost" inode, which has no identity and no fd -- its borrowers get
 * fd -1 and answer EIO; FORGET removes it as any other.  The counter is raised past
 * nodeid.  0, -EINVAL, -EEXIST (the nodeid or the identity is held already), -ENOMEM;
 * fd is closed on failure. */
int pvfs_store_insert_inode(struct pvfs_store *s, uint64_t nodeid, uint64_t lookups, int fd,
                            uint64_t dev, uint64_t ino, uint64_t mnt_id, uint32_t mode,
                            const uint8_t *handle, uint32_t handle_len);
/* Insert handle fh (> 0) for fd (now the store's) opened on nodeid; fd -1: a handle lost
 * in migration (C leaves it to Python, which answers EIO; RELEASE removes it).  The
 * counter is raised past fh.  0, -EINVAL, -EEXIST, -ENOMEM; fd is closed on failure. */
int pvfs_store_insert_handle(struct pvfs_store *s, uint64_t fh, int fd, uint64_t nodeid);
/* CFFI-END */

/* ---- for the other C modules (hotpath.c, dirplus) ---------------------------------------- */

struct statx;

void pvfs_store_ref(struct pvfs_store *s);
uint32_t pvfs_store_policy(struct pvfs_store *s);
int pvfs_store_proc_fd(struct pvfs_store *s);    /* -1 if not set */
/* Count a lookup of the file with sx's identity if the store holds it: its nodeid, or 0.
 * verify: with file handles, first make sure the held inode is not a deleted file whose
 * inode number went to this one -- which may open a handle (check_identity in store.c):
 * run it marked busy.  LOOKUP verifies; READDIRPLUS records do not (a stale one is found at
 * its first use, and the guest's retry gets the new file).  pvfs_store_count_or_add and
 * pvfs_store_lookup always verify. */
uint64_t pvfs_store_count_known(struct pvfs_store *s, const struct statx *sx, int verify);
/* As pvfs_store_lookup for a file C opened (fd, identity from sx), registering it if new,
 * with a handle made by pvfs_store_make_handle.  0 with errno if not (fd closed): ENOMEM,
 * or the reason "mandatory" found no handle. */
uint64_t pvfs_store_count_or_add(struct pvfs_store *s, int fd, const struct statx *sx);
/* A handle's fd for a C READ/WRITE: NULL if unknown, else borrowed (pvfs_handle_put), with
 * *append set if the fd has O_APPEND. */
struct pvfs_handle *pvfs_store_handle_fd(struct pvfs_store *s, uint64_t fh, int *fd,
                                         int *append);

#endif
