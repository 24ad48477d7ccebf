/*
 * pmq_record.h - one record of a ring's data area: its bytes, its size, and
 * the check that makes it safe to read. Depends on nothing.
 *
 * A data record: a 24-byte header, then the payload, padded to 8 bytes.
 *
 *   0        4        8                16               24
 *   +--------+--------+----------------+----------------+---------------+
 *   | len    | type   | seq            | ts_ns          | payload ...   |
 *   +--------+--------+----------------+----------------+---------------+
 *
 * A padding record fills the end of the data area when the next record does
 * not fit there. Only its first 8 bytes are a header:
 *
 *   +--------+--------+---------------------------- ... to the end ----+
 *   | len    | PAD    | len bytes of nothing                            |
 *   +--------+--------+---------------------------- ... ----------------+
 *
 * Records start 8-aligned and the data area is a power of two of at least
 * 4096 bytes, so whatever is left before its end (a multiple of 8) always holds
 * a padding record: every position in a ring is the start of a record, and
 * there is no gap to skip.
 */
#ifndef PMQ_RECORD_H
#define PMQ_RECORD_H

#include <stdint.h>
#include <string.h>

/* Copy a payload into or out of a data area. glibc copies 2 KiB and more
 * with `rep movsb`, which on this machine's CPU (AMD EPYC, FSRM) measured
 * 12-15 % slower for 4 KiB payloads at a ring's alignments (24 bytes past an
 * 8-aligned record) than a loop of 64-byte blocks, which compiles to vector
 * moves; under 2 KiB glibc's own copy is called. The empty asm hides the
 * bound n < 2048 from the compiler, which would otherwise inline that copy as
 * `rep movsq` (measured: 64-byte records 50 % slower). */
static inline void pmq_payload_copy(void *restrict dst, const void *restrict src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (n < 2048) {
        __asm__("" : "+r"(n));
        memcpy(d, s, n);
        return;
    }
    for (; n >= 64; n -= 64, d += 64, s += 64)
        memcpy(d, s, 64);
    memcpy(d, s, n);
}

#define PMQ_REC_DATA 1u
#define PMQ_REC_PAD  2u

typedef struct pmq_rec {
    uint32_t len;   /* payload bytes (a padding record: bytes after its 8-byte head) */
    uint32_t type;  /* PMQ_REC_DATA or PMQ_REC_PAD */
    uint64_t seq;   /* topic sequence number, from 1 (data only) */
    int64_t ts_ns;  /* publish time, CLOCK_REALTIME nanoseconds (data only) */
} pmq_rec_t;

#define PMQ_REC_HDR 24u /* a data record's header */
#define PMQ_PAD_HDR 8u  /* a padding record's header */

_Static_assert(sizeof(pmq_rec_t) == PMQ_REC_HDR, "a data record's header is 24 bytes");

/* Bytes a data record of a len-byte payload takes in the ring. */
static inline uint64_t pmq_record_size(uint64_t len)
{
    return (PMQ_REC_HDR + len + 7u) & ~7ull;
}

/* Copy out and check the record at offset off of a data area of capacity
 * bytes, when avail bytes from there are published (below tail). Returns its
 * size in the ring (a padding record's too), or 0 if anything is out of
 * bounds: a misaligned offset, an unknown type, a payload above max_msg, a
 * record past the end of the area or past what is published, a padding
 * record that does not end exactly at the end. The header is copied before it
 * is checked, so a racing overwrite cannot change what was checked; *rec is
 * what the record said. */
static inline uint64_t pmq_record_check(const uint8_t *data, uint64_t capacity, uint64_t off,
                                        uint64_t avail, uint32_t max_msg, pmq_rec_t *rec)
{
    if ((off & 7u) || off >= capacity)
        return 0;
    uint64_t room = capacity - off, size;
    if (room >= PMQ_REC_HDR) {
        memcpy(rec, data + off, sizeof *rec);
    } else {
        memcpy(rec, data + off, PMQ_PAD_HDR);
        rec->seq = 0;
        rec->ts_ns = 0;
    }
    if (rec->type == PMQ_REC_DATA) {
        if (room < PMQ_REC_HDR || rec->len > max_msg)
            return 0;
        size = pmq_record_size(rec->len);
        if (size > room)
            return 0;
    } else if (rec->type == PMQ_REC_PAD) {
        size = PMQ_PAD_HDR + (uint64_t)rec->len;
        if (size != room)
            return 0;
    } else {
        return 0;
    }
    return size <= avail ? size : 0;
}

#endif
