/* Acting as the guest caller (see caller.h). */
#define _GNU_SOURCE
#include "caller.h"
#include "fsops.h"

#include <sys/stat.h>

/* 1: this thread has its own fs_struct (its umask is its own); -1: the kernel refused
 * (created files then get the daemon's umask, as in Python); 0: not tried yet. */
static __thread int own_fs;

int pvfs_caller_begin(struct pvfs_caller *c, int switch_ids, uint32_t uid, uint32_t gid,
                      uint32_t umask_bits)
{
    c->umask_set = c->ids_set = 0;
    if (!own_fs)
        own_fs = pvfs_fs_unshare_fs() == 0 ? 1 : -1;
    if (own_fs > 0) {
        c->old_umask = umask(umask_bits & 0777);
        c->umask_set = 1;
    }
    if (!switch_ids || (uid == 0 && gid == 0))
        return 0;
    int64_t old_gid = pvfs_fs_setfsgid(gid);
    if (old_gid < 0) {
        pvfs_caller_end(c);
        return (int)old_gid;
    }
    int64_t old_uid = pvfs_fs_setfsuid(uid);
    if (old_uid < 0) {
        pvfs_fs_setfsgid((uint32_t)old_gid);
        pvfs_caller_end(c);
        return (int)old_uid;
    }
    c->old_uid = (uint32_t)old_uid;
    c->old_gid = (uint32_t)old_gid;
    c->ids_set = 1;
    return 0;
}

void pvfs_caller_end(struct pvfs_caller *c)
{
    if (c->ids_set) {
        pvfs_fs_setfsuid(c->old_uid);
        pvfs_fs_setfsgid(c->old_gid);
        c->ids_set = 0;
    }
    if (c->umask_set) {
        umask(c->old_umask);
        c->umask_set = 0;
    }
}
