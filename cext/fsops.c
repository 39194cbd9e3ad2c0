/* fsops: file-system syscalls that Python's os module lacks.  See fsops.h. */
#define _GNU_SOURCE
#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x00001000U
#endif

/* struct open_how from <linux/openat2.h>, spelled out so old headers still build. */
struct pvfs_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

static int openat2_enabled = 1;   /* cleared for good once the kernel answers ENOSYS */

void pvfs_fs_set_openat2_enabled(int enabled) { openat2_enabled = enabled ? 1 : 0; }

/* The fallback walks no path: one component, never "." or "..", never a symlink. */
static int openat_one_component(int dirfd, const char *path, uint64_t flags, uint64_t mode)
{
    if (path[0] == '\0' || strchr(path, '/') != NULL || strcmp(path, "..") == 0)
        return -EXDEV;
    int fd = openat(dirfd, path, (int)flags | O_NOFOLLOW, (mode_t)mode);
    return fd < 0 ? -errno : fd;
}

int pvfs_fs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    if (__atomic_load_n(&openat2_enabled, __ATOMIC_RELAXED)) {
        struct pvfs_open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
        if (fd >= 0)
            return (int)fd;
        if (errno != ENOSYS)
            return -errno;
        __atomic_store_n(&openat2_enabled, 0, __ATOMIC_RELAXED);
    }
    return openat_one_component(dirfd, path, flags, mode);
}

int64_t pvfs_fs_setfsuid(uint32_t uid)
{
    /* setfsuid returns the previous fsuid whether or not it succeeded; asking again tells. */
    int64_t previous = (uint32_t)setfsuid(uid);
    if ((uint32_t)setfsuid(uid) != uid)
        return -EPERM;
    return previous;
}

int64_t pvfs_fs_setfsgid(uint32_t gid)
{
    int64_t previous = (uint32_t)setfsgid(gid);
    if ((uint32_t)setfsgid(gid) != gid)
        return -EPERM;
    return previous;
}

int pvfs_fs_unshare_fs(void) { return unshare(CLONE_FS) != 0 ? -errno : 0; }

int pvfs_fs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                      uint32_t flags)
{
    long rc = syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
    return rc < 0 ? -errno : 0;
}

int pvfs_fs_statx(int dirfd, const char *path, int flags, uint32_t mask, struct pvfs_fs_statx *out)
{
    struct statx stx;
    memset(&stx, 0, sizeof(stx));
    if (statx(dirfd, path, flags, mask | STATX_MNT_ID, &stx) != 0)
        return -errno;
    out->mask = stx.stx_mask;
    out->blksize = stx.stx_blksize;
    out->attributes = stx.stx_attributes;
    out->nlink = stx.stx_nlink;
    out->uid = stx.stx_uid;
    out->gid = stx.stx_gid;
    out->mode = stx.stx_mode;
    out->ino = stx.stx_ino;
    out->size = stx.stx_size;
    out->blocks = stx.stx_blocks;
    out->attributes_mask = stx.stx_attributes_mask;
    out->atime_sec = stx.stx_atime.tv_sec;
    out->atime_nsec = stx.stx_atime.tv_nsec;
    out->btime_sec = stx.stx_btime.tv_sec;
    out->btime_nsec = stx.stx_btime.tv_nsec;
    out->ctime_sec = stx.stx_ctime.tv_sec;
    out->ctime_nsec = stx.stx_ctime.tv_nsec;
    out->mtime_sec = stx.stx_mtime.tv_sec;
    out->mtime_nsec = stx.stx_mtime.tv_nsec;
    out->rdev_major = stx.stx_rdev_major;
    out->rdev_minor = stx.stx_rdev_minor;
    out->dev_major = stx.stx_dev_major;
    out->dev_minor = stx.stx_dev_minor;
    /* stx_mnt_id sits in what older headers call __spare2; read it by offset (0x90). */
    uint64_t mnt_id = 0;
    if (stx.stx_mask & STATX_MNT_ID)
        memcpy(&mnt_id, (const char *)&stx + 0x90, sizeof(mnt_id));
    out->mnt_id = mnt_id;
    return 0;
}

int pvfs_fs_fchownat(int dirfd, const char *path, uint32_t uid, uint32_t gid, int flags)
{
    return fchownat(dirfd, path, (uid_t)uid, (gid_t)gid, flags) != 0 ? -errno : 0;
}

int pvfs_fs_utimensat(int dirfd, const char *path, int64_t atime_sec, int64_t atime_nsec,
                      int64_t mtime_sec, int64_t mtime_nsec, int flags)
{
    struct timespec ts[2] = {
        {.tv_sec = atime_sec, .tv_nsec = atime_nsec},
        {.tv_sec = mtime_sec, .tv_nsec = mtime_nsec},
    };
    int rc = path == NULL ? futimens(dirfd, ts) : utimensat(dirfd, path, ts, flags);
    return rc != 0 ? -errno : 0;
}

int pvfs_fs_fallocate(int fd, int mode, int64_t offset, int64_t length)
{
    return fallocate(fd, mode, offset, length) != 0 ? -errno : 0;
}

int pvfs_fs_syncfs(int fd) { return syncfs(fd) != 0 ? -errno : 0; }

int64_t pvfs_fs_getdents64(int fd, void *buf, uint64_t size)
{
    long n = syscall(SYS_getdents64, fd, buf, size);
    return n < 0 ? -errno : n;
}
