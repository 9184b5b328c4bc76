/* The GNU Mach kernel interface the bootstrap task uses: traps and hand-built RPC messages.
 *
 * The task is a 32-bit i386 ELF running on Debian's x86-64 GNU Mach built with USER32. What that
 * build expects from a 32-bit caller was found by experiment (see README.md):
 * - the message header is 24 bytes on the user side and 32 in the kernel; the kernel copies
 *   `send_size` bytes into its own layout, so `send_size` is the user length + 8, while the
 *   `msgh_size` of a received message is the user length;
 * - port rights and port names in a message body take 64-bit slots (msgt_size 64);
 * - strings of MIG's `(MACH_MSG_TYPE_STRING, N*8)` types use the long type descriptor.
 */
#ifndef KSTORM_MACH_H
#define KSTORM_MACH_H

typedef unsigned int u32;
typedef int i32;
typedef unsigned char u8;
typedef u32 port_t;

#define KERN_SUCCESS 0
#define MACH_RCV_TIMED_OUT 0x10004003
#define MACH_PORT_RIGHT_SEND 0
#define MACH_PORT_RIGHT_RECEIVE 1
#define MSG_TYPE_MAKE_SEND 20
#define MSG_TYPE_MAKE_SEND_ONCE 21
#define MACH_NOTIFY_NO_SENDERS 0106

/* Traps (system calls); numbers from gnumach's mach/syscall_sw.h. */
i32 mach_msg_trap(void *msg, u32 option, u32 send_size, u32 rcv_size, port_t rcv_name,
                  u32 timeout, port_t notify);
port_t mach_reply_port(void);
port_t mach_task_self(void);
i32 mach_print(const char *text);
i32 sc_task_create(port_t parent, u32 inherit_memory, port_t *child);
i32 sc_task_terminate(port_t task);
i32 sc_port_allocate(port_t task, u32 right, port_t *name);
i32 sc_port_deallocate(port_t task, port_t name);
i32 sc_port_insert_right(port_t task, port_t name, port_t right, u32 right_type);

/* RPCs, each a hand-built MIG message to a kernel port. Return the kern_return_t. */
void mach_rpc_init(void);
i32 device_open(port_t device_master, const char *name, port_t *device);
i32 device_write_inband(port_t device, const char *data, u32 len);
i32 host_get_time(port_t host, u32 *seconds, u32 *microseconds);
i32 host_kernel_version(port_t host, char *out, u32 out_size);
i32 host_reboot(port_t host_priv);
/* Free and wired page counts of the host (the kernel's vm_statistics). */
i32 vm_statistics(port_t task, u32 *free_pages, u32 *wired_pages);
i32 mach_port_destroy(port_t task, port_t name);
i32 mach_port_deallocate(port_t task, port_t name);
i32 task_create(port_t parent, u32 inherit_memory, port_t *child);
i32 task_terminate(port_t task);
i32 mach_port_request_notification(port_t task, port_t name, u32 id, u32 sync, port_t notify);
/* Receives one message on `port`, waiting at most `timeout_ms` (0: do not wait). */
i32 receive_one(port_t port, u32 timeout_ms);
/* Sleeps by waiting for a message that never comes. */
void sleep_ms(u32 ms);

/* Freestanding helpers (no libc). */
void *memset(void *dst, int c, unsigned n);
void *memcpy(void *dst, const void *src, unsigned n);
u32 str_len(const char *s);
int str_eq(const char *a, const char *b);

#endif
