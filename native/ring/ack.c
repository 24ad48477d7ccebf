/*
 * ack.c - at-least-once delivery: what is in the pending tables of ack groups.
 *
 * An ack group's members take the group's own robust mutex to claim records
 * (redeliveries first, then new records while the window has room); the
 * supervisor takes it to sweep (timeouts, deliveries of members that are
 * gone, groups on their way out) and to dead-letter, never waiting long. An
 * ack or a nack never waits for it. An ack takes it if it is free (the usual
 * case: only its own member's reads take it), and then frees each entry by
 * one exchange of its state word, since under the lock no entry is claimed or
 * reused; else, and for a nack, an entry changes by a 16-byte compare-and-swap
 * of its seq and state (pmq_pending_t). Every change of an entry in flight is
 * atomic and checks what it changes, so ackers, nackers and a lock holder
 * never undo each other. Whoever holds the lock moves the floor past
 * freed entries and recounts what is READY; an ack or nack that changed the
 * window without the lock marks the group stale, and tries the lock; a
 * holder that let go looks at the mark (a Dekker handshake: one of the two
 * sees the other), and so does a reader about to sleep.
 * Publishers never take the lock: they gate on the floor.
 *
 * A claim commits in this order: the entries, pend_tail, then the cursor. A
 * holder that dies part-way leaves at most entries past the cursor, which
 * repair turns into a consistent window. Nobody waits for this lock while
 * holding the segment's, nor the other way round.
 */
#define _GNU_SOURCE
#include "ack_internal.h"

#include <errno.h>


/* The entry of claim number n, or of slot n (a slot, checked below pending_cap, is its own). */
static pmq_pending_t *entry(const pmq_ring_t *r, const pmq_group_t *g, uint64_t n)
{
    return group_entry(r, g, n);
}

static uint32_t slot_of(const pmq_ring_t *r, uint64_t n) { return (uint32_t)(n & (r->pending_cap - 1)); }

/* ---- entries: one 16-byte word of seq and state --------------------------------- */

static pmq_pending_word_t word_of(const pmq_pending_t *e)
{
    return (pmq_pending_word_t){.bits = __atomic_load_n(&e->w.bits, __ATOMIC_ACQUIRE)};
}

/* Change entry e from (seq, old) to (seq, new), unless it changed meanwhile. */
static int entry_cas(pmq_pending_t *e, uint64_t seq, pmq_pending_word_t old, pmq_pending_word_t new)
{
    unsigned __int128 *word = (unsigned __int128 *)(void *)&e->seq;
    unsigned __int128 want = (unsigned __int128)old.bits << 64 | seq;
    unsigned __int128 to = (unsigned __int128)new.bits << 64 | seq;
    return __sync_bool_compare_and_swap(word, want, to);
}

/* ---- the window ------------------------------------------------------------------ */

static int is_ack_group(const pmq_ring_t *r, const pmq_group_t *g, int draining_too)
{
    uint32_t state = LOAD_ACQ(&g->state);
    return (state == PMQ_SLOT_ACTIVE || (draining_too && state == PMQ_SLOT_DRAINING)) &&
           (g->flags & PMQ_GROUP_ACK) && g->ptable < r->max_ack_groups;
}

/* The window's invariants, checked on every lock: head <= floor <= cursor <=
 * tail, and at most pending_cap claims in flight. head and tail as this
 * process's readers last loaded them (ring_seen_tail: lower bounds; tail
 * itself when the cursor is past that), so that the check loads no line a
 * publisher writes; publishers check every floor against head itself
 * (ring_gate). */
static int window_ok(const pmq_ring_t *r, const pmq_group_t *g)
{
    uint64_t head = LOAD_ACQ(&r->seen_head);
    return g->ptable < r->max_ack_groups && g->pend_head <= g->pend_tail &&
           g->pend_tail - g->pend_head <= r->pending_cap && head <= g->floor &&
           g->floor <= g->cursor &&
           (g->cursor < LOAD_ACQ(&r->seen_tail) || g->cursor <= LOAD_ACQ(&r->hdr->tail));
}

/* Count ready and dead entries again (after acks freed some without the lock,
 * or after a holder died). Lock held. */
