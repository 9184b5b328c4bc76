/* Traps and RPC messages for the GNU Mach bootstrap task. See mach.h for the message layout
 * rules of this USER32 kernel. */
#include "mach.h"

/* A trap is `lcall $7,$0` with the negated trap number in %eax; arguments stay on the stack in
 * cdecl order, where the kernel reads them. */
#define TRAP(name, number)                                                                    \
    __asm__(".text\n.globl " #name "\n" #name ":\n\tmovl $" #number                          \
            ",%eax\n\tlcall $7,$0\n\tret\n");
TRAP(mach_msg_trap, -25)
TRAP(mach_reply_port, -26)
TRAP(mach_task_self, -28)
TRAP(mach_print, -30)
TRAP(sc_task_create, -68)
TRAP(sc_task_terminate, -69)
TRAP(sc_port_allocate, -72)
TRAP(sc_port_deallocate, -73)
TRAP(sc_port_insert_right, -74)

#define MACH_SEND_MSG 1
#define MACH_RCV_MSG 2
#define MACH_RCV_TIMEOUT 0x100
#define MSGH_BITS_REQUEST 0x1513 /* remote COPY_SEND (19), local MAKE_SEND_ONCE (21) */
#define MSGH_BITS_COMPLEX 0x80000000u
#define KERNEL_EXTRA 8 /* kernel header (32 bytes) minus user header (24 bytes) */

/* mach_msg_type_t: name, size in bits, number, inline. */
#define TYPE(name, bits, number) ((name) | ((bits) << 8) | ((number) << 16) | (1u << 28))
#define TYPE_INT32 TYPE(2, 32, 1)
#define TYPE_LONGFORM ((1u << 28) | (1u << 29))
#define TYPE_PORT_NAME TYPE(15, 32, 1) /* names are 32-bit even in the kernel */
#define TYPE_PORT(kind) TYPE(kind, 64, 1)

/* Word offsets into a message buffer (user layout). */
enum { H_BITS, H_SIZE, H_REMOTE, H_LOCAL, H_SEQNO, H_ID, BODY };
/* Replies start with RetCodeType, RetCode. */
#define REPLY_CODE (BODY + 1)

static u32 msg[256];
static port_t reply_port;

void mach_rpc_init(void) { reply_port = mach_reply_port(); }

/* Sends the request in `msg` (user length `len` bytes) to `dest` and waits for the reply in
 * `msg`. Returns the transport error, else the reply's RetCode. */
static i32 rpc(port_t dest, u32 id, u32 len, u32 complex) {
    msg[H_BITS] = MSGH_BITS_REQUEST | (complex ? MSGH_BITS_COMPLEX : 0);
    msg[H_SIZE] = len;
    msg[H_REMOTE] = dest;
    msg[H_LOCAL] = reply_port;
    msg[H_SEQNO] = 0;
    msg[H_ID] = id;
    i32 r = mach_msg_trap(msg, MACH_SEND_MSG | MACH_RCV_MSG, len + KERNEL_EXTRA, sizeof msg,
                          reply_port, 0, 0);
    if (r != KERN_SUCCESS)
        return r;
    if (msg[H_ID] != id + 100)
        return -301; /* MIG_REPLY_MISMATCH */
    return (i32)msg[REPLY_CODE];
}

i32 device_open(port_t device_master, const char *name, port_t *device) {
    memset(msg, 0, sizeof msg);
    msg[BODY] = TYPE_INT32;
    msg[BODY + 1] = 3; /* D_READ | D_WRITE */
    /* dev_name_t = (MACH_MSG_TYPE_STRING_C, 8*128): long form, one element of 1024 bits. */
    msg[BODY + 2] = TYPE_LONGFORM;
    msg[BODY + 3] = 12 | (1024u << 16);
    msg[BODY + 4] = 1;
    u32 n = str_len(name);
    if (n > 127)
        n = 127;
    memcpy(&msg[BODY + 5], name, n);
    i32 r = rpc(device_master, 2800, 4 * (BODY + 5) + 128, 0);
    if (r == KERN_SUCCESS)
        *device = msg[REPLY_CODE + 2]; /* after the port's type descriptor */
    return r;
}

