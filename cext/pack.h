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
#include "fusewire.h"

/* CFFI-BEGIN */
/* CFFI-END */

struct statx;


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
