/*
 * ring_internal.h - what ring.c and group.c share; not part of the API.
 */
#ifndef PMQ_RING_INTERNAL_H
#define PMQ_RING_INTERNAL_H

#include "pmq_ring.h"

#include <string.h>

#define ALIGN8(x) (((x) + 7ULL) & ~7ULL)

/* Acquire/release pair the data with the positions that publish it;
 * seq_cst is used only where a store must be ordered before a later load
 * (the waiter flags: a Dekker handshake between sleeper and waker). */
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_SC(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE_SC(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define ADD_RLX(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)

static inline uint64_t rec_size(uint64_t len) { return ALIGN8(PMQ_REC_HDR + len); }

/* Positions are kept normalised: never inside the implicit gap of fewer than
 * a header's bytes at the end of the data area. */
static inline uint64_t skip_gap(const pmq_ring_t *r, uint64_t pos)
{
    uint64_t room = r->capacity - (pos & r->mask);
    return room < PMQ_REC_HDR ? pos + room : pos;
}

/* Copy out and check the record at pos, which must lie below limit. Returns
 * its size in the ring (a padding record's too), or 0 if anything is out of
 * bounds. Copying first means a racing overwrite cannot change what is checked. */
static inline uint64_t rec_check(const pmq_ring_t *r, uint64_t pos, uint64_t limit, pmq_rec_t *rec)
{
    uint64_t off = pos & r->mask, room = r->capacity - off, size;
    if (pos >= limit || limit - pos < PMQ_REC_HDR || room < PMQ_REC_HDR)
        return 0;
    memcpy(rec, r->data + off, sizeof *rec);
    if (rec->type == PMQ_REC_DATA) {
        if (rec->len > r->max_msg)
            return 0;
        size = rec_size(rec->len);
        if (size > room)
            return 0;
    } else if (rec->type == PMQ_REC_PAD) {
        size = PMQ_REC_HDR + (uint64_t)rec->len;
        if (size != room)
            return 0;
    } else {
        return 0;
    }
    return size <= limit - pos ? size : 0;
}

/* Lock the segment's mutex by an absolute CLOCK_REALTIME deadline (< 0: none),
 * repairing the ring first if the last holder died. 0, -ETIMEDOUT or PMQ_ECORRUPT. */
int pmq_ring_lock(pmq_ring_t *r, int64_t deadline_real_ns);
/* The same with a generous deadline, for everything but publish. */
int pmq_ring_lock_admin(pmq_ring_t *r);
void pmq_ring_unlock(pmq_ring_t *r);
/* The lowest cursor of any live group, or tail. Mutex held. */
int pmq_ring_gate(pmq_ring_t *r, uint64_t *gate);
/* Recount members per group from the member table; free empty anonymous groups.
 * Mutex held (recovery). */
void pmq_group_recount(pmq_ring_t *r);

#endif
