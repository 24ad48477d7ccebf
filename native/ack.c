/*
 * ack.c - at-least-once delivery: the pending tables of ack groups.
 *
 * An ack group's members take the group's own robust mutex to claim records
 * (redeliveries first, then new records while the window has room) and to
 * ack and nack them; the supervisor takes it to sweep for timeouts and to
 * dead-letter. Publishers never take it: they gate on the group's floor, the
 * position of its oldest pending delivery, stored after every change.
 *
 * A claim commits in this order: the entry's fields, its state, pend_tail,
 * then the cursor. A holder that dies part-way leaves at most entries past
 * the cursor, which group_recover turns into a consistent window. Lock order:
 * the ring's mutex before a group's, never the other way round.
 */
#define _GNU_SOURCE
#include "pmq_sync.h"
#include "ring_internal.h"

#include <errno.h>

#define ACK_LOCK_NS (10LL * 1000000000LL) /* as for the ring's admin lock */

static pmq_pending_t *entry(pmq_ring_t *r, const pmq_group_t *g, uint64_t n)
{
    return r->pending + (uint64_t)g->ptable * r->pending_cap + (n & (r->pending_cap - 1));
}

static uint32_t slot_of(const pmq_ring_t *r, uint64_t n) { return (uint32_t)(n & (r->pending_cap - 1)); }

static int is_ack_group(const pmq_ring_t *r, const pmq_group_t *g)
{
    return LOAD_ACQ(&g->state) == PMQ_SLOT_ACTIVE && (g->flags & PMQ_GROUP_ACK) &&
           g->ptable < r->max_ack_groups;
}

/* The window's invariants, checked on every lock: head <= floor <= cursor <= tail
 * and at most pending_cap claims in flight. */
static int window_ok(const pmq_ring_t *r, const pmq_group_t *g)
{
    uint64_t head = __atomic_load_n(&r->hdr->head, __ATOMIC_RELAXED);
    return g->ptable < r->max_ack_groups && g->pend_head <= g->pend_tail &&
           g->pend_tail - g->pend_head <= r->pending_cap && head <= g->floor &&
           g->floor <= g->cursor && g->cursor <= LOAD_ACQ(&r->hdr->tail);
}

/* Drop acked entries off the window's head and store the new floor (seq_cst:
 * publishers waiting for space load it in their re-check). */
static void advance_floor(pmq_ring_t *r, pmq_group_t *g)
{
    while (g->pend_head < g->pend_tail && entry(r, g, g->pend_head)->state == PMQ_PEND_FREE)
        g->pend_head++;
    uint64_t floor = g->pend_head < g->pend_tail ? entry(r, g, g->pend_head)->pos : g->cursor;
    if (floor < g->floor || floor > g->cursor) /* a scribbled entry: never move backwards */
        floor = floor < g->floor ? g->floor : g->cursor;
    STORE_SC(&g->floor, floor);
}

/* Count ready and dead entries again and repair the cursor after a holder of
 * the group's lock died (EOWNERDEAD). Lock held. */
static int group_recover(pmq_ring_t *r, pmq_group_t *g)
{
    ADD_RLX(&r->hdr->recoveries, 1);
    if (g->ptable >= r->max_ack_groups || g->pend_head > g->pend_tail ||
        g->pend_tail - g->pend_head > r->pending_cap)
        return PMQ_ECORRUPT;
    if (g->pend_tail > g->pend_head) {
        pmq_pending_t *last = entry(r, g, g->pend_tail - 1);
        pmq_rec_t rec;
        if (last->state != PMQ_PEND_FREE && last->pos >= g->cursor) { /* died before the cursor store */
            uint64_t size = rec_check(r, last->pos, LOAD_ACQ(&r->hdr->tail), &rec);
            if (size == 0)
                return PMQ_ECORRUPT;
            STORE_REL(&g->cursor, skip_gap(r, last->pos + size));
        }
    }
    g->ready = g->dead = 0;
    for (uint64_t n = g->pend_head; n < g->pend_tail; n++) {
        uint32_t st = entry(r, g, n)->state;
        g->ready += st == PMQ_PEND_READY;
        g->dead += st == PMQ_PEND_DEAD;
    }
    advance_floor(r, g);
    return 0;
}

