/* kstorm's GNU Mach bootstrap task: the whole user space of a Mach test cell.
 *
 * GRUB loads it as the kernel's bootstrap module; its command line carries the cell:
 *
 *   payload <host-port> <device-port> cell=<id> [hb_ms=N]
 *           scenario=<name> [key=N ...] [scenario=<name> [key=N ...] ...]
 *
 * It runs the scenarios in order, speaking framed result lines on the console (hello, start,
 * heartbeats, result, done), then reboots the host, which ends QEMU under -no-reboot. */
#include "frame.h"
#include "scenario.h"

#define AGENT_VERSION "0.1.0"

port_t task_self;
static port_t host_priv, device_master;
static const char *cell = "unknown";
static u32 hb_ms = 250;

static u32 parse_u32(const char *s, int *ok) {
    u32 v = 0;
    *ok = *s != 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 429496728u) {
            *ok = 0;
            return 0;
        }
        v = v * 10 + (u32)(*s - '0');
    }
    return v;
}

/* Splits `word` at '=' in place; returns the value part or 0. */
static char *split_eq(char *word) {
    for (char *p = word; *p; p++)
        if (*p == '=') {
            *p = 0;
            return p + 1;
        }
    return 0;
}

u32 now_ms(void) {
    static u32 base_s, base_us, have_base;
    u32 s = 0, us = 0;
    if (host_get_time(host_priv, &s, &us) != KERN_SUCCESS)
        return 0;
    if (!have_base)
        base_s = s, base_us = us, have_base = 1;
    return (s - base_s) * 1000 + us / 1000 - base_us / 1000;
}

u32 param(struct run *r, const char *key, u32 fallback) {
    for (u32 i = 0; i < r->nparams; i++)
        if (str_eq(r->params[i].key, key)) {
            r->params[i].used = 1;
            return r->params[i].value;
        }
    return fallback;
}

/* On a hang the count reached is the last heartbeat's. Beats by the clock alone would make it
 * depend on how fast the host runs the guest (measured: task-hoard at 64M read 512-704 with
 * 100 ms beats on an idle host, 960-1024 with 2 ms beats), so a beat is also due every 1/64 of
 * the count (at least 16): the last count is within 1.6% of the true one, in a few hundred
 * frames even for millions. */
static void send_hb(struct run *r) {
    struct json j;
    json_begin(&j, "hb");
    json_str(&j, "scenario", r->name);
    json_u32(&j, "progress", r->progress);
    frame_send(cell, &j);
    u32 step = r->progress / 64;
    r->next_count_hb = r->progress + (step < 16 ? 16 : step);
}

static void beat_if_count_due(struct run *r) {
    if (r->progress >= r->next_count_hb)
        send_hb(r);
}

int run_heartbeat(struct run *r) {
    beat_if_count_due(r);
    u32 now = now_ms();
    if (now - r->last_hb_ms >= r->hb_ms) {
        r->last_hb_ms = now;
        send_hb(r);
    }
    if (now - r->start_ms >= r->seconds * 1000) {
        r->stop = "time";
        return 1;
    }
    return 0;
}

int run_tick(struct run *r) {
    if (r->progress >= r->limit) {
        r->stop = "limit";
        return 1;
    }
    beat_if_count_due(r);
    /* Reading the clock is an RPC: do it every 16th call (scenarios whose iterations are long
     * call run_heartbeat() inside them). */
    if (r->calls++ % 16)
        return 0;
    return run_heartbeat(r);
}

void run_error(struct run *r, const char *what, i32 code) {
    u32 n = str_len(what);
    if (n > 60)
        n = 60;
    memcpy(r->error, what, n);
    if (code) {
        memcpy(r->error + n, ": kern_return 0x", 16);
        n += 16;
        n += fmt_hex8(r->error + n, (u32)code);
    }
    r->error[n] = 0;
    r->stop = "error";
}

void run_measure(struct run *r, const char *name, u32 value, const char *unit) {
    if (r->nextra < sizeof r->extra / sizeof r->extra[0]) {
        r->extra[r->nextra].name = name;
        r->extra[r->nextra].value = value;
        r->extra[r->nextra].unit = unit;
        r->nextra++;
    }
}

