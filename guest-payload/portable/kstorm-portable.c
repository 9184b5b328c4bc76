/*
 * kstorm-portable: seed 000's and seed 001's experiments in plain POSIX C, for guests the
 * static Linux payload cannot run on (FreeBSD, GNU/Hurd). The guest compiles it with its own
 * compiler; the harness runs one scenario per call:
 *
 *   kstorm-portable SCENARIO key=value...
 *
 * and reads lines back (the harness turns them into frames):
 *
 *   hb N               progress, at least once a second
 *   m NAME VALUE UNIT  a measurement
 *   f NAME VALUE       a fact
 *   end pass|fail [WHY]
 *   end infra WHY      the call itself was wrong (unknown scenario or key): the harness's bug
 *
 * Every loop is bounded by a count and by deadline_s.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 100000

static int argc_g;
static char **argv_g;
static double started;

static double now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec / 1e6;
}

/* The value of key=... among the arguments, or `dflt`. */
static const char *param(const char *key, const char *dflt) {
    size_t n = strlen(key);
    for (int i = 2; i < argc_g; i++)
        if (strncmp(argv_g[i], key, n) == 0 && argv_g[i][n] == '=')
            return argv_g[i] + n + 1;
    return dflt;
}

static long num(const char *key, long dflt) {
    const char *v = param(key, NULL);
    return v ? strtol(v, NULL, 10) : dflt;
}

static double last_hb;
static void hb(unsigned long progress) {
    double t = now();
    if (t - last_hb >= 0.25) {
        printf("hb %lu\n", progress);
        fflush(stdout);
        last_hb = t;
    }
}

static int past_deadline(void) {
    const char *d = param("deadline_s", "30");
    return now() - started > strtod(d, NULL);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Opens one descriptor of `kind` (devnull, pipe, socket) into out[0..]; returns how many. */
static int open_one(const char *kind, int *out) {
    if (strcmp(kind, "pipe") == 0)
        return pipe(out) == 0 ? 2 : -1;
    if (strcmp(kind, "socket") == 0)
        return socketpair(AF_UNIX, SOCK_STREAM, 0, out) == 0 ? 2 : -1;
    out[0] = open("/dev/null", O_RDONLY);
    return out[0] >= 0 ? 1 : -1;
}

/* A child's life: open `fds` descriptors, report on `report`, then wait to be killed. */
static void holder(int report, long fds, const char *kind) {
    long opened = 0;
    int err = 0;
    int scratch[2];
    while (opened < fds) {
        int n = open_one(kind, scratch);
        if (n < 0) {
            err = errno;
            break;
        }
        opened += n;
    }
    char c = err ? 'e' : 'k';
    (void)write(report, &c, 1);
    for (;;)
        pause();
}

/* Starts up to `want` holders; returns how many started, the errno that stopped it in *why. */
static long spawn(pid_t *pids, long want, long fds, const char *kind, int *why, unsigned long *progress) {
    long n = 0;
    *why = 0;
    while (n < want && !past_deadline()) {
        int p[2];
        if (pipe(p) != 0) {
            *why = errno;
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            *why = errno;
            close(p[0]);
            close(p[1]);
            break;
        }
        if (pid == 0) {
            close(p[0]);
            holder(p[1], fds, kind);
        }
        close(p[1]);
        char c = 0;
        (void)read(p[0], &c, 1);
        close(p[0]);
        pids[n++] = pid;
        if (c == 'e' && !*why)
            *why = EMFILE;
        hb(++*progress);
    }
    return n;
}

static void reap(pid_t *pids, long n, long interval_ms, unsigned long *progress) {
    for (long i = 0; i < n; i++) {
        kill(pids[i], SIGKILL);
        if (interval_ms > 0)
            sleep_ms(interval_ms);
        hb(++*progress);
    }
    for (long i = 0; i < n; i++)
        while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR) {
        }
}

static int fork_hold(void) {
    long want = num("children", 64), fds = num("fds", 16);
    const char *kind = param("fd_kind", "devnull");
    pid_t *pids = calloc(want > 0 ? want : 1, sizeof *pids);
    unsigned long progress = 0;
    int why;
    double t0 = now();
    long n = spawn(pids, want < MAX_CHILDREN ? want : MAX_CHILDREN, fds, kind, &why, &progress);
    printf("m children %ld count\nm spawn_s %.3f s\n", n, now() - t0);
    if (why)
        printf("f stop_errno %s\n", strerror(why));
    sleep_ms(num("hold_ms", 500));
    t0 = now();
    reap(pids, n, 0, &progress);
    printf("m reap_s %.3f s\n", now() - t0);
    free(pids);
    return 0;
}