/* Lock group g, which must still be the ack group of generation gen (and,
 * when m is given, m must still be its member): else PMQ_GONE, unlocked. The
 * identity is checked before the window, so a group freed meanwhile (under its
 * lock, see pmq_ack_group_free) is "gone", not "corrupt". */
static int group_lock(pmq_ring_t *r, pmq_group_t *g, uint32_t gen, pmq_member_t *m, uint32_t mgen,
                      int64_t *blocked_since)
{
    int rc = pmq_mutex_lock(&g->lock, ACK_LOCK_NS, blocked_since);
    if (rc == EOWNERDEAD) {
        rc = group_recover(r, g);
        pthread_mutex_consistent(&g->lock);
    } else if (rc == -ENOTRECOVERABLE) {
        rc = PMQ_ECORRUPT;
        ADD_RLX(&r->hdr->corrupt, 1);
        return rc;
    } else if (rc < 0) {
        return rc;
    }
    if (rc == 0 && (!is_ack_group(r, g) || g->gen != gen))
        rc = PMQ_GONE;
    if (rc == 0 && m && pmq_member_group(r, m, mgen, &rc) != g)
        rc = rc < 0 ? rc : PMQ_GONE;
    if (rc == 0 && !window_ok(r, g)) {
        rc = PMQ_ECORRUPT;
        ADD_RLX(&r->hdr->corrupt, 1);
    }
    if (rc < 0)
        pthread_mutex_unlock(&g->lock);
    return rc;
}

/* Lock a group named by index and generation, as acks name it. NULL and *rc
 * = PMQ_GONE when it is not that ack group any more. */
static pmq_group_t *lock_named(pmq_ring_t *r, uint32_t gi, uint32_t gen, int *rc)
{
    if (gi >= r->max_groups) {
        *rc = PMQ_EINVAL;
        return NULL;
    }
    pmq_group_t *g = &r->groups[gi];
    *rc = PMQ_GONE;
    if (!is_ack_group(r, g) || g->gen != gen)
        return NULL;
    *rc = group_lock(r, g, gen, NULL, 0, NULL);
    return *rc < 0 ? NULL : g;
}

/* After a change under the group's lock: wake readers if deliveries became
 * ready or the window opened, publishers if the floor passed their target. */
static void after_change(pmq_ring_t *r, pmq_group_t *g, uint64_t old_floor, int readers)
{
    pmq_ring_hdr_t *h = r->hdr;
    if (readers)
        wake_if_waiting(&h->data_seq, &h->data_waiters);
    if (LOAD_SC(&g->floor) != old_floor && LOAD_SC(&g->floor) >= LOAD_SC(&h->space_target))
        wake_if_waiting(&h->space_seq, &h->space_waiters);
}

/* ---- claiming --------------------------------------------------------------- */

/* Copy a pending entry's record into the batch after checking that the entry
 * names a whole record of its seq inside the window. 1 added, 0 no room in the
 * batch, PMQ_ECORRUPT for an entry that names no such record. */
static int take_entry(pmq_ring_t *r, pmq_group_t *g, pmq_pending_t *e, uint64_t n, pmq_batch_t *b)
{
    pmq_rec_t rec;
    if (e->pos < g->floor || e->pos >= g->cursor || !rec_check(r, e->pos, g->cursor, &rec) ||
        rec.type != PMQ_REC_DATA || rec.seq != e->seq)
        return PMQ_ECORRUPT;
    if (!pmq_batch_add(r, e->pos, &rec, b))
        return 0;
    b->slots[b->n - 1] = slot_of(r, n);
    b->attempts[b->n - 1] = e->attempts + 1u;
    return 1;
}

