/*
 * group.c - consumer groups and the member table: making, finding and
 * letting go of groups, adding and removing members, deleting a group, and
 * the figures of them all. Every change is made under the segment's mutex and
 * commits by storing a slot's state last, so that ring.c's repair can
 * recount after a holder died part-way. An ack group's pending table is
 * assigned here (a bit of ptables_used); what is in it is ack.c's.
 */
#define _GNU_SOURCE
#include "group_internal.h"

#include <errno.h>

/* An ACTIVE named group of that name, or -1. */
static int find_group(pmq_ring_t *r, const char *name)
{
    for (uint32_t i = 0; i < r->max_groups; i++) {
        pmq_group_t *g = &r->groups[i];
        if (g->state == PMQ_SLOT_ACTIVE && !(g->flags & PMQ_GROUP_ANON) &&
            strncmp(g->name, name, sizeof g->name) == 0)
            return (int)i;
    }
    return -1;
}

int group_free_member_slot(pmq_ring_t *r)
{
    for (uint32_t i = 0; i < r->max_members; i++)
        if (r->members[i].state == PMQ_SLOT_FREE)
            return (int)i;
    return -1;
}

/* A free group slot, searched round-robin from the hint: a slot is reused as
 * late as it can be. */
static int free_group_slot(pmq_ring_t *r)
{
    uint32_t n = r->max_groups, start = r->hdr->group_hint % n;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (start + k) % n;
        if (r->groups[i].state == PMQ_SLOT_FREE) {
            r->hdr->group_hint = i + 1;
            return (int)i;
        }
    }
    return -1;
}

/* A pending table nobody uses: its index, or -1. */
static int free_ptable(pmq_ring_t *r)
{
    uint32_t used = r->hdr->ptables_used;
    for (uint32_t t = 0; t < r->max_ack_groups; t++)
        if (!(used & (1u << t)))
            return (int)t;
    return -1;
}

int group_name_ok(const char *name)
{
    return name && strnlen(name, PMQ_NAME_MAX) < PMQ_NAME_MAX;
}

int group_seek(pmq_ring_t *r, uint64_t pos, uint64_t want, uint64_t *out, uint64_t *seq)
{
    uint64_t tail = LOAD_ACQ(&r->hdr->tail);
    pmq_rec_t rec;
    *seq = LOAD_RLX(&r->hdr->next_seq);
    while (pos < tail) {
        uint64_t size = ring_record(r, pos, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA && rec.seq >= want) {
            *seq = rec.seq;
            break;
        }
        pos += size;
    }
    *out = pos;
    return 0;
}

int group_new(pmq_ring_t *r, const char *name, uint32_t flags, int start, uint64_t start_seq,
              int64_t ack_timeout_ns, uint32_t max_retries)
{
    pmq_ring_hdr_t *h = r->hdr;
    int gi = free_group_slot(r), table = (flags & PMQ_GROUP_ACK) ? free_ptable(r) : 0;
    if (gi < 0 || table < 0)
        return PMQ_ENOSLOT;
    uint64_t from = start == PMQ_START_LATEST ? h->tail : h->head, cursor, first_seq;
    int rc = group_seek(r, from, start == PMQ_START_SEQ ? start_seq : 0, &cursor, &first_seq);
    if (rc < 0)
        return rc;
    pmq_group_t *g = &r->groups[gi];
    g->flags = flags;
    g->gen++;
    g->members = 0;
    memset(g->name, 0, sizeof g->name);
    strncpy(g->name, name, sizeof g->name - 1);
    g->delivered = g->delivered_bytes = 0;
    g->created_ns = (uint64_t)pmq_sync_now_real();
    g->idle_since_ns = (int64_t)g->created_ns; /* no member yet */
    g->start_seq = first_seq;
    g->from_seq = 0;
    STORE_SC(&g->cursor_gen, (uint64_t)g->gen);
    STORE_SC(&g->cursor, cursor);
    if (flags & PMQ_GROUP_ACK) {
        h->ptables_used |= 1u << table;
        g->ptable = (uint32_t)table;
        g->pend_head = g->pend_tail = 0;
        g->floor = cursor;
        g->ready = g->dead = g->drained = 0;
        g->ack_timeout_ns = ack_timeout_ns;
        g->max_retries = max_retries;
        g->acked = g->nacked = g->redelivered = g->dead_lettered = g->timeouts = 0;
    }
    if (cursor < h->gate)
        h->gate = cursor; /* the gate stays a lower bound of every cursor */
    STORE_REL(&g->state, PMQ_SLOT_ACTIVE);
    return gi;
}

