/*
 * ring_internal.h - what the layers share besides the API: memory-order
 * shorthands, the wake handshake, the segment's lock, and the few table
 * operations that recovery and the group layer both make. Not part of the API.
 */
#ifndef PMQ_RING_INTERNAL_H
#define PMQ_RING_INTERNAL_H

#include "pmq_ring.h"

#include <string.h>

/* Acquire/release pair the data with the positions that publish it;
 * seq_cst is used only where a store must be ordered before a later load
 * (the waiter flags: a Dekker handshake between sleeper and waker). */
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_SC(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE_SC(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define ADD_RLX(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)

/* Internal: "look again" (a lost race, or only padding read). */
#define PMQ_RETRY (-1999)

/* For joins, leaves and deletions (publish and reads have deadlines of their
 * own, the supervisor's work PMQ_SWEEP_LOCK_NS): the segment's lock is only
 * ever held for microseconds, so a wait this long means a stopped or frozen
 * holder, or a garbage lock word. */
#define PMQ_ADMIN_LOCK_NS (10LL * 1000000000LL)
/* The most the supervisor waits for a lock (and a close for the segment's):
 * it never waits on a topic's lock for long, and looks again next sweep. */
#define PMQ_SWEEP_LOCK_NS (100LL * 1000000LL)

/* The record at position pos (below limit): its size, or 0 if out of bounds. */
static inline uint64_t ring_record(const pmq_ring_t *r, uint64_t pos, uint64_t limit, pmq_rec_t *rec)
{
    return pos < limit ? pmq_record_check(r->data, r->capacity, pos & r->mask, limit - pos,
                                          r->max_msg, rec) : 0;
}

/* A reader's tail: what this process last loaded of it, a lower bound, while
 * the reader's cursor cur is below that; else tail itself, loaded (acquire)
 * and remembered. Records below either are committed, and stay while the
 * reader's cursor (or floor) gates them. While a backlog lasts a read so
 * loads no line the publisher writes but the records' own: tail's line
 * costs a trip between CPUs (up to 230 ns on this VM) on both sides, the
 * reader's load and the publisher's next store. A reader that finds
 * something wrong below a remembered tail forgets it (ring_forget_tail) and
 * looks again at tail itself. head, which a publish moves once the ring has
 * wrapped, is remembered with it (seen_head: what an ack group's checks
 * compare its floor with). */
static inline uint64_t ring_seen_tail(pmq_ring_t *r, uint64_t cur)
{
    uint64_t t = LOAD_ACQ(&r->seen_tail);
    if (cur < t)
        return t;
    t = LOAD_ACQ(&r->hdr->tail);
    STORE_REL(&r->seen_head, LOAD_RLX(&r->hdr->head));
    STORE_REL(&r->seen_tail, t);
    return t;
}

static inline void ring_forget_tail(pmq_ring_t *r)
{
    STORE_REL(&r->seen_tail, 0);
    STORE_REL(&r->seen_head, 0);
}

/* ---- waking ------------------------------------------------------------------ */

/* Clear the flag before bumping the word: a sleeper that sets the flag after
 * the clear either read the word before the bump (its wait returns at once)
 * or leaves the flag set for the next waker. */
static inline void ring_wake(uint32_t *seq, uint32_t *waiters)
{
    STORE_SC(waiters, 0);
    __atomic_fetch_add(seq, 1, __ATOMIC_SEQ_CST);
    pmq_sync_wake(seq);
}

/* Called after a store that may let a sleeper proceed. The fence orders that
 * store before the load of the flag; the sleeper stores the flag before it
 * re-checks, so one of the two sees the other. No system call without a sleeper. */
static inline int ring_wake_if_waiting(uint32_t *seq, uint32_t *waiters)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (LOAD_RLX(waiters) == 0)
        return 0;
    ring_wake(seq, waiters);
    return 1;
}

static inline void ring_wake_all(pmq_ring_t *r)
{
    ring_wake(&r->hdr->data_seq, &r->hdr->data_waiters);
    ring_wake(&r->hdr->space_seq, &r->hdr->space_waiters);
}

/* ---- the segment's lock (ring.c) ----------------------------------------------- */

/* Lock the segment's mutex (pmq_sync_lock with the segment's repair: the
 * commit intent, the tables' counts), then check the positions' invariants
 * before anyone trusts them. 0, or an error with the mutex released. */
int ring_lock(pmq_ring_t *r, pmq_deadline_t *d, int64_t min_ns, const pmq_hooks_t *hooks);
/* The same, for a caller holding another lock: never waits (PMQ_BUSY). */
int ring_trylock(pmq_ring_t *r);
/* The same with PMQ_ADMIN_LOCK_NS, for changes to the group and member tables. */
int ring_lock_admin(pmq_ring_t *r);
/* The same, waiting at most timeout_ns. */
int ring_lock_for(pmq_ring_t *r, int64_t timeout_ns);
void ring_unlock(pmq_ring_t *r);

/* The lowest cursor (an ack group: floor) of any group, or tail. Mutex held. */
int ring_gate(pmq_ring_t *r, uint64_t *gate);

/* PMQ_CLOSED or PMQ_DELETED for a closed ring, else 0. */
int ring_closed(const pmq_ring_t *r);

/* ---- what a read holds (ring.c) --------------------------------------------------- */

void ring_batch_reset(pmq_batch_t *b);
/* Add the record at pos (checked) to the batch: its payload's offset in the
 * data area, within the batch's budget. 1, or 0 when the batch is full. */
int ring_batch_add(const pmq_ring_t *r, uint64_t pos, const pmq_rec_t *rec, pmq_batch_t *b);
/* Hand the batch's records over: the sink's copy, or (no sink) a copy into
 * b->buf (none with b->buf NULL). 0 or a negative code. */
int ring_hand_over(const pmq_ring_t *r, pmq_batch_t *b, const pmq_sink_t *sink);

/* A plain group's claim: gather records from its cursor, hand them over
 * (sink), then CAS cursor and cursor_gen (gen: the member's group gen). The
 * count; 0 for nothing there; PMQ_RETRY (another member took them first, the
 * copies dropped; or only padding): look again; PMQ_GONE (the group was
 * freed); an error. *cur_out, *tail_out: what it saw, for a wait. */
int ring_take(pmq_ring_t *r, pmq_group_t *g, uint32_t gen, pmq_batch_t *b, uint32_t max,
              const pmq_sink_t *sink, uint64_t *cur_out, uint64_t *tail_out);

/* ---- table operations that recovery and groups share --------------------------- */

/* The member's group (of the generation it joined), or NULL with *rc
 * PMQ_GONE (member or group gone) or PMQ_ECORRUPT. Lock-free. */
static inline pmq_group_t *ring_member_group(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, int *rc)
{
    if (LOAD_ACQ(&m->state) != PMQ_SLOT_ACTIVE || LOAD_RLX(&m->gen) != gen) {
        *rc = PMQ_GONE;
        return NULL;
    }
    uint32_t gi = LOAD_RLX(&m->group);
    if (gi >= r->max_groups) {
        *rc = PMQ_ECORRUPT;
        return NULL;
    }
    pmq_group_t *g = &r->groups[gi];
    if (LOAD_ACQ(&g->state) != PMQ_SLOT_ACTIVE || LOAD_RLX(&g->gen) != LOAD_RLX(&m->group_gen)) {
        *rc = PMQ_GONE;
        return NULL;
    }
    return g;
}

/* Let go of a group with no member. Mutex held. A plain group is freed at
 * once: state first, then its cursor poisoned (a late claim on it fails on
 * the gen anyway, see pmq_group_t.cursor_gen). An ack group goes to DRAINING:
 * its table is freed by pmq_ack_tidy under its own lock, which nobody may
 * wait for while holding the segment's. An anonymous group's figures go to
 * the topic's totals. */
static inline void ring_free_group(pmq_ring_t *r, pmq_group_t *g)
{
    if (g->flags & PMQ_GROUP_ANON) {
        ADD_RLX(&r->hdr->anon_delivered, LOAD_ACQ(&g->delivered));
        ADD_RLX(&r->hdr->anon_delivered_bytes, LOAD_ACQ(&g->delivered_bytes));
        g->flags &= ~PMQ_GROUP_ANON; /* counted once, whatever happens next */
    }
    if (g->flags & PMQ_GROUP_ACK) {
        STORE_REL(&g->state, PMQ_SLOT_DRAINING);
        return;
    }
    STORE_REL(&g->state, PMQ_SLOT_FREE);
    STORE_SC(&g->cursor, UINT64_MAX);
}

#endif
