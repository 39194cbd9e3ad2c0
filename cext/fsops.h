/* fsops: the file-system syscalls Python's os module lacks.
 *
 * Every function returns a non-negative result or -errno: errno is not carried across the
 * cffi boundary reliably (other C code can run on the thread before Python reads it), so
 * the error travels in the return value instead.  cffi releases the GIL around each call.
 */
#ifndef PVFS_FSOPS_H
#define PVFS_FSOPS_H
#include <stdint.h>

/* CFFI-BEGIN */
/* openat2(2) RESOLVE_* bits, named after <linux/openat2.h>. */
#define PVFS_FS_RESOLVE_NO_XDEV 1
#define PVFS_FS_RESOLVE_NO_MAGICLINKS 2
#define PVFS_FS_RESOLVE_NO_SYMLINKS 4
#define PVFS_FS_RESOLVE_BENEATH 8
#define PVFS_FS_RESOLVE_IN_ROOT 16

/* The fields of struct statx we use, flattened (plus the mount id when the kernel gives it). */
struct pvfs_fs_statx {
    uint32_t mask;
    uint32_t blksize;
    uint64_t attributes;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint32_t mode;
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t attributes_mask;
    int64_t atime_sec;
    uint32_t atime_nsec;
    int64_t btime_sec;
    uint32_t btime_nsec;
    int64_t ctime_sec;
    uint32_t ctime_nsec;
    int64_t mtime_sec;
    uint32_t mtime_nsec;
    uint32_t rdev_major;
    uint32_t rdev_minor;
    uint32_t dev_major;
    uint32_t dev_minor;
    uint64_t mnt_id;
};

/* Open `path` relative to `dirfd` with openat2(2) and the given RESOLVE_* bits.  When the
 * kernel has no openat2 (ENOSYS, Linux < 5.6) it falls back to openat(2) with O_NOFOLLOW,
 * which is only safe for a single path component: the fallback refuses anything else. */
int pvfs_fs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
/* 1: use openat2 when the kernel has it (default); 0: always take the fallback (tests). */
void pvfs_fs_set_openat2_enabled(int enabled);

/* setfsuid/setfsgid for the calling thread only.  Return the previous id, or -EPERM when
 * the change did not take (the syscalls themselves cannot report failure). */
int64_t pvfs_fs_setfsuid(uint32_t uid);
int64_t pvfs_fs_setfsgid(uint32_t gid);
/* Give the calling thread its own fs_struct (cwd, root, umask): after this, umask(2) in
 * this thread no longer changes the umask of the others. */
int pvfs_fs_unshare_fs(void);

int pvfs_fs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                      uint32_t flags);
int pvfs_fs_statx(int dirfd, const char *path, int flags, uint32_t mask,
                  struct pvfs_fs_statx *out);
int pvfs_fs_fchownat(int dirfd, const char *path, uint32_t uid, uint32_t gid, int flags);
/* utimensat(2); nsec may be UTIME_NOW or UTIME_OMIT.  path NULL means futimens(dirfd). */
int pvfs_fs_utimensat(int dirfd, const char *path, int64_t atime_sec, int64_t atime_nsec,
                      int64_t mtime_sec, int64_t mtime_nsec, int flags);
int pvfs_fs_fallocate(int fd, int mode, int64_t offset, int64_t length);
int pvfs_fs_syncfs(int fd);
/* Raw getdents64(2) into buf: returns bytes filled (0 at end) or -errno. */
int64_t pvfs_fs_getdents64(int fd, void *buf, uint64_t size);

#define PVFS_FS_UTIME_NOW 1073741823
#define PVFS_FS_UTIME_OMIT 1073741822
/* CFFI-END */

#endif