static void recount(pmq_ring_t *r, pmq_group_t *g)
{
    g->ready = g->dead = 0;
    for (uint64_t n = g->pend_head; n < g->pend_tail; n++) {
        uint8_t st = word_of(entry(r, g, n)).f.state;
        g->ready += st == PMQ_PEND_READY;
        g->dead += st == PMQ_PEND_DEAD;
    }
}

/* Drop freed entries off the window's head and store the new floor (seq_cst:
 * publishers waiting for space load it in their re-check). Lock held. */
static void advance_floor(pmq_ring_t *r, pmq_group_t *g)
{
    if (__atomic_exchange_n(&g->stale, 0, __ATOMIC_SEQ_CST))
        recount(r, g);
    while (g->pend_head < g->pend_tail && word_of(entry(r, g, g->pend_head)).f.state == PMQ_PEND_FREE)
        g->pend_head++;
    uint64_t floor = g->pend_head < g->pend_tail ? entry(r, g, g->pend_head)->pos : g->cursor;
    if (floor < g->floor || floor > g->cursor) /* a scribbled entry: never move backwards */
        floor = floor < g->floor ? g->floor : g->cursor;
    STORE_SC(&g->floor, floor);
}

typedef struct group_ctx {
    pmq_ring_t *r;
    pmq_group_t *g;
} group_ctx_t;

/* pmq_sync_lock's repair of a group's lock: repair the cursor (a holder may
 * have died between its claims' entries and the cursor), recount, move the floor. */
static int repair(void *ctx)
{
    pmq_ring_t *r = ((group_ctx_t *)ctx)->r;
    pmq_group_t *g = ((group_ctx_t *)ctx)->g;
    ADD_RLX(&r->hdr->recoveries, 1);
    if (g->ptable >= r->max_ack_groups || g->pend_head > g->pend_tail ||
        g->pend_tail - g->pend_head > r->pending_cap)
        return PMQ_ECORRUPT;
    if (g->pend_tail > g->pend_head) {
        pmq_pending_t *last = entry(r, g, g->pend_tail - 1);
        pmq_rec_t rec;
        if (word_of(last).f.state != PMQ_PEND_FREE && last->pos >= g->cursor) {
            uint64_t size = ring_record(r, last->pos, LOAD_ACQ(&r->hdr->tail), &rec);
            if (size == 0)
                return PMQ_ECORRUPT;
            STORE_REL(&g->cursor, last->pos + size);
        }
    }
    g->stale = 1;
    advance_floor(r, g);
    return 0;
}

/* After a change under the group's lock: wake readers if deliveries became
 * ready or the window opened, publishers if the floor passed their target. */
static void after_change(pmq_ring_t *r, pmq_group_t *g, uint64_t old_floor, int readers)
{
    pmq_ring_hdr_t *h = r->hdr;
    if (readers)
        ring_wake_if_waiting(&h->data_seq, &h->data_waiters);
    if (LOAD_SC(&g->floor) != old_floor && LOAD_SC(&g->floor) >= LOAD_SC(&h->space_target))
        ring_wake_if_waiting(&h->space_seq, &h->space_waiters);
}

/* With the group's lock just taken: check the group is still the one asked
 * for (and, with m, still m's) and its window whole; else release it and say
 * why. The identity goes first, so a group freed meanwhile is "gone", not
 * "corrupt". */
static int group_checked(pmq_ring_t *r, pmq_group_t *g, uint32_t gen, pmq_member_t *m,
                         uint32_t mgen, int draining_too)
{
    int rc = 0;
    if (!is_ack_group(r, g, draining_too) || g->gen != gen)
        rc = PMQ_GONE;
    else if (m && ring_member_group(r, m, mgen, &rc) != g)
        rc = rc < 0 ? rc : PMQ_GONE;
    else if (!window_ok(r, g)) {
        rc = PMQ_ECORRUPT;
        ADD_RLX(&r->hdr->corrupt, 1);
    }
    if (rc < 0) {
        pmq_sync_unlock(&g->lock);
        return rc;
    }
    g->lock_pid = r->pid;
    return 0;
}

