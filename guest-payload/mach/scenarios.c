/* The stress scenarios: the experiments of seed 000 run directly against the kernel's task and
 * port calls. Each is bounded by its count limit and its time limit; on this kernel exhaustion
 * shows as a hang inside a call, which the harness sees as heartbeat silence. */
#include "scenario.h"

/* Create tasks (no threads, no inherited memory) and keep them. */
static void task_hoard(struct run *r) {
    while (!run_tick(r)) {
        port_t child;
        i32 kr = sc_task_create(task_self, 0, &child);
        if (kr != KERN_SUCCESS)
            return run_error(r, "task_create", kr);
        r->progress++;
    }
}

/* Create and terminate tasks. With cleanup=1 the task's port name is also released, which
 * lets the kernel free the task; with cleanup=0 the names pile up in our space. rpc=1 uses the
 * RPCs (messages to the kernel) instead of the trap shortcuts for the same calls. */
static void task_churn(struct run *r) {
    u32 cleanup = param(r, "cleanup", 1), use_rpc = param(r, "rpc", 0);
    while (!run_tick(r)) {
        port_t child;
        i32 kr = use_rpc ? task_create(task_self, 0, &child) : sc_task_create(task_self, 0, &child);
        if (kr != KERN_SUCCESS)
            return run_error(r, "task_create", kr);
        kr = use_rpc ? task_terminate(child) : sc_task_terminate(child);
        if (kr != KERN_SUCCESS)
            return run_error(r, "task_terminate", kr);
        if (cleanup) {
            kr = use_rpc ? mach_port_deallocate(task_self, child)
                         : sc_port_deallocate(task_self, child);
            if (kr != KERN_SUCCESS)
                return run_error(r, "mach_port_deallocate", kr);
        }
        r->progress++;
    }
}

/* Allocate receive rights and keep them. */
static void port_hoard(struct run *r) {
    while (!run_tick(r)) {
        port_t name;
        i32 kr = sc_port_allocate(task_self, MACH_PORT_RIGHT_RECEIVE, &name);
        if (kr != KERN_SUCCESS)
            return run_error(r, "mach_port_allocate", kr);
        r->progress++;
    }
}

static port_t names[65536];

/* Allocate `batch` receive rights, destroy them all, repeat. */
static void port_churn(struct run *r) {
    u32 batch = param(r, "batch", 1);
    if (batch < 1 || batch > sizeof names / sizeof names[0])
        return run_error(r, "parameter batch out of range", 0);
    while (!run_tick(r)) {
        /* A big batch is long: beat inside it, not only between batches. */
        for (u32 i = 0; i < batch; i++) {
            i32 kr = sc_port_allocate(task_self, MACH_PORT_RIGHT_RECEIVE, &names[i]);
            if (kr != KERN_SUCCESS)
                return run_error(r, "mach_port_allocate", kr);
            if (i % 64 == 63 && run_heartbeat(r))
                return;
        }
        for (u32 i = 0; i < batch; i++) {
            i32 kr = mach_port_destroy(task_self, names[i]);
            if (kr != KERN_SUCCESS)
                return run_error(r, "mach_port_destroy", kr);
            if (i % 64 == 63 && run_heartbeat(r))
                return;
        }
        r->progress += batch;
    }
}

/* The seed's guess for the port-closing crashes: no-senders notifications piling up. Each
 * iteration makes a receive right, asks for a no-senders notification on it (sent at once: the
 * port never had senders) to one notify port, and destroys the right. The notifications queue
 * on the notify port; with drain=N they are received every N iterations, with drain=0 never. */
