/* Metadata served in C: GETATTR, LOOKUP, READDIR and READDIRPLUS for the serving loop, and the
 * READDIRPLUS records for the Python server too -- each answered exactly as the Python
 * server would (server/names.py, server/dirs.py, server/packing.py). */
#ifndef PVFS_META_H
#define PVFS_META_H

#include <stdint.h>
#include "hotpath.h"

/* CFFI-BEGIN */
/* READDIRPLUS records of the directory open as dir_fd, whose inode (borrowed by the
 * caller) is parent (its O_PATH fd parent_fd, on mount parent_mnt), from offset on, packed
 * into out (room bytes) as the Python server packs them (server/dirs.py,
 * server/packing.py): each entry's lookup counted in the store, an inode the store does
 * not hold opened and registered if the store keeps fds only (else the entry is left to
 * Python); "." and ".." as nodeid 0.  Returns the bytes packed, or a negative errno when
 * nothing was; *next_offset is where the entries packed (or skipped: gone since getdents)
 * end, *why why it stopped: */
#define PVFS_DIRPLUS_END 0      /* end of the directory */
#define PVFS_DIRPLUS_FULL 1     /* the next entry does not fit */
#define PVFS_DIRPLUS_PYTHON 2   /* the entry at *next_offset is Python's (another mount, an
                                   error, a new inode in a store with file handles: Python
                                   looks it up or reports the error) */
#define PVFS_DIRPLUS_ROOM 65536   /* the most one reply carries (a shorter one is fine) */
int64_t pvfs_dirplus(struct pvfs_store *s, int dir_fd, int parent_fd, uint64_t parent_mnt,
                     uint64_t offset, uint8_t *out, uint32_t room, uint32_t blksize,
                     uint64_t valid_sec, uint32_t valid_nsec, uint64_t *next_offset, int *why);
/* CFFI-END */

int pvfs_serve_getattr(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_lookup(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_readdirplus(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_readdir(struct pvfs_hot *h, struct pvfs_hot_req *r);

#endif