/* Deliveries waiting for another try go first, to this member. */
static int redeliver(pmq_ring_t *r, pmq_group_t *g, uint32_t mi, pmq_batch_t *b,
                     uint32_t max, int64_t deadline)
{
    for (uint64_t n = g->pend_head; n < g->pend_tail && g->ready && b->n < max; n++) {
        pmq_pending_t *e = entry(r, g, n);
        if (e->state != PMQ_PEND_READY)
            continue;
        int rc = take_entry(r, g, e, n, b);
        if (rc == 0)
            break;
        g->ready--;
        if (rc < 0) { /* a scribbled entry: drop it, counted, rather than wedge the group */
            ADD_RLX(&r->hdr->corrupt, 1);
            e->state = PMQ_PEND_FREE;
            continue;
        }
        e->member = (uint16_t)mi;
        e->attempts++;
        e->deadline_ns = deadline;
        e->state = PMQ_PEND_INFLIGHT;
        g->redelivered++;
    }
    return 0;
}

/* New records from the cursor, while the window has room. */
static int claim_new(pmq_ring_t *r, pmq_group_t *g, uint32_t mi, pmq_batch_t *b,
                     uint32_t max, int64_t deadline, uint64_t tail)
{
    uint64_t cur = g->cursor;
    pmq_rec_t rec;
    while (b->n < max && cur < tail && g->pend_tail - g->pend_head < r->pending_cap) {
        uint64_t size = rec_check(r, cur, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA) {
            if (!pmq_batch_add(r, cur, &rec, b))
                return b->n ? 0 : PMQ_EBUFSMALL;
            pmq_pending_t *e = entry(r, g, g->pend_tail);
            e->pos = cur;
            e->seq = rec.seq;
            e->deadline_ns = deadline;
            e->member = (uint16_t)mi;
            e->attempts = 1;
            STORE_REL(&e->state, PMQ_PEND_INFLIGHT);
            b->slots[b->n - 1] = slot_of(r, g->pend_tail);
            b->attempts[b->n - 1] = 1;
            STORE_REL(&g->pend_tail, g->pend_tail + 1);
        }
        cur = skip_gap(r, cur + size);
        STORE_REL(&g->cursor, cur);
    }
    return 0;
}

int pmq_ack_read(pmq_ring_t *r, pmq_member_t *m, uint32_t mi, pmq_group_t *g, uint32_t gen,
                 pmq_batch_t *b, uint32_t max, pmq_ack_snap_t *snap)
{
    if (!b->pos || !b->slots || !b->attempts)
        return PMQ_EINVAL;
    int rc = group_lock(r, g, g->gen, m, gen, &snap->blocked_since); /* left, reaped or freed while we waited: GONE */
    if (rc < 0)
        return rc;
    uint64_t tail = LOAD_ACQ(&r->hdr->tail), old_floor = g->floor;
    int64_t deadline = pmq_deadline_after(pmq_now_mono(), g->ack_timeout_ns);
    b->n = 0;
    b->used = b->bytes = 0;
    rc = redeliver(r, g, mi, b, max, deadline);
    if (rc == 0)
        rc = claim_new(r, g, mi, b, max, deadline, tail);
    advance_floor(r, g);
    snap->tail = tail;
    snap->ready = g->ready;
    snap->pend_head = g->pend_head;
    if (b->n) {
        ADD_RLX(&g->delivered, b->n);
        ADD_RLX(&g->delivered_bytes, b->bytes);
        ADD_RLX(&m->delivered, b->n);
    }
    pthread_mutex_unlock(&g->lock);
    after_change(r, g, old_floor, 0);
    if (rc == PMQ_ECORRUPT)
        ADD_RLX(&r->hdr->corrupt, 1);
    return rc < 0 && b->n == 0 ? rc : (int)b->n;
}

