/*
 * durable.c - groups as persistence records them and a restart makes them
 * again: a group's position (and an ack group's acks beyond it), and a group
 * restored where it was. Built on group.c (slots, seeking) and ack.c (windows).
 */
#define _GNU_SOURCE
#include "ack_internal.h"

int pmq_durable_position(pmq_ring_t *r, uint32_t gi, uint64_t *position, uint64_t *acked,
                         uint32_t max)
{
    if (!r || gi >= r->max_groups || !position || (max && !acked))
        return PMQ_EINVAL;
    pmq_group_t *g = &r->groups[gi];
    if (LOAD_ACQ(&g->state) != PMQ_SLOT_ACTIVE)
        return PMQ_GONE;
    if (g->flags & PMQ_GROUP_ACK) {
        /* Under the group's lock alone: its cursor moves only there, and the
         * floor keeps the records from the cursor on in the ring. */
        uint64_t first = 0, cursor, at;
        int n = ack_window(r, g, &first, acked, max, &cursor);
        if (n < 0)
            return n;
        int rc = first ? 0 : group_seek(r, cursor, 0, &at, &first);
        /* the oldest delivery not yet acked, or the next to deliver (not one passed over) */
        uint64_t from = LOAD_RLX(&g->from_seq);
        *position = first > from ? first : from;
        return rc < 0 ? rc : n;
    }
    int rc = ring_lock_for(r, PMQ_SWEEP_LOCK_NS); /* the cursor stands still enough: head cannot pass it */
    if (rc < 0)
        return rc;
    uint64_t at, cur = LOAD_ACQ(&g->cursor);
    if (g->state != PMQ_SLOT_ACTIVE)
        rc = PMQ_GONE;
    else if (cur < r->hdr->head || cur > r->hdr->tail)
        rc = PMQ_ECORRUPT;
    else
        rc = group_seek(r, cur, 0, &at, position); /* the first record not yet delivered */
    if (rc == 0 && *position < g->from_seq)
        *position = g->from_seq; /* passed over, not delivered */
    ring_unlock(r);
    return rc;
}

int pmq_durable_restore(pmq_ring_t *r, const char *name, uint32_t flags, uint64_t position_seq,
                        const uint64_t *acked, uint32_t n_acked, int64_t ack_timeout_ns,
                        uint32_t max_retries)
{
    if (!r || !group_name_ok(name) || !name[0] || (flags & ~PMQ_GROUP_ACK) ||
        (n_acked && (!acked || !(flags & PMQ_GROUP_ACK))) || ack_timeout_ns < 0 ||
        max_retries > PMQ_MAX_RETRIES)
        return PMQ_EINVAL;
    for (uint32_t i = 1; i < n_acked; i++)
        if (acked[i] <= acked[i - 1])
            return PMQ_EINVAL;
    int rc = ring_lock_admin(r), created = 0;
    if (rc < 0)
        return rc;
    int gi = group_join(r, name, flags, PMQ_START_SEQ, position_seq, ack_timeout_ns, max_retries,
                        &created);
    if (gi >= 0 && !created) {
        rc = PMQ_EINVAL; /* it exists already */
    } else if (gi >= 0) {
        /* Where it was, even beyond what the ring holds yet (a backlog being
         * restored): records below its position are passed over. */
        r->groups[gi].from_seq = position_seq;
        rc = n_acked ? ack_restore_window(r, &r->groups[gi], acked, n_acked) /* new: nobody */
                     : 0;                                                    /* has its lock */
    } else {
        rc = gi;
    }
    ring_unlock(r);
    return rc;
}