/* Lock group g, which must still be the ack group of generation gen (and,
 * with m, m's): else PMQ_GONE, unlocked. The identity is checked before the
 * window, so a group freed meanwhile is "gone", not "corrupt". d NULL: the
 * supervisor's patience (PMQ_SWEEP_LOCK_NS). */
static int group_lock(pmq_ring_t *r, pmq_group_t *g, uint32_t gen, pmq_member_t *m, uint32_t mgen,
                      int draining_too, pmq_deadline_t *d, const pmq_hooks_t *hooks)
{
    pmq_deadline_t sweep = PMQ_DEADLINE(PMQ_SWEEP_LOCK_NS);
    group_ctx_t ctx = {r, g};
    int rc = pmq_sync_lock(&g->lock, d ? d : &sweep, 0, hooks, repair, &ctx);
    if (rc == PMQ_ECORRUPT)
        ADD_RLX(&r->hdr->corrupt, 1);
    if (rc < 0)
        return rc;
    return group_checked(r, g, gen, m, mgen, draining_too);
}

/* The same, only if the lock is free now: never waits (PMQ_BUSY). */
static int group_trylock(pmq_ring_t *r, pmq_group_t *g, int draining_too)
{
    group_ctx_t ctx = {r, g};
    int rc = pmq_sync_trylock(&g->lock, repair, &ctx);
    if (rc < 0)
        return rc;
    return group_checked(r, g, g->gen, NULL, 0, draining_too);
}

/* Let go of the lock, then see to a mark an acker left meanwhile. */
static void group_unlock(pmq_ring_t *r, pmq_group_t *g)
{
    g->lock_pid = 0;
    pmq_sync_unlock(&g->lock);
    while (LOAD_SC(&g->stale) && group_trylock(r, g, 1) == 0) {
        uint64_t old_floor = g->floor;
        advance_floor(r, g);
        g->lock_pid = 0;
        pmq_sync_unlock(&g->lock);
        after_change(r, g, old_floor, 1);
    }
}

/* ---- claiming --------------------------------------------------------------------- */

/* Whether entry e names a whole record of its seq inside the window. */
static int entry_ok(pmq_ring_t *r, pmq_group_t *g, pmq_pending_t *e, pmq_rec_t *rec)
{
    return e->pos >= g->floor && e->pos < g->cursor && ring_record(r, e->pos, g->cursor, rec) &&
           rec->type == PMQ_REC_DATA && rec->seq == e->seq;
}

/* An entry out of its member's hands: another try, or dead when out of retries. */
static pmq_pending_word_t requeued(const pmq_group_t *g, pmq_pending_word_t w)
{
    w.f.state = w.f.attempts >= 1u + g->max_retries ? PMQ_PEND_DEAD : PMQ_PEND_READY;
    return w;
}

static int requeue(pmq_group_t *g, pmq_pending_t *e, pmq_pending_word_t w)
{
    pmq_pending_word_t to = requeued(g, w);
    if (!entry_cas(e, e->seq, w, to))
        return 0; /* acked meanwhile */
    g->ready += to.f.state == PMQ_PEND_READY;
    g->dead += to.f.state == PMQ_PEND_DEAD;
    return 1;
}