/* ---- acks, nacks, timeouts ------------------------------------------------ */

/* An entry out of the member's hands: try again, or dead-letter when out of retries. */
static void requeue(pmq_group_t *g, pmq_pending_t *e)
{
    if (e->attempts >= 1u + g->max_retries) {
        e->state = PMQ_PEND_DEAD;
        g->dead++;
    } else {
        e->state = PMQ_PEND_READY;
        g->ready++;
    }
}

static void free_entry(pmq_group_t *g, pmq_pending_t *e)
{
    g->ready -= e->state == PMQ_PEND_READY && g->ready;
    g->dead -= e->state == PMQ_PEND_DEAD && g->dead;
    STORE_REL(&e->state, PMQ_PEND_FREE);
}

enum settle { SETTLE_ACK, SETTLE_NACK, SETTLE_DEAD_LETTERED };

/* Apply acks, nacks or dead-letter confirmations named by (slot, seq). A nack
 * also names the delivery attempt: a stale nack, from a member the delivery
 * was taken from (timeout, or its own earlier nack), must not requeue it
 * under its new holder. An ack of any attempt counts: the work was done. */
static int settle(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                  const uint64_t *seqs, const uint32_t *attempts, uint32_t n, enum settle how)
{
    if (!r || (n && (!slots || !seqs || (how == SETTLE_NACK && !attempts))))
        return PMQ_EINVAL;
    int rc, k = 0;
    pmq_group_t *g = lock_named(r, gi, gen, &rc);
    if (!g)
        return rc == PMQ_GONE ? 0 : rc; /* the group went: nothing left to settle */
    uint64_t old_floor = g->floor, old_head = g->pend_head;
    int was_full = g->pend_tail - g->pend_head == r->pending_cap, readers = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (slots[i] >= r->pending_cap)
            continue;
        pmq_pending_t *e = r->pending + (uint64_t)g->ptable * r->pending_cap + slots[i];
        if (e->state == PMQ_PEND_FREE || e->seq != seqs[i])
            continue; /* acked already, or the slot holds another record by now */
        if (how == SETTLE_NACK) {
            if (e->state != PMQ_PEND_INFLIGHT || !attempts || e->attempts != attempts[i])
                continue;
            requeue(g, e);
            readers = 1;
        } else if (how == SETTLE_DEAD_LETTERED) {
            if (e->state != PMQ_PEND_DEAD)
                continue;
            free_entry(g, e);
        } else {
            free_entry(g, e);
        }
        k++;
    }
    if (how == SETTLE_ACK)
        g->acked += (uint64_t)k;
    else if (how == SETTLE_NACK)
        g->nacked += (uint64_t)k;
    else
        g->dead_lettered += (uint64_t)k;
    advance_floor(r, g);
    readers |= was_full && g->pend_head != old_head;
    pthread_mutex_unlock(&g->lock);
    after_change(r, g, old_floor, readers);
    return k;
}

int pmq_group_ack(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                  const uint64_t *seqs, uint32_t n)
{
    return settle(r, gi, gen, slots, seqs, NULL, n, SETTLE_ACK);
}

int pmq_group_ack1(pmq_ring_t *r, uint32_t gi, uint32_t gen, uint32_t slot, uint64_t seq)
{
    return settle(r, gi, gen, &slot, &seq, NULL, 1, SETTLE_ACK);
}

int pmq_group_nack(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                   const uint64_t *seqs, const uint32_t *attempts, uint32_t n)
{
    return settle(r, gi, gen, slots, seqs, attempts, n, SETTLE_NACK);
}

int pmq_group_dead_lettered(pmq_ring_t *r, uint32_t gi, uint32_t gen, const uint32_t *slots,
                            const uint64_t *seqs, uint32_t n)
{
    return settle(r, gi, gen, slots, seqs, NULL, n, SETTLE_DEAD_LETTERED);
}

