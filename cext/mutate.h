/* Metadata that creates, removes, opens and releases, served in C exactly as the Python
 * server and PassthroughFs serve it (server/names.py, server/files.py, server/dirs.py;
 * passthrough/names.py, files.py, dirs.py): CREATE, MKDIR, MKNOD, SYMLINK, LINK, UNLINK,
 * RMDIR, RENAME(2), OPEN, OPENDIR, RELEASE(DIR), FLUSH, FSYNC(DIR), STATFS, FORGET and
 * BATCH_FORGET.  Creating runs as the caller (caller.h).  Anything unusual -- an
 * extension (supplementary groups, a security context), a name Python must refuse, an
 * old protocol minor, a kill-suid/sgid open, an inode without an fd -- is Python's. */
#ifndef PVFS_MUTATE_H
#define PVFS_MUTATE_H

#include "hotpath.h"

/* CFFI-BEGIN */
/* CFFI-END */

int pvfs_serve_create(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_mkdir(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_mknod(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_symlink(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_link(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_unlink(struct pvfs_hot *h, struct pvfs_hot_req *r);   /* and RMDIR */
int pvfs_serve_rename(struct pvfs_hot *h, struct pvfs_hot_req *r);   /* and RENAME2 */
int pvfs_serve_open(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_opendir(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_release(struct pvfs_hot *h, struct pvfs_hot_req *r);  /* and RELEASEDIR */
int pvfs_serve_flush(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_fsync(struct pvfs_hot *h, struct pvfs_hot_req *r);    /* and FSYNCDIR */
int pvfs_serve_statfs(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_forget(struct pvfs_hot *h, struct pvfs_hot_req *r);
int pvfs_serve_batch_forget(struct pvfs_hot *h, struct pvfs_hot_req *r);

#endif