int ack_take(pmq_ring_t *r, pmq_member_t *m, uint32_t mi, uint32_t mgen, pmq_group_t *g,
             pmq_batch_t *b, uint32_t max, const pmq_sink_t *sink, pmq_deadline_t *d,
             const pmq_hooks_t *hooks, ack_snap_t *snap)
{
    if (!b->pos || !b->slots || !b->attempts)
        return PMQ_EINVAL;
    int rc = group_lock(r, g, g->gen, m, mgen, 0, d, hooks);
    if (rc == -ETIMEDOUT) /* a lock held past the read's deadline; none given: say so */
        return d->timeout_ns == 0 ? PMQ_BUSY : PMQ_EMPTY;
    if (rc < 0)
        return rc;
    PMQ_TEST_POINT("ack.locked");
    uint64_t old_floor = g->floor;
    advance_floor(r, g); /* what acks and nacks changed without the lock, first */
    uint64_t cur = g->cursor, tail = ring_seen_tail(r, cur);
    ring_batch_reset(b);
    pmq_rec_t rec;
    /* Gather: deliveries waiting for another try first, then new records
     * while the window has room. Nothing is committed yet. */
    uint32_t again = 0;
    for (uint64_t n = g->pend_head; n < g->pend_tail && g->ready && b->n < max; n++) {
        pmq_pending_t *e = entry(r, g, n);
        pmq_pending_word_t w = word_of(e);
        if (w.f.state != PMQ_PEND_READY)
            continue;
        if (!entry_ok(r, g, e, &rec)) { /* a scribbled entry: dropped, counted, not wedging */
            ADD_RLX(&r->hdr->corrupt, 1);
            pmq_pending_word_t freed = w;
            freed.f.state = PMQ_PEND_FREE;
            if (entry_cas(e, e->seq, w, freed))
                g->ready--;
            continue;
        }
        if (!ring_batch_add(r, e->pos, &rec, b))
            break;
        b->slots[b->n - 1] = slot_of(r, n);
        b->attempts[b->n - 1] = w.f.attempts + 1u;
        again++;
    }
    uint64_t room = r->pending_cap - (g->pend_tail - g->pend_head);
    int bad = 0;
    while (b->n < max && cur < tail && b->n - again < room) {
        uint64_t size = ring_record(r, cur, tail, &rec);
        if (size == 0) { /* what was gathered goes out; the next read reports it */
            bad = 1;
            rc = b->n ? 0 : PMQ_ECORRUPT;
            break;
        }
        if (rec.type == PMQ_REC_DATA && rec.seq >= g->from_seq) {
            if (!ring_batch_add(r, cur, &rec, b)) {
                if (b->n == 0)
                    rc = PMQ_EBUFSMALL;
                break;
            }
            b->slots[b->n - 1] = slot_of(r, g->pend_tail + (b->n - 1 - again));
            b->attempts[b->n - 1] = 1;
        }
        cur += size;
    }
    if (rc == 0 && b->n)
        rc = ring_hand_over(r, b, sink); /* under the lock: the records cannot move */
    if (rc == 0) { /* commit */
        pmq_deadline_t acked_by = PMQ_DEADLINE(g->ack_timeout_ns);
        int64_t deadline = b->n ? pmq_deadline_start(&acked_by, pmq_sync_now_late()) : 0;
        pmq_pending_word_t mine = {.f = {.member = (uint16_t)mi, .member_gen = (uint16_t)mgen,
                                         .state = PMQ_PEND_INFLIGHT}};
        for (uint32_t i = 0; i < again; i++) {
            pmq_pending_t *e = entry(r, g, b->slots[i]);
            pmq_pending_word_t w = word_of(e);
            mine.f.attempts = w.f.attempts + 1;
            e->deadline_ns = deadline;
            STORE_REL(&e->w.bits, mine.bits); /* READY: no acker touches it */
            g->ready--;
            g->redelivered++;
        }
        for (uint32_t i = again; i < b->n; i++) {
            pmq_pending_t *e = entry(r, g, g->pend_tail);
            e->pos = b->pos[i];
            e->deadline_ns = deadline;
            e->seq = b->seqs[i];
            mine.f.attempts = 1;
            STORE_REL(&e->w.bits, mine.bits);
            STORE_REL(&g->pend_tail, g->pend_tail + 1);
        }
        PMQ_TEST_POINT("ack.claimed");
        STORE_REL(&g->cursor, cur);
    }
    advance_floor(r, g);
    if (bad && tail != LOAD_ACQ(&r->hdr->tail)) {
        /* what was wrong lay below a remembered tail, perhaps not below tail
         * itself: forget it, and look again there (as ring_take does) */
        ring_forget_tail(r);
        bad = 0;
        if (rc == PMQ_ECORRUPT)
            rc = PMQ_RETRY;
    }
    /* What a reader that got nothing waits to see change. Caught up with the
     * tail it read: that tail (a record published since changes it; loading
     * tail again here would take that record in and wait past it). Stopped
     * short of it (the window full): tail itself, not a remembered one that
     * tail has already passed, which would wake it again at once. */
    snap->tail = b->n || cur >= tail ? tail : LOAD_ACQ(&r->hdr->tail);
    snap->ready = g->ready;
    snap->pend_head = g->pend_head;
    if (rc == 0 && b->n) {
        ADD_RLX(&g->delivered, b->n);
        ADD_RLX(&g->delivered_bytes, b->bytes);
        ADD_RLX(&m->delivered, b->n);
    }
    group_unlock(r, g);
    after_change(r, g, old_floor, 0);
    if (bad)
        ADD_RLX(&r->hdr->corrupt, 1);
    return rc < 0 ? rc : (int)b->n;
}

