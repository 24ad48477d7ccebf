/*
 * member.c - what a subscription does: join a group, read (the one read of
 * both kinds of group, and its waits), leave; and the reaping of a dead
 * process's subscriptions. The top layer: it puts the ring's claim (ring.c),
 * the member table (group.c) and the pending tables (ack.c) together.
 */
#define _GNU_SOURCE
#include "ack_internal.h"

#include <errno.h>

int pmq_member_join(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                    uint64_t start_seq, uint64_t owner, int32_t pid, int64_t ack_timeout_ns,
                    uint32_t max_retries, pmq_join_t *out)
{
    if (!r || !group_name_ok(name) || !out || (flags & ~PMQ_GROUP_ACK) ||
        start < PMQ_START_LATEST || start > PMQ_START_SEQ || ack_timeout_ns < 0 ||
        max_retries > PMQ_MAX_RETRIES)
        return PMQ_EINVAL;
    if (!name[0])
        flags |= PMQ_GROUP_ANON;
    int rc = ring_lock_admin(r), created = 0;
    if (rc < 0)
        return rc;
    PMQ_TEST_POINT("member.locked");
    int mi = group_free_member_slot(r); /* before the group: a join that fails makes none */
    int gi = mi < 0 ? PMQ_ENOSLOT
             : group_join(r, name, flags, start, start_seq, ack_timeout_ns, max_retries, &created);
    if (gi >= 0) {
        group_add_member(r, (uint32_t)gi, (uint32_t)mi, owner, pid, out);
        out->created = (uint32_t)created;
    }
    ring_unlock(r);
    return gi < 0 ? gi : 0;
}

/* ---- waiting for something to read ------------------------------------------------ */

/* Longest single sleep of a reader: a publisher killed between its commit and
 * its wake-up costs a sleeping reader at most this much. */
#define PMQ_READ_SLICE_NS (1000LL * 1000000LL)

/* How long a reader that finds nothing polls tail before it sleeps. A reader
 * that keeps up with a steady stream then gets the next record without a
 * system call on either side (no sleep, so no wake); an idle one pays this
 * once per wait (a few microseconds of CPU per second of idleness). */
#define PMQ_SPIN_NS (20LL * 1000)

/* Poll tail for up to PMQ_SPIN_NS (not past the deadline): 1 if it moved. */
static int spin_for_tail(pmq_ring_hdr_t *h, uint64_t tail, pmq_deadline_t *d,
                         const pmq_hooks_t *hooks)
{
    int64_t left = pmq_deadline_left(d), until = pmq_sync_now() + PMQ_SPIN_NS;
    if (left >= 0 && left < PMQ_SPIN_NS)
        until -= PMQ_SPIN_NS - left;
    int moved = 0;
    pmq_sync_block(hooks);
    for (uint32_t i = 1; !moved; i++) {
        moved = LOAD_ACQ(&h->tail) != tail;
        pmq_sync_relax();
        if ((i & 63) == 0 && pmq_sync_now() >= until)
            break;
    }
    pmq_sync_unblock(hooks);
    return moved;
}

/* Sleep on the readers' word, at most PMQ_READ_SLICE_NS at a time: 0 (look
 * again), PMQ_EMPTY past the deadline, or PMQ_EINTR. */
static int sleep_on_data(pmq_ring_hdr_t *h, uint32_t seen, pmq_deadline_t *d,
                         const pmq_hooks_t *hooks)
{
    int64_t left = pmq_deadline_left(d);
    if (left == 0)
        return PMQ_EMPTY;
    if (left < 0 || left > PMQ_READ_SLICE_NS)
        left = PMQ_READ_SLICE_NS;
    pmq_sync_block(hooks);
    int rc = pmq_sync_wait(&h->data_seq, seen, left);
    pmq_sync_unblock(hooks);
    return rc == PMQ_EINTR ? rc : 0; /* woken, spurious or timed out: the caller looks again */
}

/* What a reader saw when it found nothing: a waker changes one of these. */
typedef struct seen {
    uint64_t tail, cursor, pend_head;
    uint32_t ready;
} seen_t;

/* Sleep until something a read waits for changed, the member goes, the
 * deadline passes or someone wakes us. Everything the waker might have
 * changed is looked at again after the flag is stored: tail, the cursor (a
 * plain group) or the READY count and the window (an ack group), closed, and
 * membership (a leave bumps the word after freeing the slot). */
static int wait_for_data(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, pmq_group_t *g, int ack,
                         const seen_t *was, pmq_deadline_t *d, const pmq_hooks_t *hooks)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t word = LOAD_ACQ(&h->data_seq);
    STORE_SC(&h->data_waiters, 1);
    int rc = 0;
    int changed = LOAD_SC(&h->tail) != was->tail || LOAD_SC(&h->closed) ||
                  ring_member_group(r, m, gen, &rc) != g ||
                  (ack ? LOAD_SC(&g->ready) != was->ready || LOAD_SC(&g->pend_head) != was->pend_head ||
                             LOAD_SC(&g->stale) /* an ack or nack changed it without the lock */
                       : LOAD_SC(&g->cursor) != was->cursor);
    return changed ? 0 : sleep_on_data(h, word, d, hooks);
}

/* ---- the read ------------------------------------------------------------------------ */