int pmq_group_create(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                     uint64_t start_seq, int64_t ack_timeout_ns, uint32_t max_retries)
{
    if (!r || !group_name_ok(name) || !name[0] || (flags & ~PMQ_GROUP_ACK) || ack_timeout_ns < 0 ||
        max_retries > PMQ_MAX_RETRIES)
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    int gi = find_group(r, name) >= 0 ? PMQ_EINVAL
             : group_new(r, name, flags, start, start_seq, ack_timeout_ns, max_retries);
    ring_unlock(r);
    return gi < 0 ? gi : 0;
}

int group_join(pmq_ring_t *r, const char *name, uint32_t flags, int start, uint64_t start_seq,
               int64_t ack_timeout_ns, uint32_t max_retries, int *created)
{
    int gi = name[0] ? find_group(r, name) : -1;
    *created = 0;
    if (gi >= 0)
        return r->groups[gi].flags == flags ? gi : PMQ_EINVAL;
    *created = 1;
    return group_new(r, name, flags, start, start_seq, ack_timeout_ns, max_retries);
}

void group_add_member(pmq_ring_t *r, uint32_t gi, uint32_t mi, uint64_t owner, int32_t pid,
                      pmq_join_t *out)
{
    pmq_group_t *g = &r->groups[gi];
    pmq_member_t *m = &r->members[mi];
    m->group = gi;
    m->group_gen = g->gen;
    m->owner = owner;
    m->pid = pid;
    m->delivered = 0;
    STORE_REL(&m->gen, m->gen + 1);
    g->members++;
    g->idle_since_ns = 0;
    STORE_REL(&m->state, PMQ_SLOT_ACTIVE);
    *out = (pmq_join_t){.member = mi, .member_gen = m->gen, .group = gi, .group_gen = g->gen};
}

int group_remove_member(pmq_ring_t *r, pmq_member_t *m)
{
    STORE_REL(&m->state, PMQ_SLOT_FREE);
    if (m->group >= r->max_groups)
        return -1;
    pmq_group_t *g = &r->groups[m->group];
    if (g->state != PMQ_SLOT_ACTIVE || g->gen != m->group_gen)
        return -1;
    if (g->members > 0)
        g->members--;
    if (g->members == 0)
        g->idle_since_ns = pmq_sync_now_real();
    if ((g->flags & PMQ_GROUP_ANON) && g->members == 0)
        ring_free_group(r, g);
    return (g->flags & PMQ_GROUP_ACK) ? (int)m->group : -1;
}

int pmq_group_delete(pmq_ring_t *r, const char *name)
{
    if (!r || !group_name_ok(name) || !name[0])
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    int gi = find_group(r, name);
    if (gi < 0) {
        ring_unlock(r);
        return PMQ_NOTFOUND;
    }
    pmq_group_t *g = &r->groups[gi];
    /* Its members first (a recount after a death here finds them gone), then
     * the group itself. */
    for (uint32_t i = 0; i < r->max_members; i++) {
        pmq_member_t *m = &r->members[i];
        if (m->state == PMQ_SLOT_ACTIVE && m->group == (uint32_t)gi && m->group_gen == g->gen)
            STORE_REL(&m->state, PMQ_SLOT_FREE);
    }
    g->members = 0;
    ring_free_group(r, g);
    ring_unlock(r);
    ring_wake_all(r); /* its readers return PMQ_GONE; publishers may have room now */
    return 0;
}

/* ---- figures -------------------------------------------------------------------- */

/* One group's figures; with the mutex held or not (the caller says in
 * out->locked), every read is bounded, and a cursor out of bounds (a race
 * without the lock, or corruption ring_gate reports) only leaves lag unknown. */