int pmq_group_sweep(pmq_ring_t *r, uint32_t gi, int64_t now_ns)
{
    if (!r || gi >= r->max_groups)
        return PMQ_EINVAL;
    int rc, k = 0;
    pmq_group_t *g = lock_named(r, gi, r->groups[gi].gen, &rc);
    if (!g)
        return rc == PMQ_GONE ? 0 : rc;
    for (uint64_t n = g->pend_head; n < g->pend_tail; n++) {
        pmq_pending_t *e = entry(r, g, n);
        if (e->state == PMQ_PEND_INFLIGHT && e->deadline_ns <= now_ns) {
            requeue(g, e);
            k++;
        }
    }
    g->timeouts += (uint64_t)k;
    uint64_t floor = g->floor;
    pthread_mutex_unlock(&g->lock);
    after_change(r, g, floor, k > 0);
    return k;
}

int pmq_ring_sweep(pmq_ring_t *r, int64_t now_ns, uint64_t *dead_groups)
{
    if (!r || !dead_groups)
        return PMQ_EINVAL;
    int total = 0;
    *dead_groups = 0;
    for (uint32_t gi = 0; gi < r->max_groups && gi < 64; gi++) {
        if (!is_ack_group(r, &r->groups[gi]))
            continue;
        int k = pmq_group_sweep(r, gi, now_ns);
        if (k < 0 && k != PMQ_GONE)
            return k;
        total += k > 0 ? k : 0;
        if (__atomic_load_n(&r->groups[gi].dead, __ATOMIC_RELAXED))
            *dead_groups |= 1ULL << gi;
    }
    return total;
}

int pmq_group_take_dead(pmq_ring_t *r, uint32_t gi, pmq_batch_t *b, uint32_t max,
                        uint32_t *group_gen)
{
    if (!r || gi >= r->max_groups || !b || !b->slots || !b->attempts || !b->pos || !group_gen)
        return PMQ_EINVAL;
    int rc;
    pmq_group_t *g = lock_named(r, gi, r->groups[gi].gen, &rc);
    b->n = 0;
    b->used = b->bytes = 0;
    if (!g)
        return rc == PMQ_GONE ? 0 : rc;
    if (max > b->max)
        max = b->max;
    *group_gen = g->gen;
    for (uint64_t n = g->pend_head; n < g->pend_tail && g->dead && b->n < max; n++) {
        pmq_pending_t *e = entry(r, g, n);
        if (e->state != PMQ_PEND_DEAD)
            continue;
        rc = take_entry(r, g, e, n, b);
        if (rc == 0)
            break;
        if (rc < 0) {
            ADD_RLX(&r->hdr->corrupt, 1);
            free_entry(g, e);
            continue;
        }
        b->attempts[b->n - 1] = e->attempts;
    }
    uint64_t old_floor = g->floor;
    advance_floor(r, g); /* past entries freed as corrupt */
    pthread_mutex_unlock(&g->lock);
    after_change(r, g, old_floor, 0);
    return (int)b->n;
}

/* ---- durable positions (persistence) -------------------------------------- */

int pmq_ack_window(pmq_ring_t *r, pmq_group_t *g, uint64_t *first_seq, uint64_t *acked,
                   uint32_t max)
{
    int rc = group_lock(r, g, g->gen, NULL, 0, NULL);
    if (rc < 0)
        return rc;
    uint32_t k = 0;
    *first_seq = g->pend_head < g->pend_tail ? entry(r, g, g->pend_head)->seq : 0;
    for (uint64_t n = g->pend_head; n < g->pend_tail && k < max; n++) {
        pmq_pending_t *e = entry(r, g, n);
        if (e->state == PMQ_PEND_FREE)
            acked[k++] = e->seq;
    }
    pthread_mutex_unlock(&g->lock);
    return (int)k;
}