static int spawn_kill(void) {
    long cycles = num("cycles", 10), batch = num("batch", 8), fds = num("fds", 64);
    long interval = num("kill_interval_ms", 0);
    const char *kind = param("fd_kind", "devnull");
    pid_t *pids = calloc(batch > 0 ? batch : 1, sizeof *pids);
    unsigned long progress = 0, total = 0;
    long c;
    int why = 0;
    for (c = 0; c < cycles && !past_deadline(); c++) {
        long n = spawn(pids, batch, fds, kind, &why, &progress);
        total += n;
        reap(pids, n, interval, &progress);
        if (why)
            break;
    }
    printf("m cycles %ld count\nm spawned %lu count\n", c, total);
    if (why)
        printf("f stop_errno %s\n", strerror(why));
    free(pids);
    return 0;
}

/* One process's churn: open `batch` descriptors, close them all, until the time or ops run out. */
static unsigned long churn(long batch, const char *kind, double until, unsigned long max_ops) {
    unsigned long ops = 0;
    int *fds = calloc(2 * (batch > 0 ? batch : 1), sizeof *fds);
    while (fds && now() < until && ops < max_ops) {
        long n = 0;
        for (long i = 0; i < batch; i++) {
            int got = open_one(kind, fds + n);
            if (got < 0)
                break;
            n += got;
            ops++;
        }
        for (long i = 0; i < n; i++)
            close(fds[i]);
    }
    free(fds);
    return ops;
}

static int fd_churn(void) {
    long procs = num("procs", 2), batch = num("batch", 64);
    double duration = strtod(param("duration_s", "3"), NULL);
    unsigned long max_ops = strtoul(param("max_ops", "10000000"), NULL, 10);
    const char *kind = param("fd_kind", "devnull");
    double until = now() + duration;
    int p[2];
    if (pipe(p) != 0)
        return 1;
    long started_procs = 0;
    for (long i = 0; i < procs; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            unsigned long ops = churn(batch, kind, until, max_ops);
            (void)write(p[1], &ops, sizeof ops);
            _exit(0);
        }
        if (pid > 0)
            started_procs++;
    }
    close(p[1]);
    unsigned long progress = 0;
    while (now() < until + 1 && !past_deadline()) {
        hb(++progress);
        sleep_ms(250);
    }
    unsigned long total = 0, ops;
    while (read(p[0], &ops, sizeof ops) == sizeof ops)
        total += ops;
    while (wait(NULL) > 0) {
    }
    printf("m procs %ld count\nm ops %lu count\nm ops_per_s %.1f 1/s\n", started_procs, total,
           total / (duration > 0 ? duration : 1));
    return 0;
}

/* The keys each scenario reads (the harness's registry holds the same list, checked by a
 * test that reads this file); any other key is refused, so nothing is silently ignored. */
static const char *const common_keys[] = {"deadline_s", NULL};
static const char *const smoke_keys[] = {NULL};
static const char *const fork_hold_keys[] = {"children", "fds", "fd_kind", "hold_ms", NULL};
static const char *const spawn_kill_keys[] = {"cycles", "batch", "fds", "fd_kind",
                                              "kill_interval_ms", NULL};
static const char *const fd_churn_keys[] = {"procs", "batch", "duration_s", "max_ops",
                                            "fd_kind", NULL};

struct scenario {
    const char *name;
    int (*run)(void);
    const char *const *keys;
};

static int smoke(void) { return 0; }

static const struct scenario scenarios[] = {
    {"smoke", smoke, smoke_keys},
    {"fork-hold", fork_hold, fork_hold_keys},
    {"spawn-kill", spawn_kill, spawn_kill_keys},
    {"fd-churn", fd_churn, fd_churn_keys},
};

static int listed(const char *const *keys, const char *arg) {
    for (; *keys; keys++) {
        size_t n = strlen(*keys);
        if (strncmp(arg, *keys, n) == 0 && arg[n] == '=')
            return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    argc_g = argc;
    argv_g = argv;
    started = now();
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        printf("end infra usage: kstorm-portable SCENARIO key=value...\n");
        return 2;
    }
    const struct scenario *sc = NULL;
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        if (strcmp(argv[1], scenarios[i].name) == 0)
            sc = &scenarios[i];
    if (!sc) {
        printf("end infra scenario %s is not available on the portable-c route\n", argv[1]);
        return 2;
    }
    for (int i = 2; i < argc; i++)
        if (!listed(sc->keys, argv[i]) && !listed(common_keys, argv[i])) {
            printf("end infra scenario %s reads no parameter %s\n", argv[1], argv[i]);
            return 2;
        }
    int rc = sc->run();
    printf("m wall_s %.3f s\n", now() - started);
    printf(rc == 0 ? "end pass\n" : "end fail scenario error\n");
    return rc;
}
