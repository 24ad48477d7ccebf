/*
 * ring_internal.h - what ring.c and group.c share; not part of the API.
 */
#ifndef PMQ_RING_INTERNAL_H
#define PMQ_RING_INTERNAL_H

#include "pmq_ring.h"
#include "pmq_sync.h"

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

/* now + timeout, saturated (a huge timeout means "for ever", not overflow);
 * -1 (no deadline) for a negative timeout. */
static inline int64_t pmq_deadline_after(int64_t now, int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -1;
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

/* Clear the flag before bumping the word: a sleeper that sets the flag after
 * the clear either read the word before the bump (its wait returns at once)
 * or leaves the flag set for the next waker. */
static inline void wake(uint32_t *seq, uint32_t *waiters)
{
    STORE_SC(waiters, 0);
    __atomic_fetch_add(seq, 1, __ATOMIC_SEQ_CST);
    pmq_futex_wake_all(seq);
}

/* Called after a store that may let a sleeper proceed. The fence orders that
 * store before the load of the flag; the sleeper stores the flag before it
 * re-checks, so one of the two sees the other. No system call without a sleeper. */
static inline int wake_if_waiting(uint32_t *seq, uint32_t *waiters)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(waiters, __ATOMIC_RELAXED) == 0)
        return 0;
    wake(seq, waiters);
    return 1;
}

/* Internal: "look again" (a lost race, or only padding read). */
#define PMQ_RETRY (-1999)

/* Lock the segment's mutex, waiting at most timeout_ns (< 0: no limit),
 * repairing the ring first if the last holder died. 0, -ETIMEDOUT or PMQ_ECORRUPT.
 * blocked_since (may be NULL): as pmq_mutex_lock's. */
int pmq_ring_lock(pmq_ring_t *r, int64_t timeout_ns, int64_t *blocked_since);
/* The same with a generous timeout, for everything but publish. */
int pmq_ring_lock_admin(pmq_ring_t *r);
void pmq_ring_unlock(pmq_ring_t *r);
/* The lowest cursor of any live group, or tail. Mutex held. */
int pmq_ring_gate(pmq_ring_t *r, uint64_t *gate);
/* Recount members per group from the member table; free empty anonymous groups.
 * Mutex held (recovery). */
void pmq_group_recount(pmq_ring_t *r);

/* A named group with no member, made while nobody else can see the ring
 * (pmq_ring_init); 0 or an error. */
int pmq_group_create(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                     uint64_t start_seq, int64_t ack_timeout_ns, uint32_t max_retries);

/* The member's group, or NULL (*rc = PMQ_GONE or PMQ_ECORRUPT). */
pmq_group_t *pmq_member_group(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, int *rc);
/* Copy the record at pos into the batch: 1, or 0 when the batch is full. */
int pmq_batch_add(const pmq_ring_t *r, uint64_t pos, const pmq_rec_t *rec, pmq_batch_t *b);

/* ack.c: what an ack read saw, for the sleeper's re-check. */
typedef struct pmq_ack_snap {
    uint64_t tail, pend_head;
    uint32_t ready;
    int64_t blocked_since; /* when its wait for the group's lock began (see pmq_mutex_lock), or untouched */
} pmq_ack_snap_t;
/* Claim for a member of an ack group (takes the group's lock, never sleeps):
 * the count, 0 when there is nothing for it, or an error. */
int pmq_ack_read(pmq_ring_t *r, pmq_member_t *m, uint32_t mi, pmq_group_t *g, uint32_t gen,
                 pmq_batch_t *b, uint32_t max, pmq_ack_snap_t *snap);
/* Ring mutex held: give a new ack group a pending table; free an ack group
 * (state and table, under its own lock; < 0 if that lock cannot be had). */
int pmq_ack_group_init(pmq_ring_t *r, pmq_group_t *g, int64_t ack_timeout_ns, uint32_t max_retries);
int pmq_ack_group_free(pmq_ring_t *r, pmq_group_t *g);
/* Ring mutex held: member mi left or died; redeliver what it had in flight. */
void pmq_ack_member_gone(pmq_ring_t *r, pmq_group_t *g, uint32_t mi);
/* Persistence: the window's first pending seq (0 if none) and its acked seqs
 * (under the group's lock); rebuild a restored group's window (new group, ring
 * mutex held) from the records at its cursor and the seqs acked among them. */
int pmq_ack_window(pmq_ring_t *r, pmq_group_t *g, uint64_t *first_seq, uint64_t *acked,
                   uint32_t max);
int pmq_ack_restore_window(pmq_ring_t *r, pmq_group_t *g, const uint64_t *acked, uint32_t n);
/* Add an ack group's figures to o (read without its lock). */
void pmq_ack_figures(pmq_ring_t *r, const pmq_group_t *g, pmq_group_stats_t *o);

#endif
