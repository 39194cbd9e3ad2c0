/* pyvirtiofsd-supervisor: what stays outside the sandbox while the daemon serves.
 *
 * The Python process that bound the socket forks the daemon (pyvirtiofsd/sandbox.py) and
 * then execs this program in its own place, so the supervisor holds no interpreter: a
 * second Python process, only to forward signals and wait, cost every daemon about as
 * much memory as the daemon itself.
 *
 * It reads nothing from the guest.  It loads its own seccomp filter (the rules, built by
 * pyvirtiofsd.seccomp.supervisor_rules, come on the command line), forwards
 * SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the daemon, waits for it, removes the
 * socket file (which the daemon can no longer name) and ends the way the daemon did: its
 * exit code, or death by the same signal -- with its own core dump disabled, since the
 * daemon's is the one that matters.  Its log lines are the daemon's: the same format
 * (pyvirtiofsd/logs.py), on stderr or the daemon's syslog socket.
 *
 *   pyvirtiofsd-supervisor PID [--seccomp kill|log|trap|none] [--allow NAME[:ARG:VALUE]]...
 *       [--unlink SOCKET] [--log-level L] [--log-format console|json] [--syslog-fd FD]
 *       [--then open|rlimit|kill:PID]
 *
 * --then (tests only) makes a call after the filter is loaded, then prints "reached": how
 * the tests show what the filter refuses.
 *
 * Signals it forwards were blocked by the Python process before the fork; they stay
 * blocked and pending across exec, and are let in once the handlers are in place.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "seccomp_filter.h"

#define MAX_RULES 256

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define NFORWARDED ((int)(sizeof(forwarded) / sizeof(forwarded[0])))

static volatile pid_t daemon_pid;

/* -- logging: the lines pyvirtiofsd/logs.py prints ---------------------------------------- */

enum { DEBUG = 10, INFO = 20, WARNING = 30, ERROR = 40 };
static int log_threshold = INFO;
static int log_json;
static int syslog_fd = -1;

struct kv {
    const char *key;
    const char *str;   /* a string value, or NULL for the number */
    long num;
};

struct buf {
    char text[4096];
    size_t len;
};

static void add(struct buf *b, const char *s, size_t n)
{
    if (n > sizeof(b->text) - 1 - b->len)
        n = sizeof(b->text) - 1 - b->len;
    memcpy(b->text + b->len, s, n);
    b->len += n;
    b->text[b->len] = 0;
}

static void adds(struct buf *b, const char *s) { add(b, s, strlen(s)); }

static void addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* UTC from the epoch by arithmetic: gmtime_r may read the time-zone files the first time,
 * and the filter allows no open. */
static void timestamp(struct buf *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t days = ts.tv_sec / 86400, secs = ts.tv_sec % 86400;
    /* Civil date from a day count (proleptic Gregorian, eras of 400 years). */
    int64_t z = days + 719468, era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t day = doy - (153 * mp + 2) / 5 + 1, month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    addf(b, "%04" PRId64 "-%02" PRId64 "-%02" PRId64 "T%02d:%02d:%02d.%06ldZ", year, month, day,
         (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60), ts.tv_nsec / 1000);
}

/* Python's repr() of a str, for the values our messages carry (printable ASCII). */
static void add_repr(struct buf *b, const char *s)
{
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    add(b, &q, 1);
    for (; *s; s++) {
        if (*s == q || *s == '\\')
            add(b, "\\", 1);
        add(b, s, 1);
    }
    add(b, &q, 1);
}

static void add_json_string(struct buf *b, const char *s)
{
    add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            add(b, "\\", 1);
            add(b, s, 1);
        } else if (c < 0x20) {
            addf(b, "\\u%04x", c);
        } else {
            add(b, s, 1);
        }
    }
    add(b, "\"", 1);
}

static void add_value(struct buf *b, const struct kv *kv)
{
    if (kv->str == NULL)
        addf(b, "%ld", kv->num);
    else if (log_json)
        add_json_string(b, kv->str);
    else if (strpbrk(kv->str, " \t=\r\n\"'"))
        add_repr(b, kv->str);
    else
        adds(b, kv->str);
}

static const char *level_name(int level)
{
    return level >= ERROR ? "error" : level >= WARNING ? "warning" : level >= INFO ? "info" : "debug";
}

/* One event with `n` keys in the order the Python call names them (JSON keeps that order,
 * the console sorts them, as logs.py does). */
