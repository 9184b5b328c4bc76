/* Framed result lines: JSON building, CRC-32 and console output. */
#include "frame.h"

static port_t console;

void out_init(port_t device_master) {
    if (device_open(device_master, "console", &console) != KERN_SUCCESS)
        console = 0;
}

void out_write(const char *text, u32 len) {
    /* device_write_inband carries at most 128 bytes per message. */
    while (len > 0) {
        u32 n = len > 128 ? 128 : len;
        if (!console || device_write_inband(console, text, n) != KERN_SUCCESS) {
            char chunk[129];
            memcpy(chunk, text, n);
            chunk[n] = 0;
            mach_print(chunk);
        }
        text += n;
        len -= n;
    }
}

u32 crc32(u32 crc, const char *data, u32 len) {
    crc = ~crc;
    while (len--) {
        crc ^= (u8)*data++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

u32 fmt_u32(char *out, u32 v) {
    char tmp[10];
    u32 n = 0;
    do
        tmp[n++] = (char)('0' + v % 10), v /= 10;
    while (v);
    for (u32 i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = 0;
    return n;
}

u32 fmt_hex8(char *out, u32 v) {
    for (int i = 0; i < 8; i++)
        out[i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 15];
    out[8] = 0;
    return 8;
}

static void put(struct json *j, const char *s, u32 n) {
    if (j->len + n >= sizeof j->buf - 2) /* keep room for the closing brace */
        n = sizeof j->buf - 2 - j->len;
    memcpy(j->buf + j->len, s, n);
    j->len += n;
}


/* A JSON string: quotes, backslashes and control characters escaped. */
static void put_quoted(struct json *j, const char *s) {
    put(j, "\"", 1);
    for (; *s; s++) {
        u8 c = (u8)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(j, e, 2);
        } else if (c < 0x20) {
            char e[7] = {'\\', 'u', '0', '0', "0123456789abcdef"[c >> 4],
                         "0123456789abcdef"[c & 15], 0};
            put(j, e, 6);
        } else {
            put(j, s, 1);
        }
    }
    put(j, "\"", 1);
}

static void key(struct json *j, const char *k) {
    if (!j->first)
        put(j, ",", 1);
    j->first = 0;
    put_quoted(j, k);
    put(j, ":", 1);
}

void json_begin(struct json *j, const char *type) {
    j->len = 0;
    j->first = 1;
    put(j, "{", 1);
    json_str(j, "t", type);
}

void json_str(struct json *j, const char *k, const char *value) {
    key(j, k);
    put_quoted(j, value);
}

void json_u32(struct json *j, const char *k, u32 value) {
    char num[11];
    key(j, k);
    put(j, num, fmt_u32(num, value));
}

void json_open(struct json *j, const char *k) {
    key(j, k);
    put(j, "{", 1);
    j->first = 1;
}

void json_close(struct json *j) {
    put(j, "}", 1);
    j->first = 0;
}

void json_measurement(struct json *j, const char *name, u32 value, const char *unit) {
    json_open(j, name);
    json_u32(j, "value", value);
    json_str(j, "unit", unit);
    json_close(j);
}

void frame_send(const char *cell, struct json *j) {
    static u32 seq;
    static char line[1200];
    json_close(j);
    char num[11], crc_text[9];
    u32 seq_len = fmt_u32(num, seq++);
    /* CRC over "<cell> <seq> <json>" */
    u32 crc = crc32(0, cell, str_len(cell));
    crc = crc32(crc, " ", 1);
    crc = crc32(crc, num, seq_len);
    crc = crc32(crc, " ", 1);
    crc = crc32(crc, j->buf, j->len);
    fmt_hex8(crc_text, crc);
    u32 n = 0;
    const char *parts[] = {"KSTORM1 ", cell, " ", num, " ", crc_text, " "};
    for (u32 i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        u32 len = str_len(parts[i]);
        memcpy(line + n, parts[i], len);
        n += len;
    }
    memcpy(line + n, j->buf, j->len);
    n += j->len;
    line[n++] = '\n';
    out_write(line, n);
}
