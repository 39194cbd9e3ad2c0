/* seccomp: the daemon's system-call allow-list, loaded as a seccomp-BPF filter by libseccomp.
 *
 * libseccomp rather than a hand-written BPF program: it maps syscall names to numbers for the
 * architecture it runs on (the allow-list is a list of names, portable across x86_64 and
 * aarch64), checks the audit architecture token (so a 64-bit process cannot slip past the
 * filter through the i386 or x32 entry points), and knows each action's kernel encoding.
 * virtiofsd uses it for the same reasons.
 */
#ifndef PVFS_SECCOMP_FILTER_H
#define PVFS_SECCOMP_FILTER_H
#include <stdint.h>

/* CFFI-BEGIN */
/* What happens to a system call outside the allow-list. */
#define PVFS_SECCOMP_KILL 1   /* the kernel kills the whole process (SIGSYS) */
#define PVFS_SECCOMP_LOG 2    /* the call goes through and the kernel logs it (audit) */
#define PVFS_SECCOMP_TRAP 3   /* SIGSYS: print the call's name and number on stderr, then die */

/* One allow rule: the syscall `name`, with any arguments (arg < 0) or only when argument
 * number `arg` equals `value`. */
struct pvfs_seccomp_rule {
    const char *name;
    int arg;
    uint64_t value;
};

/* Load a filter allowing exactly the `count` rules into every thread of the process
 * (TSYNC), with no_new_privs set.  Names the running architecture does not have are
 * skipped.  Returns how many rules were added, or -errno (-EINVAL: unknown action). */
int pvfs_seccomp_install(int action, const struct pvfs_seccomp_rule *rules, int count);
/* The syscall number of `name` on the running architecture, or -1 if it has none. */
int pvfs_seccomp_resolve(const char *name);
/* CFFI-END */

#endif