int pmq_member_read(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                    uint32_t max_count, pmq_deadline_t *d, const pmq_sink_t *sink,
                    const pmq_hooks_t *hooks)
{
    if (!r || member >= r->max_members || !b || max_count == 0 || !b->offs || !b->lens ||
        !b->seqs || !b->ts || !d)
        return PMQ_EINVAL;
    if (max_count > b->max)
        max_count = b->max;
    if (max_count > INT32_MAX)
        max_count = INT32_MAX; /* the count is returned as an int */
    pmq_member_t *m = &r->members[member];
    int spun = 0;
    for (;;) {
        int rc = 0;
        pmq_group_t *g = ring_member_group(r, m, gen, &rc);
        if (!g)
            return rc;
        int ack = (LOAD_RLX(&g->flags) & PMQ_GROUP_ACK) != 0; /* once: it never changes */
        if (b->kind && b->kind != (ack ? PMQ_KIND_ACK : PMQ_KIND_PLAIN)) {
            ADD_RLX(&r->hdr->corrupt, 1);
            return PMQ_ECORRUPT; /* the group's flags were scribbled since the join */
        }
        seen_t was = {0};
        if (ack) {
            ack_snap_t snap;
            rc = ack_take(r, m, member, gen, g, b, max_count, sink, d, hooks, &snap);
            was = (seen_t){.tail = snap.tail, .pend_head = snap.pend_head, .ready = snap.ready};
        } else if (!b->buf && !(sink && sink->copy)) {
            return PMQ_EINVAL; /* a plain group's records may go once read: they must be copied */
        } else {
            rc = ring_take(r, g, LOAD_RLX(&m->group_gen), b, max_count, sink, &was.cursor, &was.tail);
            if (rc > 0)
                ADD_RLX(&m->delivered, (uint64_t)rc);
        }
        if (rc == PMQ_RETRY)
            continue;
        if (rc != 0)
            return rc;
        if ((rc = ring_closed(r)) != 0)
            return rc;
        if (d->timeout_ns == 0)
            return PMQ_EMPTY;
        /* The first time it finds nothing the deadline starts (if waiting for
         * a group's lock has not started it), and it polls a while first. */
        if (!spun++ && spin_for_tail(r->hdr, was.tail, d, hooks))
            continue;
        rc = wait_for_data(r, m, gen, g, ack, &was, d, hooks);
        if (rc < 0)
            return rc;
    }
}

/* ---- leaving and reaping ------------------------------------------------------------- */

int pmq_member_leave(pmq_ring_t *r, uint32_t member, uint32_t gen, int64_t timeout_ns)
{
    if (!r || member >= r->max_members)
        return PMQ_EINVAL;
    int rc = ring_lock_for(r, timeout_ns < 0 ? PMQ_ADMIN_LOCK_NS : timeout_ns), gi = -1;
    if (rc < 0)
        return rc;
    PMQ_TEST_POINT("member.locked");
    pmq_member_t *m = &r->members[member];
    if (m->state == PMQ_SLOT_ACTIVE && m->gen == gen)
        gi = group_remove_member(r, m);
    else
        rc = PMQ_GONE;
    ring_unlock(r);
    ring_wake_all(r); /* a reader blocked on this member returns PMQ_GONE */
    if (gi >= 0)
        pmq_ack_tidy(r, (uint32_t)gi); /* its deliveries to the others now (or at the next sweep) */
    return rc;
}

int pmq_member_reap(pmq_ring_t *r, uint64_t owner)
{
    if (!r)
        return PMQ_EINVAL;
    int rc = ring_lock_for(r, PMQ_SWEEP_LOCK_NS), n = 0; /* the supervisor's: never long */
    if (rc < 0)
        return rc;
    uint64_t acks = 0;
    for (uint32_t i = 0; i < r->max_members; i++) {
        pmq_member_t *m = &r->members[i];
        if (m->state == PMQ_SLOT_ACTIVE && m->owner == owner) {
            pmq_ring_hdr_t *h = r->hdr; /* the note first: a death in between is repaired */
            h->reap_before = h->reaped_members;
            STORE_REL(&h->reap_slot, i + 1);
            int gi = group_remove_member(r, m);
            PMQ_TEST_POINT("member.reaping");
            STORE_REL(&h->reaped_members, h->reap_before + 1);
            STORE_REL(&h->reap_slot, 0);
            if (gi >= 0 && gi < 64)
                acks |= 1ULL << gi;
            n++;
        }
    }
    ring_unlock(r);
    if (n)
        ring_wake_all(r);
    for (uint32_t gi = 0; gi < 64 && acks; gi++)
        if (acks & (1ULL << gi))
            pmq_ack_tidy(r, gi); /* or, if its lock is held now, the next sweep */
    return n;
}

int pmq_member_info(pmq_ring_t *r, uint32_t i, uint64_t *owner, uint32_t *group, int32_t *pid)
{
    if (!r || i >= r->max_members || !owner || !group || !pid)
        return PMQ_EINVAL;
    pmq_member_t *m = &r->members[i];
    if (LOAD_ACQ(&m->state) != PMQ_SLOT_ACTIVE)
        return 0;
    *owner = m->owner;
    *group = m->group;
    *pid = m->pid;
    return 1;
}