/* ---- acks and nacks (never waiting), dead letters (under the lock) ----------------- */

/* Lock-free: ack group gi of generation gen, checked. */
static pmq_group_t *named(pmq_ring_t *r, uint32_t gi, uint32_t gen)
{
    if (gi >= r->max_groups)
        return NULL;
    pmq_group_t *g = &r->groups[gi];
    return is_ack_group(r, g, 0) && LOAD_RLX(&g->gen) == gen ? g : NULL;
}

/* Lock held, after entries were freed: move the floor past them, let go, and
 * wake readers (asked for, or the window was full and opened) and publishers
 * the floor passed. */
static void floor_then_unlock(pmq_ring_t *r, pmq_group_t *g, int readers)
{
    uint64_t old_floor = g->floor, old_head = g->pend_head;
    int was_full = g->pend_tail - g->pend_head == r->pending_cap;
    advance_floor(r, g);
    readers |= was_full && g->pend_head != old_head;
    group_unlock(r, g);
    after_change(r, g, old_floor, readers);
}

/* After acks or nacks changed entries without the lock: mark the group stale
 * (its floor and counts are to be seen to), then see to it now if the lock
 * is free (else its holder does once it lets go), and wake whoever waits. */
static void changed_without_lock(pmq_ring_t *r, pmq_group_t *g, int readers)
{
    STORE_SC(&g->stale, 1);
    if (group_trylock(r, g, 0) == 0) {
        floor_then_unlock(r, g, readers);
    } else if (readers) {
        ring_wake_if_waiting(&r->hdr->data_seq, &r->hdr->data_waiters);
    }
}

/* Change entries named by (slot, seq) without the lock: an ack frees one in
 * any state but free (an ack of any attempt counts: the work was done); a
 * nack (attempts given) requeues one still in flight at exactly that attempt
 * (a stale nack, from a member the delivery was since taken from, must not
 * requeue it under its new holder). How many changed. */
static int change(pmq_ring_t *r, pmq_group_t *g, const uint32_t *slots, const uint64_t *seqs,
                  const uint32_t *attempts, uint32_t n, int *mark)
{
    uint64_t head = LOAD_ACQ(&g->pend_head);
    int k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (slots[i] >= r->pending_cap)
            continue;
        pmq_pending_t *e = entry(r, g, slots[i]);
        for (;;) {
            pmq_pending_word_t w = word_of(e), to = w;
            if (w.f.state == PMQ_PEND_FREE || LOAD_ACQ(&e->seq) != seqs[i])
                break; /* acked already, or the slot holds another record by now */
            if (attempts && (w.f.state != PMQ_PEND_INFLIGHT || w.f.attempts != attempts[i]))
                break;
            to = attempts ? requeued(g, w) : (pmq_pending_word_t){.bits = w.bits};
            if (!attempts)
                to.f.state = PMQ_PEND_FREE;
            if (entry_cas(e, seqs[i], w, to)) {
                k++;
                /* the floor moves only if the head was freed; counts change if
                 * what was READY or DEAD was acked, or anything was requeued */
                *mark |= attempts || slots[i] == slot_of(r, head) || w.f.state != PMQ_PEND_INFLIGHT;
                break;
            }
        }
    }
    return k;
}

/* Acks with the group's lock held: nothing claims, sweeps or reuses an entry
 * meanwhile, so an entry's seq stays put and one exchange of its state word
 * frees it (lock-free ackers and nackers still compare-and-swap seq and word
 * together: whoever comes second sees the word changed). How many were not
 * free yet; *counts set if one of them was READY or DEAD. */
