/* What every scenario gets: its parameters, a clock, and the heartbeat. */
#ifndef KSTORM_SCENARIO_H
#define KSTORM_SCENARIO_H
#include "mach.h"

#define MAX_PARAMS 16

struct param {
    const char *key;
    u32 value;
    int used;
};

/* One scenario run. Scenarios read parameters, call run_tick() in every loop iteration and
 * fill in the measurements; bootstrap.c turns it into frames. */
struct run {
    const char *cell;
    const char *name;
    u32 index;
    struct param params[MAX_PARAMS];
    u32 nparams;
    const char *bad_param; /* a word that is not key=number */

    u32 limit;   /* count limit: the scenario stops when `progress` reaches it */
    u32 seconds; /* time limit */
    u32 hb_ms;   /* heartbeat period */

    u32 progress; /* the count reached so far; reported by heartbeats */
    u32 start_ms, last_hb_ms, calls;
    u32 next_count_hb; /* the count at which a heartbeat is due whatever the clock says */
    const char *stop;  /* "limit", "time" or "error" */
    char error[96];

    /* Extra measurements (name, value, unit). */
    struct {
        const char *name;
        u32 value;
        const char *unit;
    } extra[8];
    u32 nextra;
};

/* A parameter's value, or `fallback` when the cell did not give it. */
u32 param(struct run *r, const char *key, u32 fallback);
/* Milliseconds since the task started (host_get_time; 10 ms resolution on this kernel). */
u32 now_ms(void);
/* Called once per iteration, before it: sends a heartbeat when one is due and returns nonzero
 * when the scenario must stop (count or time limit reached). */
int run_tick(struct run *r);
/* For long iterations: sends a heartbeat when one is due and returns nonzero once the time
 * limit has passed (the scenario then stops at once, without cleaning up). */
int run_heartbeat(struct run *r);
/* Records why the scenario stopped early, with a kern_return_t. */
void run_error(struct run *r, const char *what, i32 code);
void run_measure(struct run *r, const char *name, u32 value, const char *unit);

/* The scenarios (scenarios.c). Each returns when it stops; the result is in `r`. */
struct scenario {
    const char *name;
    void (*run)(struct run *r);
    u32 default_limit;
};
extern const struct scenario scenarios[];

extern port_t task_self;
#endif