static void log_event(int level, const char *event, const struct kv *kvs, int n)
{
    if (level < log_threshold)
        return;
    struct buf b = {.len = 0};
    if (log_json) {
        adds(&b, "{");
        for (int i = 0; i < n; i++) {
            add_json_string(&b, kvs[i].key);
            adds(&b, ": ");
            add_value(&b, &kvs[i]);
            adds(&b, ", ");
        }
        adds(&b, "\"event\": ");
        add_json_string(&b, event);
        addf(&b, ", \"level\": \"%s\", \"timestamp\": \"", level_name(level));
        timestamp(&b);
        adds(&b, "\"}");
    } else {
        timestamp(&b);
        addf(&b, " [%-9s] %s", level_name(level), event);
        if (n > 0) {
            size_t pad = strlen(event) < 30 ? 30 - strlen(event) : 0;
            for (size_t i = 0; i <= pad; i++)
                add(&b, " ", 1);
            int done[16] = {0};
            for (int k = 0; k < n && k < 16; k++) {   /* keys in sorted order */
                int next = -1;
                for (int i = 0; i < n && i < 16; i++)
                    if (!done[i] && (next < 0 || strcmp(kvs[i].key, kvs[next].key) < 0))
                        next = i;
                done[next] = 1;
                addf(&b, "%s%s=", k ? " " : "", kvs[next].key);
                add_value(&b, &kvs[next]);
            }
        }
    }
    if (syslog_fd >= 0) {
        /* As virtiofsd_options.SyslogStream: facility daemon, severity from the level. */
        int severity = level >= ERROR ? 3 : level >= WARNING ? 4 : level >= INFO ? 6 : 7;
        struct buf m = {.len = 0};
        addf(&m, "<%d>pyvirtiofsd[%d]: ", 3 * 8 + severity, (int)getpid());
        add(&m, b.text, b.len);
        ssize_t ignored = send(syslog_fd, m.text, m.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)ignored;
        return;
    }
    add(&b, "\n", 1);
    for (size_t off = 0; off < b.len;) {
        ssize_t w = write(STDERR_FILENO, b.text + off, b.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}

static int parse_level(const char *s)
{
    if (!strcmp(s, "debug")) return DEBUG;
    if (!strcmp(s, "info")) return INFO;
    if (!strcmp(s, "warn") || !strcmp(s, "warning")) return WARNING;
    if (!strcmp(s, "error")) return ERROR;
    return ERROR + 20;   /* off */
}

/* -- the supervisor ------------------------------------------------------------------------ */

static void forward(int sig)
{
    int saved = errno;
    kill(daemon_pid, sig);
    errno = saved;
}

static void set_forwarded(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < NFORWARDED; i++)
        sigaction(forwarded[i], &sa, NULL);
}

static void mask_forwarded(int how)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < NFORWARDED; i++)
        sigaddset(&set, forwarded[i]);
    sigprocmask(how, &set, NULL);
}

static void signal_name(int sig, char *out, size_t size)
{
    const char *abbrev = sigabbrev_np(sig);
    if (sig == SIGABRT)
        abbrev = "ABRT";
    else if (sig == SIGIO)
        abbrev = "IO";
    if (abbrev != NULL)
        snprintf(out, size, "SIG%s", abbrev);
    else
        snprintf(out, size, "%d", sig);
}

static const char *socket_path;

/* Remove the socket file; a failure other than "already gone" is logged as Python's
 * OSError prints itself. */
static void cleanup(void)
{
    if (socket_path == NULL || unlink(socket_path) == 0 || errno == ENOENT)
        return;
    int e = errno;
    char text[1200];
    snprintf(text, sizeof(text), "[Errno %d] %s: '%s'", e, strerror(e), socket_path);
    struct kv kv = {"error", text, 0};
    log_event(ERROR, "cleanup after the daemon failed", &kv, 1);
}

static void usage_error(const char *what)
{
    fprintf(stderr, "pyvirtiofsd-supervisor: %s (it is started by pyvirtiofsd, not by hand)\n",
            what);
    exit(2);
}

/* --then: a call the filter should refuse, made after it is loaded (tests only). */
static void then(const char *what)
{
    if (!strcmp(what, "open")) {
        int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            close(fd);
    } else if (!strncmp(what, "kill:", 5)) {
        kill((pid_t)atol(what + 5), 0);
    } else if (!strcmp(what, "rlimit")) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
            setrlimit(RLIMIT_NOFILE, &rl);
    } else {
        usage_error("unknown --then");
    }
    ssize_t ignored = write(STDOUT_FILENO, "reached\n", 8);
    (void)ignored;
}

