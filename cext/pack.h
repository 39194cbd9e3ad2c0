/* FUSE replies packed in C: attributes, entries, and the reply header, byte for byte what
 * the Python server packs (server/packing.py), so a request C answers gets the answer
 * Python would have given.  The layouts are fusewire.h's. */
#ifndef PVFS_PACK_H
#define PVFS_PACK_H

#include <endian.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include "vq.h"

/* CFFI-BEGIN */
/* CFFI-END */

struct statx;

/* FUSE wire structs (until fusewire.h): Linux include/uapi/linux/fuse.h names. */
struct pvfs_fuse_in_header { uint32_t len, opcode; uint64_t unique, nodeid; uint32_t uid, gid, pid;
                             uint16_t total_extlen, padding; };
struct pvfs_fuse_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct pvfs_fuse_attr { uint64_t ino, size, blocks, atime, mtime, ctime;
                        uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev,
                                 blksize, flags; };
struct pvfs_fuse_entry_out { uint64_t nodeid, generation, entry_valid, attr_valid;
                             uint32_t entry_valid_nsec, attr_valid_nsec;
                             struct pvfs_fuse_attr attr; };
struct pvfs_fuse_attr_out { uint64_t attr_valid; uint32_t attr_valid_nsec, dummy;
                            struct pvfs_fuse_attr attr; };
struct pvfs_fuse_getattr_in { uint32_t getattr_flags, dummy; uint64_t fh; };
struct pvfs_fuse_read_in { uint64_t fh, offset; uint32_t size, read_flags; uint64_t lock_owner;
                           uint32_t flags, padding; };
struct pvfs_fuse_write_in { uint64_t fh, offset; uint32_t size, write_flags; uint64_t lock_owner;
                            uint32_t flags, padding; };
struct pvfs_fuse_write_out { uint32_t size, padding; };
struct pvfs_fuse_open_in { uint32_t flags, open_flags; };
struct pvfs_fuse_create_in { uint32_t flags, mode, umask, open_flags; };
struct pvfs_fuse_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };
struct pvfs_fuse_release_in { uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner; };
struct pvfs_fuse_flush_in { uint64_t fh; uint32_t unused, padding; uint64_t lock_owner; };
struct pvfs_fuse_fsync_in { uint64_t fh; uint32_t fsync_flags, padding; };
struct pvfs_fuse_mkdir_in { uint32_t mode, umask; };
struct pvfs_fuse_mknod_in { uint32_t mode, rdev, umask, padding; };
struct pvfs_fuse_forget_in { uint64_t nlookup; };
struct pvfs_fuse_forget_one { uint64_t nodeid, nlookup; };
struct pvfs_fuse_batch_forget_in { uint32_t count, dummy; };

static inline uint32_t pvfs_get32(const void *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static inline uint64_t pvfs_get64(const void *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static inline void pvfs_put32(void *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static inline void pvfs_put64(void *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }

/* What every attribute C packs says besides the file's own: blksize is the guest page size
 * (whatever the host file system reports), and the attribute/entry timeout. */
struct pvfs_attr_policy {
    uint32_t blksize;
    uint64_t valid_sec;
    uint32_t valid_nsec;
};

/* struct fuse_attr from a stat / a statx (flags 0: C packs no DAX or submount flag). */
void pvfs_pack_attr(uint8_t *at, const struct stat *st, uint32_t blksize);
void pvfs_pack_attr_statx(uint8_t *at, const struct statx *sx, uint32_t blksize);
/* struct fuse_entry_out for nodeid (generation 0). */
void pvfs_pack_entry(uint8_t *b, uint64_t nodeid, const struct statx *sx,
                     const struct pvfs_attr_policy *p);
/* struct fuse_attr_out. */
void pvfs_pack_attr_out(uint8_t *b, const struct stat *st, const struct pvfs_attr_policy *p);

/* Reply with a header (and body; data_len bytes already written after it) and complete the
 * request; with defer, the interrupt waits for pvfs_vq_flush_signal.  error is an errno
 * (positive) or 0. */
void pvfs_reply(struct pvfs_req *req, uint64_t unique, int error, const void *body,
                uint32_t body_len, uint32_t data_len, int defer);

#endif