static void no_senders_flood(struct run *r) {
    u32 drain = param(r, "drain", 0);
    port_t notify;
    i32 kr = sc_port_allocate(task_self, MACH_PORT_RIGHT_RECEIVE, &notify);
    if (kr != KERN_SUCCESS)
        return run_error(r, "mach_port_allocate", kr);
    u32 received = 0;
    while (!run_tick(r)) {
        port_t name;
        if ((kr = sc_port_allocate(task_self, MACH_PORT_RIGHT_RECEIVE, &name)) != KERN_SUCCESS)
            return run_error(r, "mach_port_allocate", kr);
        kr = mach_port_request_notification(task_self, name, MACH_NOTIFY_NO_SENDERS, 0, notify);
        if (kr != KERN_SUCCESS)
            return run_error(r, "mach_port_request_notification", kr);
        if ((kr = mach_port_destroy(task_self, name)) != KERN_SUCCESS)
            return run_error(r, "mach_port_destroy", kr);
        r->progress++;
        if (drain && r->progress % drain == 0)
            while (receive_one(notify, 0) == KERN_SUCCESS)
                received++;
    }
    run_measure(r, "received", received, "count");
}

/* The seed's own experiment: `tasks` tasks each holding send rights to `ports` ports of ours
 * (as clients holding connections to a server), killed back to back (kill_delay_ms=0) or one
 * by one with a pause. Every killed right fires a no-senders notification at its port; the
 * ports are destroyed once their task is gone. Progress counts port rights handed out. */
static void spawn_kill(struct run *r) {
    u32 ntasks = param(r, "tasks", 30), nports = param(r, "ports", 1000);
    u32 delay = param(r, "kill_delay_ms", 0);
    static port_t tasks[256];
    if (ntasks < 1 || ntasks > 256 || nports < 1 ||
        ntasks * nports > sizeof names / sizeof names[0])
        return run_error(r, "parameters tasks/ports out of range (tasks<=256, tasks*ports<=65536)",
                         0);
    u32 rounds = 0, killed = 0;
    i32 kr;
    while (!run_tick(r)) {
        for (u32 t = 0; t < ntasks; t++) {
            if ((kr = sc_task_create(task_self, 0, &tasks[t])) != KERN_SUCCESS)
                return run_error(r, "task_create", kr);
            for (u32 p = 0; p < nports; p++) {
                port_t *name = &names[t * nports + p];
                if ((kr = sc_port_allocate(task_self, MACH_PORT_RIGHT_RECEIVE, name)))
                    return run_error(r, "mach_port_allocate", kr);
                kr = mach_port_request_notification(task_self, *name, MACH_NOTIFY_NO_SENDERS, 1,
                                                    *name);
                if (kr != KERN_SUCCESS)
                    return run_error(r, "mach_port_request_notification", kr);
                if ((kr = sc_port_insert_right(tasks[t], *name, *name, MSG_TYPE_MAKE_SEND)))
                    return run_error(r, "mach_port_insert_right", kr);
                r->progress++;
                if (p % 64 == 63 && run_heartbeat(r))
                    goto out;
            }
        }
        for (u32 t = 0; t < ntasks; t++) {
            if ((kr = sc_task_terminate(tasks[t])) != KERN_SUCCESS)
                return run_error(r, "task_terminate", kr);
            sc_port_deallocate(task_self, tasks[t]);
            killed++;
            if (delay) {
                /* Slow: wait, then close this task's ports before the next kill. */
                sleep_ms(delay);
                for (u32 p = 0; p < nports; p++)
                    mach_port_destroy(task_self, names[t * nports + p]);
                if (run_heartbeat(r))
                    goto out;
            }
        }
        if (!delay)
            for (u32 i = 0; i < ntasks * nports; i++) {
                mach_port_destroy(task_self, names[i]);
                if (i % 64 == 63 && run_heartbeat(r))
                    goto out;
            }
        rounds++;
    }
out:
    run_measure(r, "rounds", rounds, "count");
    run_measure(r, "tasks_killed", killed, "count");
}

const struct scenario scenarios[] = {
    {"task-hoard", task_hoard, 100000},
    {"task-churn", task_churn, 100000},
    {"port-hoard", port_hoard, 10000000},
    {"port-churn", port_churn, 10000000},
    {"no-senders-flood", no_senders_flood, 10000000},
    {"spawn-kill", spawn_kill, 10000000},
    {0, 0, 0},
};
