/* sandbox: containment syscalls Python's os module lacks.  See sandbox.h. */
#define _GNU_SOURCE
#include "sandbox.h"

#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The header spells the kernel's numbers out for cffi; the compiler checks them here. */
_Static_assert(PVFS_SB_CLONE_NEWNS == CLONE_NEWNS, "CLONE_NEWNS");
_Static_assert(PVFS_SB_CLONE_NEWUSER == CLONE_NEWUSER, "CLONE_NEWUSER");
_Static_assert(PVFS_SB_CLONE_NEWPID == CLONE_NEWPID, "CLONE_NEWPID");
_Static_assert(PVFS_SB_CLONE_NEWNET == CLONE_NEWNET, "CLONE_NEWNET");
_Static_assert(PVFS_SB_MS_RDONLY == MS_RDONLY, "MS_RDONLY");
_Static_assert(PVFS_SB_MS_NOSUID == MS_NOSUID, "MS_NOSUID");
_Static_assert(PVFS_SB_MS_NODEV == MS_NODEV, "MS_NODEV");
_Static_assert(PVFS_SB_MS_NOEXEC == MS_NOEXEC, "MS_NOEXEC");
_Static_assert(PVFS_SB_MS_REMOUNT == MS_REMOUNT, "MS_REMOUNT");
_Static_assert(PVFS_SB_MS_BIND == MS_BIND, "MS_BIND");
_Static_assert(PVFS_SB_MS_REC == MS_REC, "MS_REC");
_Static_assert(PVFS_SB_MS_PRIVATE == MS_PRIVATE, "MS_PRIVATE");
_Static_assert(PVFS_SB_MS_SLAVE == MS_SLAVE, "MS_SLAVE");
_Static_assert(PVFS_SB_MNT_DETACH == MNT_DETACH, "MNT_DETACH");

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

static int rc(long r) { return r < 0 ? -errno : (int)r; }

int pvfs_sb_unshare(int flags) { return rc(unshare(flags)); }

int pvfs_sb_mount(const char *source, const char *target, const char *fstype,
                  uint64_t flags, const char *data)
{
    return rc(mount(source, target, fstype, (unsigned long)flags, data));
}

int pvfs_sb_umount2(const char *target, int flags) { return rc(umount2(target, flags)); }

int pvfs_sb_pivot_root(const char *new_root, const char *put_old)
{
    return rc(syscall(SYS_pivot_root, new_root, put_old));   /* glibc has no wrapper */
}

int pvfs_sb_set_pdeathsig(int sig) { return rc(prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)); }

/* Version 3 capability sets are two 32-bit words per set (capabilities 0-31, 32-63). */
int pvfs_sb_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2] = {{0}};
    if (syscall(SYS_capget, &header, data) < 0)
        return -errno;
    *effective = data[0].effective | (uint64_t)data[1].effective << 32;
    *permitted = data[0].permitted | (uint64_t)data[1].permitted << 32;
    *inheritable = data[0].inheritable | (uint64_t)data[1].inheritable << 32;
    return 0;
}

int pvfs_sb_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2] = {
        {.effective = (uint32_t)effective, .permitted = (uint32_t)permitted,
         .inheritable = (uint32_t)inheritable},
        {.effective = (uint32_t)(effective >> 32), .permitted = (uint32_t)(permitted >> 32),
         .inheritable = (uint32_t)(inheritable >> 32)},
    };
    return rc(syscall(SYS_capset, &header, data));
}

int pvfs_sb_capbset_read(int cap) { return rc(prctl(PR_CAPBSET_READ, cap, 0, 0, 0)); }

int pvfs_sb_capbset_drop(int cap) { return rc(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)); }

int pvfs_sb_ambient_clear(void)
{
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return errno == EINVAL ? 0 : -errno;   /* EINVAL: a kernel before ambient sets (4.3) */
    return 0;
}
