/* seccomp: load the allow-list with libseccomp.  See seccomp_filter.h. */
#define _GNU_SOURCE
#include "seccomp_filter.h"

#include <errno.h>
#include <seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* Names for the SIGSYS report, looked up before the filter is loaded: the handler runs in
 * signal context and may not allocate. */
#define NAMES 1024
static char *syscall_names[NAMES];

static void put(char **p, const char *s)
{
    size_t n = strlen(s);
    memcpy(*p, s, n);
    *p += n;
}

static void put_uint(char **p, unsigned v)
{
    char digits[12];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < (int)sizeof(digits));
    while (n)
        *(*p)++ = digits[--n];
}

/* SIGSYS from SECCOMP_RET_TRAP: say which call was refused, then die of the signal as the
 * kill action would have (the default disposition is restored; the re-raised signal is
 * delivered as soon as this handler returns). */
static void on_sigsys(int sig, siginfo_t *info, void *context)
{
    char msg[160], *p = msg;
    int nr = info->si_syscall;
    put(&p, "pyvirtiofsd: seccomp refused system call ");
    if (nr >= 0 && nr < NAMES && syscall_names[nr] != NULL && strlen(syscall_names[nr]) < 64)
        put(&p, syscall_names[nr]);
    else
        put(&p, "?");
    put(&p, " (");
    put_uint(&p, (unsigned)nr);
    put(&p, ")\n");
    ssize_t ignored = write(STDERR_FILENO, msg, (size_t)(p - msg));
    (void)ignored;
    signal(SIGSYS, SIG_DFL);
    raise(SIGSYS);
}

static int install_trap_handler(void)
{
    for (int nr = 0; nr < NAMES; nr++)
        if (syscall_names[nr] == NULL)
            syscall_names[nr] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL) < 0 ? -errno : 0;
}

int pvfs_seccomp_resolve(const char *name)
{
    int nr = seccomp_syscall_resolve_name(name);
    return nr < 0 ? -1 : nr;
}

int pvfs_seccomp_install(int action, const struct pvfs_seccomp_rule *rules, int count)
{
    uint32_t default_action;
    switch (action) {
    case PVFS_SECCOMP_KILL: default_action = SCMP_ACT_KILL_PROCESS; break;
    case PVFS_SECCOMP_LOG: default_action = SCMP_ACT_LOG; break;
    case PVFS_SECCOMP_TRAP: default_action = SCMP_ACT_TRAP; break;
    default: return -EINVAL;
    }
    if (action == PVFS_SECCOMP_TRAP) {
        int r = install_trap_handler();
        if (r < 0)
            return r;
    }
    scmp_filter_ctx ctx = seccomp_init(default_action);
    if (ctx == NULL)
        return -ENOMEM;
    int allowed = 0;
    int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    for (int i = 0; r == 0 && i < count; i++) {
        int nr = seccomp_syscall_resolve_name(rules[i].name);
        if (nr < 0)
            continue;   /* not a syscall of this architecture */
        if (rules[i].arg < 0)
            r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
        else
            r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                 SCMP_CMP((unsigned)rules[i].arg, SCMP_CMP_EQ, rules[i].value));
        allowed++;
    }
    if (r == 0)
        r = seccomp_load(ctx);
    seccomp_release(ctx);
    if (r > 0)
        r = -ESRCH;   /* TSYNC: a thread could not be synchronised (r is its id) */
    return r < 0 ? r : allowed;
}
