/* Framed result lines on the console, the same protocol as the Linux payload
 * (guest-payload/src/frame.rs): `KSTORM1 <cell> <seq> <crc32hex8> <json>\n`, where the CRC-32
 * (zlib/IEEE) covers `"<cell> <seq> <json>"`. */
#ifndef KSTORM_FRAME_H
#define KSTORM_FRAME_H
#include "mach.h"

/* Where lines go: the console device, or the mach_print trap when it could not be opened. */
void out_init(port_t device_master);
void out_write(const char *text, u32 len);

u32 crc32(u32 crc, const char *data, u32 len);

/* A JSON object built in a fixed buffer. */
struct json {
    char buf[1024];
    u32 len;
    int first;
};
void json_begin(struct json *j, const char *type);
void json_str(struct json *j, const char *key, const char *value);
void json_u32(struct json *j, const char *key, u32 value);
/* Opens and closes a nested object ("measurements": {...}). */
void json_open(struct json *j, const char *key);
void json_close(struct json *j);
/* `"name":{"value":N,"unit":"unit"}` */
void json_measurement(struct json *j, const char *name, u32 value, const char *unit);

/* Ends `j` and writes it as one frame for this cell. */
void frame_send(const char *cell, struct json *j);

/* Decimal and hex formatting into `out` (at least 11 bytes); returns the length. */
u32 fmt_u32(char *out, u32 v);
u32 fmt_hex8(char *out, u32 v);
#endif
