/* sandbox: the process-containment syscalls Python 3.11's os module lacks (unshare, mount,
 * pivot_root, prctl, capget/capset).
 *
 * As in fsops, every function returns a non-negative result or -errno.  These run once at
 * start-up, before any guest request is read.
 */
#ifndef PVFS_SANDBOX_H
#define PVFS_SANDBOX_H
#include <stdint.h>

/* CFFI-BEGIN */
/* <sched.h> CLONE_NEW* bits for unshare(2). */
#define PVFS_SB_CLONE_NEWNS 0x00020000
#define PVFS_SB_CLONE_NEWUSER 0x10000000
#define PVFS_SB_CLONE_NEWPID 0x20000000
#define PVFS_SB_CLONE_NEWNET 0x40000000

/* <sys/mount.h> flags for mount(2) and umount2(2). */
#define PVFS_SB_MS_RDONLY 1
#define PVFS_SB_MS_NOSUID 2
#define PVFS_SB_MS_NODEV 4
#define PVFS_SB_MS_NOEXEC 8
#define PVFS_SB_MS_REMOUNT 32
#define PVFS_SB_MS_BIND 4096
#define PVFS_SB_MS_REC 16384
#define PVFS_SB_MS_PRIVATE 262144
#define PVFS_SB_MS_SLAVE 524288
#define PVFS_SB_MNT_DETACH 2

int pvfs_sb_unshare(int flags);
/* source, fstype and data may be NULL. */
int pvfs_sb_mount(const char *source, const char *target, const char *fstype,
                  uint64_t flags, const char *data);
int pvfs_sb_umount2(const char *target, int flags);
int pvfs_sb_pivot_root(const char *new_root, const char *put_old);

/* prctl(PR_SET_PDEATHSIG): the kernel sends `sig` to this process when its parent dies. */
int pvfs_sb_set_pdeathsig(int sig);

/* Capabilities as 64-bit masks (bit n = capability n), for the calling thread. */
int pvfs_sb_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable);
int pvfs_sb_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
/* prctl(PR_CAPBSET_READ / PR_CAPBSET_DROP): the bounding set, one capability at a time. */
int pvfs_sb_capbset_read(int cap);
int pvfs_sb_capbset_drop(int cap);
/* prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL); 0 also when the kernel has no ambient set. */
int pvfs_sb_ambient_clear(void);
/* CFFI-END */

#endif