static void group_figures(pmq_ring_t *r, uint32_t i, pmq_group_stats_t *o)
{
    pmq_ring_hdr_t *h = r->hdr;
    pmq_group_t *g = &r->groups[i];
    uint64_t pos = LOAD_ACQ(&g->cursor), at, head = LOAD_ACQ(&h->head), tail = LOAD_ACQ(&h->tail);
    memset(o, 0, sizeof *o);
    memcpy(o->name, g->name, sizeof g->name);
    o->name[sizeof g->name - 1] = '\0';
    o->index = i;
    o->flags = g->flags;
    o->state = g->state;
    o->members = g->members;
    o->gen = g->gen;
    o->cursor = pos;
    o->delivered = g->delivered;
    o->delivered_bytes = g->delivered_bytes;
    o->idle_since_ns = g->idle_since_ns;
    o->cursor_seq = LOAD_RLX(&h->next_seq);
    if (pos >= head && pos <= tail)
        group_seek(r, pos, 0, &at, &o->cursor_seq);
    o->lag = LOAD_RLX(&h->next_seq) - o->cursor_seq;
    if (!(g->flags & PMQ_GROUP_ACK) || g->ptable >= r->max_ack_groups)
        return;
    o->lock_pid = LOAD_RLX(&g->lock_pid);
    o->acked = g->acked;
    o->nacked = g->nacked;
    o->redelivered = g->redelivered;
    o->dead_lettered = g->dead_lettered;
    o->timeouts = g->timeouts;
    o->ready = g->ready;
    o->dead = g->dead;
    o->max_retries = g->max_retries;
    uint64_t ph = g->pend_head, pt = g->pend_tail;
    if (ph <= pt && pt - ph <= r->pending_cap) /* read without the group's lock */
        for (uint64_t n = ph; n < pt; n++)
            o->pending += group_entry(r, g, n)->w.f.state != PMQ_PEND_FREE;
}

int pmq_group_stats(pmq_ring_t *r, pmq_ring_stats_t *o, pmq_group_stats_t *groups,
                    uint32_t max_groups, pmq_deadline_t *d)
{
    if (!r || !o || (!groups && max_groups) || !d)
        return PMQ_EINVAL;
    pmq_ring_hdr_t *h = r->hdr;
    int rc = ring_lock(r, d, 0, NULL), locked = rc == 0;
    if (rc < 0 && rc != -ETIMEDOUT)
        return rc;
    memset(o, 0, sizeof *o);
    o->locked = !locked;
    o->lock_pid = locked ? 0 : LOAD_RLX(&h->lock_pid);
    o->capacity = r->capacity;
    o->head = LOAD_ACQ(&h->head);
    o->tail = LOAD_ACQ(&h->tail);
    o->next_seq = LOAD_RLX(&h->next_seq);
    o->restore_end = LOAD_RLX(&h->restore_end);
    rc = locked ? ring_gate(r, &o->gate_min) : 0;
    if (!locked)
        o->gate_min = LOAD_RLX(&h->gate);
    o->published = o->next_seq - 1;
    o->published_bytes = h->published_bytes;
    o->publish_waits = h->publish_waits;
    o->publish_full = h->publish_full;
    o->expired = h->expired;
    o->recoveries = h->recoveries;
    o->wakeups = h->wakeups;
    o->corrupt = h->corrupt;
    o->anon_delivered = h->anon_delivered;
    o->anon_delivered_bytes = h->anon_delivered_bytes;
    o->reaped_members = h->reaped_members;
    o->closed = h->closed;
    o->max_msg = r->max_msg;
    for (uint32_t i = 0; i < r->max_groups; i++) {
        if (LOAD_ACQ(&r->groups[i].state) != PMQ_SLOT_ACTIVE)
            continue;
        if (o->groups < max_groups)
            group_figures(r, i, &groups[o->groups]);
        o->groups++;
    }
    for (uint32_t i = 0; i < r->max_members; i++)
        o->members += LOAD_RLX(&r->members[i].state) == PMQ_SLOT_ACTIVE;
    if (locked)
        ring_unlock(r);
    return rc < 0 ? rc : (int)(o->groups < max_groups ? o->groups : max_groups);
}