static void run_one(struct run *r) {
    struct json j;
    json_begin(&j, "start");
    json_str(&j, "scenario", r->name);
    json_u32(&j, "index", r->index);
    frame_send(cell, &j);

    const struct scenario *s = scenarios;
    while (s->name && !str_eq(s->name, r->name))
        s++;
    r->limit = param(r, "limit", s->name ? s->default_limit : 0);
    r->seconds = param(r, "seconds", 600);
    r->hb_ms = hb_ms;
    /* Memory before and after: what the scenario's objects cost, and whether it came back. */
    u32 free_before = 0, wired_before = 0, free_after = 0, wired_after = 0;
    int have_stats = vm_statistics(task_self, &free_before, &wired_before) == KERN_SUCCESS;
    r->start_ms = r->last_hb_ms = now_ms();
    int pass = 0;
    if (!s->name) {
        run_error(r, "unknown scenario", 0);
    } else if (r->bad_param) {
        run_error(r, "parameter is not key=number", 0);
    } else {
        s->run(r);
        pass = r->stop && !str_eq(r->stop, "error");
        for (u32 i = 0; i < r->nparams && pass; i++)
            if (!r->params[i].used) {
                run_error(r, "unknown parameter", 0);
                pass = 0;
            }
    }
    u32 elapsed = now_ms() - r->start_ms;
    send_hb(r); /* the final count, in case the result frame is lost */
    if (have_stats && vm_statistics(task_self, &free_after, &wired_after) == KERN_SUCCESS) {
        run_measure(r, "free_pages_before", free_before, "pages");
        run_measure(r, "free_pages_after", free_after, "pages");
        run_measure(r, "wired_pages_before", wired_before, "pages");
        run_measure(r, "wired_pages_after", wired_after, "pages");
    }

    json_begin(&j, "result");
    json_str(&j, "scenario", r->name);
    json_u32(&j, "index", r->index);
    json_str(&j, "outcome", pass ? "pass" : "fail");
    if (r->error[0])
        json_str(&j, "error", r->error);
    json_open(&j, "measurements");
    json_measurement(&j, "count", r->progress, "count");
    json_measurement(&j, "elapsed_ms", elapsed, "ms");
    for (u32 i = 0; i < r->nextra; i++)
        json_measurement(&j, r->extra[i].name, r->extra[i].value, r->extra[i].unit);
    json_close(&j);
    json_open(&j, "facts");
    json_str(&j, "stop", r->stop ? r->stop : "error");
    for (u32 i = 0; i < r->nparams; i++)
        if (!r->params[i].used)
            json_str(&j, "unknown_parameter", r->params[i].key);
    if (r->bad_param)
        json_str(&j, "bad_parameter", r->bad_param);
    json_close(&j);
    frame_send(cell, &j);
}

static struct run runs[8];

void bootstrap_main(int argc, char **argv) {
    task_self = mach_task_self();
    mach_rpc_init();
    int ok = 0;
    if (argc > 2) {
        host_priv = parse_u32(argv[1], &ok);
        device_master = parse_u32(argv[2], &ok);
    }
    out_init(device_master);

    /* Parse the cell: global words, then scenario=<name> groups. */
    u32 nruns = 0;
    struct run *cur = 0;
    for (int i = 3; i < argc; i++) {
        char *word = argv[i];
        char *value = split_eq(word);
        if (value && str_eq(word, "scenario")) {
            cur = nruns < sizeof runs / sizeof runs[0] ? &runs[nruns] : 0;
            if (cur) {
                cur->cell = cell;
                cur->name = value;
                cur->index = nruns++;
            }
        } else if (value && !cur && str_eq(word, "cell")) {
            cell = value;
        } else if (value && !cur && str_eq(word, "hb_ms")) {
            hb_ms = parse_u32(value, &ok);
        } else if (cur && cur->nparams < MAX_PARAMS) {
            struct param *p = &cur->params[cur->nparams];
            p->key = word;
            p->value = value ? parse_u32(value, &ok) : 0;
            if (value && ok)
                cur->nparams++;
            else
                cur->bad_param = word;
        }
    }
    if (hb_ms == 0 || hb_ms > 1000)
        hb_ms = 250;

    char version[128];
    if (host_kernel_version(host_priv, version, sizeof version) != KERN_SUCCESS)
        memcpy(version, "GNU Mach (version unknown)", 27);
    struct json j;
    json_begin(&j, "hello");
    json_str(&j, "agent", "mach-bootstrap");
    json_str(&j, "agent_version", AGENT_VERSION);
    json_str(&j, "kernel", version);
    json_u32(&j, "ncpu", 1);
    frame_send(cell, &j);

    for (u32 i = 0; i < nruns; i++)
        run_one(&runs[i]);

    json_begin(&j, "done");
    frame_send(cell, &j);
    host_reboot(host_priv);
    for (;;)
        sleep_ms(1000);
}

/* The kernel starts the task with argc, the argv pointers, NULL and an empty envp on the
 * stack. */
__asm__(".text\n.globl _start\n_start:\n"
        "\tmovl (%esp),%eax\n"
        "\tleal 4(%esp),%edx\n"
        "\tandl $-16,%esp\n"
        "\tsubl $8,%esp\n"
        "\tpushl %edx\n"
        "\tpushl %eax\n"
        "\tcall bootstrap_main\n"
        "1:\tjmp 1b\n");
