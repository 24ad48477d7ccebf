/* pmq_jsonl: the persistence log's line format, encoded a batch at a time.
 *
 * One line per record, the seed broker's JSON-lines format:
 *   {"seq":<uint>,"ts":<seconds>.<6 digits>,"payload":"<base64, padded>"}\n
 * This is plain memory-to-memory work on buffers the caller owns (no shared
 * memory, no I/O, nothing of the ring's): a layer of its own, compiled into
 * pymq._native beside the ring and fronted by pymq/_core.py (Lines).
 */
#ifndef PMQ_JSONL_H
#define PMQ_JSONL_H

#include <stdint.h>

/* Bytes a line takes besides its base64: the frame, 20-digit seq, 20-digit seconds. */
#define PMQ_JSONL_FRAME 80

/* The longest line a payload of len bytes can need. */
uint64_t pmq_jsonl_line_max(uint32_t len);

/* Encode records 0..n-1 (payload i is buf[offs[i] .. offs[i]+lens[i])) into out.
 * Stops before the first line that does not fit in out_cap. ends[i] is the offset
 * in out just past line i. Returns the number of lines written, or -1 if a record
 * lies outside buf (nothing is trusted, not even our own read buffer). */
int64_t pmq_jsonl_encode(const char *buf, uint64_t buflen, const uint64_t *offs,
                         const uint32_t *lens, const uint64_t *seqs, const int64_t *ts_ns,
                         uint32_t n, char *out, uint64_t out_cap, uint64_t *ends);

#endif