static int free_locked(pmq_ring_t *r, pmq_group_t *g, const uint32_t *slots, const uint64_t *seqs,
                       uint32_t n, int *counts)
{
    int k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (slots[i] >= r->pending_cap)
            continue;
        pmq_pending_t *e = entry(r, g, slots[i]);
        pmq_pending_word_t w = word_of(e), freed = w;
        if (LOAD_RLX(&e->seq) != seqs[i] || w.f.state == PMQ_PEND_FREE)
            continue; /* another record's entry by now, or acked already */
        freed.f.state = PMQ_PEND_FREE;
        pmq_pending_word_t was = {.bits = __atomic_exchange_n(&e->w.bits, freed.bits,
                                                              __ATOMIC_ACQ_REL)};
        if (was.f.state != PMQ_PEND_FREE) {
            k++;
            *counts |= was.f.state != PMQ_PEND_INFLIGHT;
        }
    }
    return k;
}

int pmq_ack_ack(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                const uint64_t *seqs, uint32_t n, const pmq_hooks_t *hooks)
{
    (void)hooks; /* it never waits */
    if (!r || (n && (!slots || !seqs)))
        return PMQ_EINVAL;
    pmq_group_t *g = named(r, gi, gen);
    if (!g)
        return 0; /* the group went: nothing left to ack */
    if (group_trylock(r, g, 0) == 0) { /* the usual case: only the acker's own reads take it */
        int k = 0, counts = 0;
        if (g->gen == gen) {
            k = free_locked(r, g, slots, seqs, n, &counts);
            if (counts)
                recount(r, g);
            if (k)
                ADD_RLX(&g->acked, (uint64_t)k);
        }
        floor_then_unlock(r, g, 0);
        return k;
    }
    /* the lock is held (a member's claim, a sweep): no waiting for it */
    int mark = 0, k = change(r, g, slots, seqs, NULL, n, &mark);
    if (k)
        ADD_RLX(&g->acked, (uint64_t)k);
    if (mark)
        changed_without_lock(r, g, 0);
    return k;
}

int pmq_ack_nack(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                 const uint64_t *seqs, const uint32_t *attempts, uint32_t n,
                 const pmq_hooks_t *hooks)
{
    (void)hooks; /* it never waits */
    if (!r || (n && (!slots || !seqs || !attempts)))
        return PMQ_EINVAL;
    pmq_group_t *g = named(r, gi, gen);
    if (!g)
        return 0;
    int mark = 0, k = change(r, g, slots, seqs, attempts, n, &mark);
    if (k) {
        ADD_RLX(&g->nacked, (uint64_t)k);
        changed_without_lock(r, g, 1); /* a redelivery is waiting for a reader */
    }
    return k;
}

int pmq_ack_dead_lettered(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                          const uint64_t *seqs, uint32_t n)
{
    if (!r || gi >= r->max_groups || (n && (!slots || !seqs)))
        return PMQ_EINVAL;
    pmq_group_t *g = &r->groups[gi];
    int rc = group_lock(r, g, gen, NULL, 0, 0, NULL, NULL), k = 0;
    if (rc < 0)
        return rc == PMQ_GONE ? 0 : rc; /* the group went: nothing left to settle */
    uint64_t old_floor = g->floor;
    for (uint32_t i = 0; i < n; i++) {
        if (slots[i] >= r->pending_cap)
            continue;
        pmq_pending_t *e = entry(r, g, slots[i]);
        pmq_pending_word_t w = word_of(e), freed = w;
        freed.f.state = PMQ_PEND_FREE;
        if (w.f.state == PMQ_PEND_DEAD && e->seq == seqs[i] && entry_cas(e, seqs[i], w, freed)) {
            g->dead--;
            k++;
        }
    }
    g->dead_lettered += (uint64_t)k;
    advance_floor(r, g);
    group_unlock(r, g);
    after_change(r, g, old_floor, 0);
    return k;
}

/* ---- the supervisor's work: timeouts, members gone, groups going ------------------ */

