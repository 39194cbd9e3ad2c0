/* Acting as the guest caller in C, exactly as passthrough/credentials.py does in Python:
 * the calling thread's umask set for the operation (after giving the thread its own
 * fs_struct, once), then -- when the file system switches ids (the daemon runs as root) and
 * the caller is not root -- its fsgid and fsuid.  Both act on this thread only. */
#ifndef PVFS_CALLER_H
#define PVFS_CALLER_H

#include <stdint.h>
#include <sys/types.h>

/* CFFI-BEGIN */
/* CFFI-END */

struct pvfs_caller {
    int umask_set;
    mode_t old_umask;
    int ids_set;
    uint32_t old_uid, old_gid;
};

/* Become the caller (uid, gid) under umask (switch_ids: the file system's policy).  0, or
 * -errno when an id did not take (nothing is left changed then). */
int pvfs_caller_begin(struct pvfs_caller *c, int switch_ids, uint32_t uid, uint32_t gid,
                      uint32_t umask);
/* Back to the daemon's own ids and umask. */
void pvfs_caller_end(struct pvfs_caller *c);

#endif
