/*
 * tools/fuzz/jsonl_fuzz.c - owns the libFuzzer target of the persistence
 * log's encoder (pmq_jsonl_encode): records whose offsets, lengths, seqs and
 * times come from the input, over a buffer that is the input's rest, into an
 * output of a capacity the input names. Besides ASan and UBSan, it checks
 * what the encoder promises: -1 exactly when a record (before the first
 * line that does not fit) lies outside the buffer; else the count of lines
 * that fit, each ending where ends[] says, each one
 * {"seq":N,"ts":S.UUUUUU,"payload":"<base64>"} of its record, decoded back.
 */
#include "pmq_jsonl.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_N 16

static void fail(const char *what, uint32_t i)
{
    fprintf(stderr, "jsonl_fuzz: line %u: %s\n", i, what);
    abort();
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Decode base64 text of len characters into out; the byte count, or -1. */
static int64_t b64_decode(const char *s, uint64_t len, uint8_t *out)
{
    if (len % 4)
        return -1;
    uint64_t k = 0;
    for (uint64_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=' && i + 4 == len && j >= 2) {
                v[j] = 0;
                pad++;
            } else if ((v[j] = b64_value(s[i + j])) < 0 || pad) {
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[k++] = (uint8_t)(w >> 16);
        if (pad < 2)
            out[k++] = (uint8_t)(w >> 8);
        if (pad < 1)
            out[k++] = (uint8_t)w;
    }
    return (int64_t)k;
}

static void check_line(const char *line, uint64_t len, const uint8_t *payload, uint32_t plen,
                       uint64_t seq, int64_t ts_ns, uint32_t i)
{
    char head[128];
    uint64_t us = ts_ns > 0 ? (uint64_t)ts_ns / 1000 : 0;
    int h = snprintf(head, sizeof head, "{\"seq\":%" PRIu64 ",\"ts\":%" PRIu64 ".%06" PRIu64
                     ",\"payload\":\"", seq, us / 1000000, us % 1000000);
    if ((uint64_t)h + 3 > len || memcmp(line, head, (size_t)h) != 0)
        fail("the line's seq or ts is not its record's", i);
    if (memcmp(line + len - 3, "\"}\n", 3) != 0)
        fail("the line does not end with \"}\\n", i);
    static uint8_t got[1 << 17];
    int64_t k = b64_decode(line + h, len - (uint64_t)h - 3, got);
    if (k != plen || memcmp(got, payload, plen) != 0)
        fail("the payload's base64 is not the record's payload", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t n = data[0] % (MAX_N + 1);
    size_t need = 2 + (size_t)n * 12;
    if (size < need)
        return 0;
    uint64_t offs[MAX_N], seqs[MAX_N], ends[MAX_N];
    uint32_t lens[MAX_N];
    int64_t ts[MAX_N];
    const uint8_t *p = data + 2;
    for (uint32_t i = 0; i < n; i++, p += 12) {
        /* 2 bytes offset, 2 length, 4 seq (spread to 64 bits), 4 time (spread, signed) */
        offs[i] = (uint64_t)p[0] | (uint64_t)p[1] << 8;
        lens[i] = (uint32_t)p[2] | (uint32_t)p[3] << 8;
        uint32_t s, t;
        memcpy(&s, p + 4, 4);
        memcpy(&t, p + 8, 4);
        seqs[i] = (uint64_t)s * (s & 1 ? 0x100000001ull : 1);
        ts[i] = (int64_t)((uint64_t)t * (t & 1 ? 0x3b9aca07ull : 1) ^ (t & 2 ? 1ull << 63 : 0));
    }
    const char *buf = (const char *)data + need;
    uint64_t buflen = size - need;
    uint64_t cap = (uint64_t)data[1] * 24;
    char *out = malloc(cap ? cap : 1);
    int64_t got = pmq_jsonl_encode(buf, buflen, offs, lens, seqs, ts, n, out, cap, ends);
    /* what it should have said: lines in order while each one's bound fits
     * what is left; -1 at a record outside the buffer before that */
    int64_t want = n;
    uint64_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (offs[i] > buflen || lens[i] > buflen - offs[i]) {
            want = -1;
            break;
        }
        if (pmq_jsonl_line_max(lens[i]) > cap - used) {
            want = i;
            break;
        }
        char head[128];
        uint64_t us = ts[i] > 0 ? (uint64_t)ts[i] / 1000 : 0;
        int h = snprintf(head, sizeof head, "{\"seq\":%" PRIu64 ",\"ts\":%" PRIu64 ".%06" PRIu64
                         ",\"payload\":\"", seqs[i], us / 1000000, us % 1000000);
        used += (uint64_t)h + ((uint64_t)lens[i] + 2) / 3 * 4 + 3;
    }
    if (got != want)
        fail("the count is not what the contract says", (uint32_t)(got < 0 ? 0 : got));
    uint64_t at = 0;
    for (int64_t i = 0; i < got; i++) {
        if (ends[i] <= at || ends[i] > cap)
            fail("ends[] does not increase within the output", (uint32_t)i);
        check_line(out + at, ends[i] - at, (const uint8_t *)buf + offs[i], lens[i], seqs[i], ts[i],
                   (uint32_t)i);
        at = ends[i];
    }
    free(out);
    return 0;
}