/* Whether delivery word w of group gi is held by a member that is gone. */
static int orphaned(pmq_ring_t *r, uint32_t gi, const pmq_group_t *g, pmq_pending_word_t w)
{
    if (w.f.member >= r->max_members)
        return 1;
    const pmq_member_t *m = &r->members[w.f.member];
    return LOAD_ACQ(&m->state) != PMQ_SLOT_ACTIVE || (uint16_t)LOAD_RLX(&m->gen) != w.f.member_gen ||
           LOAD_RLX(&m->group) != gi || LOAD_RLX(&m->group_gen) != g->gen;
}

/* Lock held: requeue what timed out (now_ns >= 0) and what members that are
 * gone held; free the table of a DRAINING group. How many timed out. */
static int look_after(pmq_ring_t *r, uint32_t gi, pmq_group_t *g, int64_t now_ns, int *readers)
{
    int timed_out = 0;
    if (g->state == PMQ_SLOT_DRAINING) {
        g->drained = 1; /* whoever was inside has left: the table is nobody's now */
        return 0;
    }
    for (uint64_t n = g->pend_head; n < g->pend_tail; n++) {
        pmq_pending_t *e = entry(r, g, n);
        pmq_pending_word_t w = word_of(e);
        if (w.f.state != PMQ_PEND_INFLIGHT)
            continue;
        int late = now_ns >= 0 && e->deadline_ns <= now_ns;
        if ((late || orphaned(r, gi, g, w)) && requeue(g, e, w)) {
            timed_out += late;
            *readers = 1;
        }
    }
    g->timeouts += (uint64_t)timed_out;
    return timed_out;
}

/* A drained group's slot and table go back, under the segment's lock, if
 * that is free now (else the next sweep does it). */
static int free_drained(pmq_ring_t *r, pmq_group_t *g)
{
    if (LOAD_ACQ(&g->state) != PMQ_SLOT_DRAINING || !LOAD_ACQ(&g->drained))
        return 0;
    int rc = ring_trylock(r);
    if (rc < 0)
        return rc;
    if (g->state == PMQ_SLOT_DRAINING && g->drained) {
        if (g->ptable < r->max_ack_groups)
            r->hdr->ptables_used &= ~(1u << g->ptable);
        STORE_REL(&g->state, PMQ_SLOT_FREE);
        STORE_SC(&g->cursor, UINT64_MAX);
    }
    ring_unlock(r);
    return 0;
}

int pmq_ack_sweep(pmq_ring_t *r, int64_t now_ns, uint64_t *dead_groups, uint32_t *busy)
{
    if (!r || !dead_groups || !busy)
        return PMQ_EINVAL;
    int total = 0;
    *dead_groups = 0;
    *busy = 0;
    for (uint32_t gi = 0; gi < r->max_groups && gi < 64; gi++) {
        pmq_group_t *g = &r->groups[gi];
        if (!is_ack_group(r, g, 1))
            continue;
        int rc = group_trylock(r, g, 1), readers = 0;
        if (rc == PMQ_BUSY) {
            (*busy)++; /* held (by a stopped process, say): next sweep */
            continue;
        }
        if (rc == PMQ_GONE)
            continue;
        if (rc < 0)
            return rc;
        uint64_t old_floor = g->floor;
        total += look_after(r, gi, g, now_ns, &readers);
        advance_floor(r, g);
        if (g->state == PMQ_SLOT_ACTIVE && g->dead)
            *dead_groups |= 1ULL << gi;
        group_unlock(r, g);
        after_change(r, g, old_floor, readers);
        if ((rc = free_drained(r, g)) == PMQ_BUSY)
            (*busy)++;
        else if (rc < 0)
            return rc;
    }
    return total;
}

int pmq_ack_tidy(pmq_ring_t *r, uint32_t gi)
{
    if (!r || gi >= r->max_groups)
        return PMQ_EINVAL;
    pmq_group_t *g = &r->groups[gi];
    if (!is_ack_group(r, g, 1))
        return 0;
    int rc = group_trylock(r, g, 1), readers = 0;
    if (rc < 0)
        return rc == PMQ_GONE ? 0 : rc;
    uint64_t old_floor = g->floor;
    look_after(r, gi, g, -1, &readers);
    advance_floor(r, g);
    group_unlock(r, g);
    after_change(r, g, old_floor, readers);
    return free_drained(r, g);
}

