/* SETATTR served in C, as PassthroughFs.setattr applies it (passthrough/names.py _apply):
 * mode, owner, size, times, in that order, through the handle when the request names one,
 * else through the inode; then the attributes after.  A kill-suid/sgid SETATTR is
 * Python's. */
#ifndef PVFS_SETATTR_H
#define PVFS_SETATTR_H

#include "hotpath.h"

/* CFFI-BEGIN */
/* CFFI-END */

int pvfs_serve_setattr(struct pvfs_hot *h, struct pvfs_hot_req *r);

#endif
