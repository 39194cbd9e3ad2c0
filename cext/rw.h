/* READ and WRITE served in C: a preadv/pwritev between the file and guest memory, through
 * the store's handle (hotpath.h says when). */
#ifndef PVFS_RW_H
#define PVFS_RW_H

#include "hotpath.h"

/* CFFI-BEGIN */
/* CFFI-END */

int pvfs_serve_read(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_write(struct pvfs_hot *h, struct pvfs_hot_req *r);

#endif