i32 device_write_inband(port_t device, const char *data, u32 len) {
    if (len > 128)
        len = 128;
    memset(msg, 0, 4 * (BODY + 6) + 128);
    msg[BODY] = TYPE_INT32; /* mode */
    msg[BODY + 1] = 0;
    msg[BODY + 2] = TYPE_INT32; /* recnum */
    msg[BODY + 3] = 0;
    msg[BODY + 4] = TYPE(8, 8, len); /* array[*:128] of char */
    memcpy(&msg[BODY + 5], data, len);
    return rpc(device, 2803, 4 * (BODY + 5) + ((len + 3) & ~3u), 0);
}

i32 host_get_time(port_t host, u32 *seconds, u32 *microseconds) {
    i32 r = rpc(host, 2634, 4 * BODY, 0);
    if (r == KERN_SUCCESS) {
        /* RetCodeType, RetCode, time type, seconds, microseconds */
        *seconds = msg[REPLY_CODE + 2];
        *microseconds = msg[REPLY_CODE + 3];
    }
    return r;
}

i32 host_kernel_version(port_t host, char *out, u32 out_size) {
    i32 r = rpc(host, 2619, 4 * BODY, 0);
    if (r != KERN_SUCCESS)
        return r;
    /* The string follows a long type descriptor (3 words). */
    const char *s = (const char *)&msg[REPLY_CODE + 4];
    u32 i = 0;
    while (i + 1 < out_size && i < 512 && s[i] && s[i] != '\n')
        out[i] = s[i], i++;
    out[i] = 0;
    return r;
}

i32 host_reboot(port_t host_priv) {
    memset(msg, 0, sizeof msg);
    msg[BODY] = TYPE_INT32;
    msg[BODY + 1] = 0; /* RB_AUTOBOOT */
    return rpc(host_priv, 2635, 4 * (BODY + 2), 0);
}

i32 vm_statistics(port_t task, u32 *free_pages, u32 *wired_pages) {
    i32 r = rpc(task, 2030, 4 * BODY, 0);
    if (r == KERN_SUCCESS) {
        /* RetCodeType, RetCode, struct[13] type, pagesize, free, active, inactive, wired, ... */
        *free_pages = msg[REPLY_CODE + 3];
        *wired_pages = msg[REPLY_CODE + 6];
    }
    return r;
}

i32 mach_port_destroy(port_t task, port_t name) {
    msg[BODY] = TYPE_PORT_NAME;
    msg[BODY + 1] = name;
    return rpc(task, 3205, 4 * (BODY + 2), 0);
}

i32 mach_port_deallocate(port_t task, port_t name) {
    msg[BODY] = TYPE_PORT_NAME;
    msg[BODY + 1] = name;
    return rpc(task, 3206, 4 * (BODY + 2), 0);
}

i32 task_create(port_t parent, u32 inherit_memory, port_t *child) {
    msg[BODY] = TYPE(0, 32, 1); /* boolean_t */
    msg[BODY + 1] = inherit_memory;
    i32 r = rpc(parent, 2007, 4 * (BODY + 2), 0);
    if (r == KERN_SUCCESS)
        *child = msg[REPLY_CODE + 2]; /* after the port's type descriptor */
    return r;
}

i32 task_terminate(port_t task) { return rpc(task, 2008, 4 * BODY, 0); }

i32 mach_port_request_notification(port_t task, port_t name, u32 id, u32 sync, port_t notify) {
    msg[BODY] = TYPE_PORT_NAME;
    msg[BODY + 1] = name;
    msg[BODY + 2] = TYPE_INT32;
    msg[BODY + 3] = id;
    msg[BODY + 4] = TYPE_INT32;
    msg[BODY + 5] = sync;
    msg[BODY + 6] = TYPE_PORT(MSG_TYPE_MAKE_SEND_ONCE); /* port rights take 64-bit slots */
    msg[BODY + 7] = notify;
    msg[BODY + 8] = 0;
    return rpc(task, 3214, 4 * (BODY + 9), 1);
}

static u32 rcv_buf[64];

i32 receive_one(port_t port, u32 timeout_ms) {
    return mach_msg_trap(rcv_buf, MACH_RCV_MSG | MACH_RCV_TIMEOUT, 0, sizeof rcv_buf, port,
                         timeout_ms, 0);
}

void sleep_ms(u32 ms) {
    static port_t never;
    if (!never)
        never = mach_reply_port();
    receive_one(never, ms);
}

void *memset(void *dst, int c, unsigned n) {
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memcpy(void *dst, const void *src, unsigned n) {
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

u32 str_len(const char *s) {
    u32 n = 0;
    while (s[n])
        n++;
    return n;
}

int str_eq(const char *a, const char *b) {
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}