int pmq_ack_take_dead(pmq_ring_t *r, uint32_t gi, pmq_batch_t *b, uint32_t max,
                      uint32_t *group_gen)
{
    if (!r || gi >= r->max_groups || !b || !b->slots || !b->attempts || !b->pos || !group_gen)
        return PMQ_EINVAL;
    pmq_group_t *g = &r->groups[gi];
    ring_batch_reset(b);
    int rc = group_lock(r, g, LOAD_RLX(&g->gen), NULL, 0, 0, NULL, NULL);
    if (rc < 0)
        return rc == PMQ_GONE ? 0 : rc;
    if (max > b->max)
        max = b->max;
    *group_gen = g->gen;
    uint64_t old_floor = g->floor;
    pmq_rec_t rec;
    for (uint64_t n = g->pend_head; n < g->pend_tail && g->dead && b->n < max; n++) {
        pmq_pending_t *e = entry(r, g, n);
        pmq_pending_word_t w = word_of(e), freed = w;
        if (w.f.state != PMQ_PEND_DEAD)
            continue;
        if (!entry_ok(r, g, e, &rec)) {
            ADD_RLX(&r->hdr->corrupt, 1);
            freed.f.state = PMQ_PEND_FREE;
            if (entry_cas(e, e->seq, w, freed))
                g->dead--;
            continue;
        }
        if (!ring_batch_add(r, e->pos, &rec, b))
            break;
        b->slots[b->n - 1] = slot_of(r, n);
        b->attempts[b->n - 1] = w.f.attempts;
    }
    rc = ring_hand_over(r, b, NULL);
    advance_floor(r, g); /* past entries freed as corrupt */
    group_unlock(r, g);
    after_change(r, g, old_floor, 0);
    return rc < 0 ? rc : (int)b->n;
}

/* ---- durable positions (durable.c) ------------------------------------------------ */

int ack_window(pmq_ring_t *r, pmq_group_t *g, uint64_t *first_seq, uint64_t *acked, uint32_t max,
               uint64_t *cursor)
{
    int rc = group_lock(r, g, g->gen, NULL, 0, 0, NULL, NULL);
    if (rc < 0)
        return rc;
    uint32_t k = 0;
    *cursor = g->cursor;
    *first_seq = 0;
    for (uint64_t n = g->pend_head; n < g->pend_tail; n++) {
        pmq_pending_t *e = entry(r, g, n);
        uint8_t st = word_of(e).f.state;
        if (st != PMQ_PEND_FREE && !*first_seq)
            *first_seq = e->seq;
        else if (st == PMQ_PEND_FREE && *first_seq && k < max)
            acked[k++] = e->seq;
    }
    group_unlock(r, g);
    return (int)k;
}

int ack_restore_window(pmq_ring_t *r, pmq_group_t *g, const uint64_t *acked, uint32_t n)
{
    uint64_t tail = r->hdr->tail, cur = g->cursor;
    uint32_t k = 0;
    pmq_rec_t rec;
    while (cur < tail && k < n) { /* up to the last acked record: the rest is new */
        uint64_t size = ring_record(r, cur, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA) {
            while (k < n && acked[k] < rec.seq)
                k++; /* an acked seq no longer in the ring */
            if (k == n)
                break;
            if (g->pend_tail - g->pend_head >= r->pending_cap)
                return PMQ_ENOSLOT;
            pmq_pending_t *e = entry(r, g, g->pend_tail);
            e->pos = cur;
            e->seq = rec.seq;
            e->deadline_ns = 0;
            /* delivered before the restart: redelivered as attempt 2, to nobody yet */
            pmq_pending_word_t w = {.f = {.member = 0xFFFF, .attempts = 1}};
            if (acked[k] == rec.seq) {
                w.f.state = PMQ_PEND_FREE;
                k++;
            } else {
                w.f.state = PMQ_PEND_READY;
                g->ready++;
            }
            e->w = w;
            g->pend_tail++;
        }
        cur += size;
    }
    g->cursor = cur;
    advance_floor(r, g);
    return 0;
}
