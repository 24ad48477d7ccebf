/* jsonl.c - the persistence log's batch encoder: see pmq_jsonl.h. */
#include "pmq_jsonl.h"

#include <pthread.h>
#include <string.h>

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Two base64 characters for each 12-bit value: half the table lookups of the
 * one-character table, and no per-character shifts. Built once, read-only after. */
static uint16_t pairs[4096];
static pthread_once_t pairs_once = PTHREAD_ONCE_INIT;

static void pairs_init(void)
{
    for (int v = 0; v < 4096; v++) {
        char two[2] = {B64[v >> 6], B64[v & 63]};
        memcpy(&pairs[v], two, 2);
    }
}

static uint64_t b64_len(uint32_t len)
{
    return ((uint64_t)len + 2) / 3 * 4;
}

uint64_t pmq_jsonl_line_max(uint32_t len)
{
    return PMQ_JSONL_FRAME + b64_len(len);
}

static char *b64_encode(char *o, const unsigned char *s, uint32_t len)
{
    uint32_t i = 0;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* 6 bytes to 8 characters per step, from one 8-byte load (2 bytes beyond
     * are read, not used: hence 8 left) and into one 8-byte store. Counted as
     * what is left (len - i, never negative), which cannot wrap as i + 8 can. */
    for (; len - i >= 8; i += 6) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        w = __builtin_bswap64(w); /* the bytes in reading order, most significant first */
        uint64_t v = w >> 16;     /* 48 bits: 4 groups of 12 */
        uint64_t out = (uint64_t)pairs[v >> 36] | (uint64_t)pairs[v >> 24 & 4095] << 16 |
                       (uint64_t)pairs[v >> 12 & 4095] << 32 | (uint64_t)pairs[v & 4095] << 48;
        memcpy(o, &out, 8);
        o += 8;
    }
#endif
    for (; len - i >= 3; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        memcpy(o, &pairs[v >> 12], 2);
        memcpy(o + 2, &pairs[v & 4095], 2);
        o += 4;
    }
    if (len - i) { /* 1 or 2 bytes left: one group, padded */
        int two = len - i == 2;
        uint32_t v = (uint32_t)s[i] << 16 | (two ? (uint32_t)s[i + 1] << 8 : 0);
        o[0] = B64[v >> 18];
        o[1] = B64[v >> 12 & 63];
        o[2] = two ? B64[v >> 6 & 63] : '=';
        o[3] = '=';
        o += 4;
    }
    return o;
}

/* Decimal digits of v (no sign), at least min digits with leading zeros. */
static char *put_uint(char *o, uint64_t v, int min)
{
    char tmp[20];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v || k < min);
    while (k)
        *o++ = tmp[--k];
    return o;
}

#define PUT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) + sizeof(lit) - 1)

int64_t pmq_jsonl_encode(const char *buf, uint64_t buflen, const uint64_t *offs,
                         const uint32_t *lens, const uint64_t *seqs, const int64_t *ts_ns,
                         uint32_t n, char *out, uint64_t out_cap, uint64_t *ends)
{
    pthread_once(&pairs_once, pairs_init);
    uint64_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (offs[i] > buflen || lens[i] > buflen - offs[i])
            return -1;
        if (pmq_jsonl_line_max(lens[i]) > out_cap - used)
            return i;
        /* ts as epoch seconds with 6 decimals; a clock before 1970 is written as 0 */
        uint64_t us = ts_ns[i] > 0 ? (uint64_t)ts_ns[i] / 1000 : 0;
        char *o = out + used;
        o = PUT(o, "{\"seq\":");
        o = put_uint(o, seqs[i], 1);
        o = PUT(o, ",\"ts\":");
        o = put_uint(o, us / 1000000, 1);
        *o++ = '.';
        o = put_uint(o, us % 1000000, 6);
        o = PUT(o, ",\"payload\":\"");
        o = b64_encode(o, (const unsigned char *)buf + offs[i], lens[i]);
        o = PUT(o, "\"}\n");
        used = (uint64_t)(o - out);
        ends[i] = used;
    }
    return n;
}