int main(int argc, char **argv)
{
    static struct pvfs_seccomp_rule rules[MAX_RULES];
    int nrules = 0;
    const char *action = "kill";
    const char *then_what = NULL;

    if (argc < 2 || atol(argv[1]) <= 0)
        usage_error("no daemon pid");
    daemon_pid = (pid_t)atol(argv[1]);
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL)
            usage_error("an option without its value");
        i++;
        if (!strcmp(opt, "--seccomp")) {
            action = val;
        } else if (!strcmp(opt, "--allow")) {
            if (nrules == MAX_RULES)
                usage_error("too many --allow");
            char *copy = strdup(val), *colon = copy ? strchr(copy, ':') : NULL;
            if (copy == NULL)
                usage_error("out of memory");
            rules[nrules].arg = -1;
            rules[nrules].value = 0;
            if (colon != NULL) {
                *colon = 0;
                char *second = strchr(colon + 1, ':');
                if (second == NULL)
                    usage_error("--allow NAME:ARG:VALUE");
                rules[nrules].arg = atoi(colon + 1);
                rules[nrules].value = strtoull(second + 1, NULL, 0);
            }
            rules[nrules++].name = copy;
        } else if (!strcmp(opt, "--unlink")) {
            socket_path = val;
        } else if (!strcmp(opt, "--log-level")) {
            log_threshold = parse_level(val);
        } else if (!strcmp(opt, "--log-format")) {
            log_json = !strcmp(val, "json");
        } else if (!strcmp(opt, "--syslog-fd")) {
            syslog_fd = atoi(val);
        } else if (!strcmp(opt, "--then")) {
            then_what = val;
        } else {
            usage_error("unknown option");
        }
    }

    signal(SIGPIPE, SIG_IGN);   /* a closed stderr must not kill us before the daemon ends */
    set_forwarded(forward);

    if (strcmp(action, "none") != 0) {
        int code = !strcmp(action, "kill") ? PVFS_SECCOMP_KILL
                 : !strcmp(action, "log") ? PVFS_SECCOMP_LOG
                 : !strcmp(action, "trap") ? PVFS_SECCOMP_TRAP : -1;
        int r = code < 0 ? -EINVAL : pvfs_seccomp_install(code, rules, nrules);
        if (r < 0) {
            /* The daemon would fail the same way: stop it before reporting. */
            kill(daemon_pid, SIGKILL);
            while (waitpid(daemon_pid, NULL, 0) < 0 && errno == EINTR)
                ;
            cleanup();
            fprintf(stderr, "pyvirtiofsd: error: cannot load the supervisor's seccomp "
                    "filter: %s\n", strerror(-r));
            return 1;
        }
        struct kv kvs[] = {{"process", "supervisor", 0}, {"action", action, 0},
                           {"rules", NULL, r}};
        log_event(DEBUG, "seccomp filter loaded", kvs, 3);
    }
    if (then_what != NULL)
        then(then_what);

    mask_forwarded(SIG_UNBLOCK);
    int status = 0;
    for (;;) {
        pid_t r = waitpid(daemon_pid, &status, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            char text[128];
            snprintf(text, sizeof(text), "%s", strerror(errno));
            struct kv kv = {"error", text, 0};
            log_event(ERROR, "cannot wait for the sandboxed daemon", &kv, 1);
            cleanup();
            return 1;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status))
            break;
    }
    set_forwarded(SIG_IGN);
    cleanup();
    if (WIFEXITED(status))
        return WEXITSTATUS(status);

    int sig = WTERMSIG(status);
    char name[32];
    signal_name(sig, name, sizeof(name));
    struct kv kv = {"signal", name, 0};
    log_event(ERROR, "the sandboxed daemon was killed", &kv, 1);
    if (sig == SIGSYS)
        log_event(ERROR, "it made a system call outside the seccomp allow-list: --seccomp trap "
                  "names it; scripts/gen-seccomp.py regenerates the list (see SECURITY.md)",
                  NULL, 0);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);   /* its core, if any, was the daemon's */
    if (sig != SIGKILL && sig != SIGSTOP) {
        signal(sig, SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
    }
    kill(getpid(), sig);
    return 128 + sig;   /* a signal whose default action is not to terminate */
}