int pmq_ack_restore_window(pmq_ring_t *r, pmq_group_t *g, const uint64_t *acked, uint32_t n)
{
    uint64_t tail = r->hdr->tail, cur = g->cursor;
    uint32_t k = 0;
    pmq_rec_t rec;
    while (cur < tail && k < n) { /* up to the last acked record: the rest is new */
        uint64_t size = rec_check(r, cur, tail, &rec);
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
            e->member = 0xFFFF;
            e->attempts = 1; /* delivered before the restart: redelivered as attempt 2 */
            if (acked[k] == rec.seq) {
                e->state = PMQ_PEND_FREE;
                k++;
            } else {
                e->state = PMQ_PEND_READY;
                g->ready++;
            }
            g->pend_tail++;
        }
        cur = skip_gap(r, cur + size);
    }
    g->cursor = cur;
    advance_floor(r, g);
    return 0;
}

/* ---- group lifetime (ring mutex held) ------------------------------------- */

int pmq_ack_group_init(pmq_ring_t *r, pmq_group_t *g, int64_t ack_timeout_ns, uint32_t max_retries)
{
    uint32_t used = r->hdr->ptables_used, t = 0;
    while (t < r->max_ack_groups && (used & (1u << t)))
        t++;
    if (t >= r->max_ack_groups)
        return PMQ_ENOSLOT;
    r->hdr->ptables_used = used | (1u << t);
    g->ptable = t;
    g->pend_head = g->pend_tail = 0;
    g->floor = g->cursor;
    g->ready = g->dead = 0;
    g->ack_timeout_ns = ack_timeout_ns;
    g->max_retries = max_retries;
    g->acked = g->nacked = g->redelivered = g->dead_lettered = g->timeouts = 0;
    return 0;
}

int pmq_ack_group_free(pmq_ring_t *r, pmq_group_t *g)
{
    /* Under the group's lock: whoever held it to work on this group finishes
     * first, and whoever takes it next finds the group gone (group_lock), so
     * nobody writes to the table after it goes to another group. */
    int rc = group_lock(r, g, g->gen, NULL, 0, NULL);
    if (rc < 0 && rc != PMQ_ECORRUPT)
        return rc; /* not freed: the caller keeps the table out of use */
    STORE_REL(&g->state, PMQ_SLOT_FREE);
    if (g->ptable < r->max_ack_groups)
        r->hdr->ptables_used &= ~(1u << g->ptable);
    if (rc == 0)
        pthread_mutex_unlock(&g->lock);
    return 0;
}

void pmq_ack_member_gone(pmq_ring_t *r, pmq_group_t *g, uint32_t mi)
{
    if (!(g->flags & PMQ_GROUP_ACK) || group_lock(r, g, g->gen, NULL, 0, NULL) < 0)
        return;
    int k = 0;
    for (uint64_t n = g->pend_head; n < g->pend_tail; n++) {
        pmq_pending_t *e = entry(r, g, n);
        if (e->state == PMQ_PEND_INFLIGHT && e->member == mi) {
            requeue(g, e);
            k++;
        }
    }
    pthread_mutex_unlock(&g->lock);
    if (k)
        wake_if_waiting(&r->hdr->data_seq, &r->hdr->data_waiters);
}

void pmq_ack_figures(pmq_ring_t *r, const pmq_group_t *g, pmq_group_stats_t *o)
{
    if (!(g->flags & PMQ_GROUP_ACK) || g->ptable >= r->max_ack_groups)
        return;
    o->acked = g->acked;
    o->nacked = g->nacked;
    o->redelivered = g->redelivered;
    o->dead_lettered = g->dead_lettered;
    o->timeouts = g->timeouts;
    o->ready = g->ready;
    o->dead = g->dead;
    o->max_retries = g->max_retries;
    uint64_t head = g->pend_head, tail = g->pend_tail;
    if (head <= tail && tail - head <= r->pending_cap) /* read without the group's lock */
        for (uint64_t n = head; n < tail; n++)
            o->pending += entry(r, g, n)->state != PMQ_PEND_FREE;
}
