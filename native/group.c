/*
 * group.c - consumer groups and their members, reaping, and figures.
 *
 * Every change here happens under the segment's mutex and commits by storing
 * a slot's state last, so recovery (pmq_group_recount) can rebuild the counts
 * from the member table after a holder died part-way.
 */
#define _GNU_SOURCE
#include "pmq_sync.h"
#include "ring_internal.h"

/* Free a group slot. Mutex held. The state goes first, then the cursor is
 * poisoned: a member of this group that copied records and is about to CAS
 * the cursor fails (and then finds itself gone), instead of claiming on a slot
 * that may be reused. Slots are reused round-robin (group_hint), so a reader
 * would have to stall across a whole cycle of allocations to meet its slot
 * again with the very same cursor value. */
static void free_group(pmq_ring_t *r, pmq_group_t *g)
{
    if (g->flags & PMQ_GROUP_ANON) { /* its figures live on in the topic's totals */
        ADD_RLX(&r->hdr->anon_delivered, LOAD_ACQ(&g->delivered));
        ADD_RLX(&r->hdr->anon_delivered_bytes, LOAD_ACQ(&g->delivered_bytes));
    }
    /* An ack group is freed under its own lock; if that cannot be had, its
     * pending table stays taken until the next recount. */
    if (!(g->flags & PMQ_GROUP_ACK) || pmq_ack_group_free(r, g) < 0)
        STORE_REL(&g->state, PMQ_SLOT_FREE);
    STORE_SC(&g->cursor, UINT64_MAX);
}

void pmq_group_recount(pmq_ring_t *r)
{
    for (uint32_t g = 0; g < r->max_groups; g++)
        r->groups[g].members = 0;
    for (uint32_t i = 0; i < r->max_members; i++) {
        pmq_member_t *m = &r->members[i];
        if (m->state != PMQ_SLOT_ACTIVE)
            continue;
        pmq_group_t *g = m->group < r->max_groups ? &r->groups[m->group] : NULL;
        if (!g || g->state != PMQ_SLOT_ACTIVE || g->gen != m->group_gen)
            STORE_REL(&m->state, PMQ_SLOT_FREE); /* a member of no group */
        else
            g->members++;
    }
    for (uint32_t g = 0; g < r->max_groups; g++) {
        pmq_group_t *gr = &r->groups[g];
        if (gr->state == PMQ_SLOT_ACTIVE && (gr->flags & PMQ_GROUP_ANON) && gr->members == 0)
            free_group(r, gr);
    }
    uint32_t used = 0; /* pending tables in use, from the groups that own them */
    for (uint32_t g = 0; g < r->max_groups; g++) {
        pmq_group_t *gr = &r->groups[g];
        if (gr->state == PMQ_SLOT_ACTIVE && (gr->flags & PMQ_GROUP_ACK) && gr->ptable < r->max_ack_groups)
            used |= 1u << gr->ptable;
    }
    r->hdr->ptables_used = used;
}

/* From pos (in [head, tail]), the first data record with seq >= want: its
 * position in *out and its seq in *seq; tail and next_seq if there is none.
 * Mutex held, positions checked (pmq_ring_lock), so the walk is bounded. */
static int seek_seq(pmq_ring_t *r, uint64_t pos, uint64_t want, uint64_t *out, uint64_t *seq)
{
    uint64_t tail = r->hdr->tail;
    pmq_rec_t rec;
    *seq = r->hdr->next_seq;
    while (pos < tail) {
        uint64_t size = rec_check(r, pos, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA && rec.seq >= want) {
            *seq = rec.seq;
            break;
        }
        pos = skip_gap(r, pos + size);
    }
    *out = pos;
    return 0;
}

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

static int free_member_slot(pmq_ring_t *r)
{
    for (uint32_t i = 0; i < r->max_members; i++)
        if (r->members[i].state == PMQ_SLOT_FREE)
            return (int)i;
    return -1;
}

/* A free group slot, searched round-robin from the hint (see free_group). */
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

static int new_group(pmq_ring_t *r, const char *name, uint32_t flags, int start, uint64_t start_seq,
                     int64_t ack_timeout_ns, uint32_t max_retries)
{
    pmq_ring_hdr_t *h = r->hdr;
    int gi = free_group_slot(r);
    if (gi < 0)
        return PMQ_ENOSLOT;
    uint64_t from = start == PMQ_START_LATEST ? h->tail : h->head, cursor, first_seq;
    int rc = seek_seq(r, from, start == PMQ_START_SEQ ? start_seq : 0, &cursor, &first_seq);
    if (rc < 0)
        return rc;
    pmq_group_t *g = &r->groups[gi];
    g->flags = flags;
    g->gen++;
    g->members = 0;
    memset(g->name, 0, sizeof g->name);
    strncpy(g->name, name, sizeof g->name - 1);
    g->delivered = g->delivered_bytes = 0;
    g->created_ns = (uint64_t)pmq_now_real();
    g->idle_since_ns = (int64_t)g->created_ns; /* no member yet */
    g->start_seq = first_seq;
    STORE_SC(&g->cursor, cursor);
    if ((flags & PMQ_GROUP_ACK) && (rc = pmq_ack_group_init(r, g, ack_timeout_ns, max_retries)) < 0)
        return rc; /* the slot stays free */
    if (cursor < h->gate)
        h->gate = cursor; /* the gate stays a lower bound of every cursor */
    STORE_REL(&g->state, PMQ_SLOT_ACTIVE);
    return gi;
}

int pmq_group_create(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                     uint64_t start_seq, int64_t ack_timeout_ns, uint32_t max_retries)
{
    int gi = new_group(r, name, flags, start, start_seq, ack_timeout_ns, max_retries);
    return gi < 0 ? gi : 0;
}

int pmq_group_restore(pmq_ring_t *r, const char *name, uint32_t flags, uint64_t position_seq,
                      const uint64_t *acked, uint32_t n_acked, int64_t ack_timeout_ns,
                      uint32_t max_retries)
{
    if (!r || !name || !name[0] || strnlen(name, PMQ_NAME_MAX - 16) >= PMQ_NAME_MAX - 16 ||
        (flags & ~PMQ_GROUP_ACK) || (n_acked && (!acked || !(flags & PMQ_GROUP_ACK))) ||
        ack_timeout_ns < 0 || max_retries > PMQ_PERSIST_RETRIES)
        return PMQ_EINVAL;
    for (uint32_t i = 1; i < n_acked; i++)
        if (acked[i] <= acked[i - 1])
            return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    int gi = find_group(r, name) >= 0 ? PMQ_EINVAL
             : new_group(r, name, flags, PMQ_START_SEQ, position_seq, ack_timeout_ns, max_retries);
    if (gi >= 0 && n_acked)
        rc = pmq_ack_restore_window(r, &r->groups[gi], acked, n_acked);
    else
        rc = gi < 0 ? gi : 0;
    pmq_ring_unlock(r);
    return rc;
}

int pmq_group_position(pmq_ring_t *r, uint32_t gi, uint64_t *position, uint64_t *acked,
                       uint32_t max)
{
    if (!r || gi >= r->max_groups || !position || (max && !acked))
        return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_group_t *g = &r->groups[gi];
    uint64_t at, cur = LOAD_ACQ(&g->cursor), first = 0;
    rc = g->state == PMQ_SLOT_ACTIVE ? 0 : PMQ_GONE;
    if (rc == 0 && (cur < r->hdr->head || cur > r->hdr->tail))
        rc = PMQ_ECORRUPT;
    if (rc == 0)
        rc = seek_seq(r, cur, 0, &at, position); /* the first record not yet delivered */
    if (rc == 0 && (g->flags & PMQ_GROUP_ACK)) {
        rc = pmq_ack_window(r, g, &first, acked, max);
        if (rc >= 0 && first)
            *position = first; /* the oldest delivery not yet acked */
    }
    pmq_ring_unlock(r);
    return rc;
}

int pmq_group_join(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                   uint64_t start_seq, uint64_t owner, int32_t pid, int64_t ack_timeout_ns,
                   uint32_t max_retries, pmq_join_t *out)
{
    if (!r || !name || !out || strnlen(name, PMQ_NAME_MAX - 16) >= PMQ_NAME_MAX - 16 ||
        (flags & ~(PMQ_GROUP_ACK)) != 0 || start < PMQ_START_LATEST || start > PMQ_START_SEQ ||
        ack_timeout_ns < 0 || max_retries > 1000)
        return PMQ_EINVAL;
    int anon = name[0] == '\0';
    if (anon)
        flags |= PMQ_GROUP_ANON;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    int mi = free_member_slot(r), created = 0;
    int gi = anon ? -1 : find_group(r, name);
    if (mi < 0)
        rc = PMQ_ENOSLOT;
    else if (gi >= 0 && r->groups[gi].flags != flags)
        rc = PMQ_EINVAL;
    else if (gi < 0) {
        rc = gi = new_group(r, name, flags, start, start_seq, ack_timeout_ns, max_retries);
        created = 1;
    }
    if (rc >= 0) {
        pmq_group_t *g = &r->groups[gi];
        pmq_member_t *m = &r->members[mi];
        m->group = (uint32_t)gi;
        m->group_gen = g->gen;
        m->owner = owner;
        m->pid = pid;
        m->delivered = 0;
        __atomic_store_n(&m->gen, m->gen + 1, __ATOMIC_RELAXED);
        g->members++;
        g->idle_since_ns = 0;
        STORE_REL(&m->state, PMQ_SLOT_ACTIVE);
        *out = (pmq_join_t){.member = (uint32_t)mi, .member_gen = m->gen,
                            .group = (uint32_t)gi, .group_gen = g->gen, .created = created};
        rc = 0;
    }
    pmq_ring_unlock(r);
    return rc;
}

/* Mutex held. An anonymous group goes with its last member. */
static void remove_member(pmq_ring_t *r, pmq_member_t *m)
{
    STORE_REL(&m->state, PMQ_SLOT_FREE);
    if (m->group >= r->max_groups)
        return;
    pmq_group_t *g = &r->groups[m->group];
    if (g->state != PMQ_SLOT_ACTIVE || g->gen != m->group_gen)
        return;
    if (g->members > 0)
        g->members--;
    if (g->members == 0)
        g->idle_since_ns = pmq_now_real();
    if ((g->flags & PMQ_GROUP_ANON) && g->members == 0)
        free_group(r, g);
    else
        pmq_ack_member_gone(r, g, (uint32_t)(m - r->members));
}

int pmq_group_delete(pmq_ring_t *r, const char *name)
{
    if (!r || !name || !name[0] || strnlen(name, PMQ_NAME_MAX - 16) >= PMQ_NAME_MAX - 16)
        return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    int gi = find_group(r, name);
    if (gi < 0) {
        pmq_ring_unlock(r);
        return PMQ_NOTFOUND;
    }
    pmq_group_t *g = &r->groups[gi];
    /* Its members first (state stored last, so a recount after a death here
     * finds them gone), then the group: its cursor poisoned, its table freed. */
    for (uint32_t i = 0; i < r->max_members; i++) {
        pmq_member_t *m = &r->members[i];
        if (m->state == PMQ_SLOT_ACTIVE && m->group == (uint32_t)gi && m->group_gen == g->gen)
            STORE_REL(&m->state, PMQ_SLOT_FREE);
    }
    g->members = 0;
    free_group(r, g);
    pmq_ring_unlock(r);
    pmq_ring_wake_all(r); /* its readers return PMQ_GONE; publishers may have room now */
    return 0;
}

int pmq_member_leave(pmq_ring_t *r, uint32_t member, uint32_t gen)
{
    if (!r || member >= r->max_members)
        return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_member_t *m = &r->members[member];
    if (m->state == PMQ_SLOT_ACTIVE && m->gen == gen)
        remove_member(r, m);
    else
        rc = PMQ_GONE;
    pmq_ring_unlock(r);
    pmq_ring_wake_all(r); /* a reader blocked on this member returns PMQ_GONE */
    return rc;
}

int pmq_ring_reap(pmq_ring_t *r, uint64_t owner)
{
    if (!r)
        return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r), n = 0;
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < r->max_members; i++) {
        pmq_member_t *m = &r->members[i];
        if (m->state == PMQ_SLOT_ACTIVE && m->owner == owner) {
            remove_member(r, m);
            n++;
        }
    }
    pmq_ring_unlock(r);
    if (n)
        pmq_ring_wake_all(r);
    return n;
}

/* ---- figures -------------------------------------------------------------- */

/* One group's figures. Mutex held, so head and tail stand still; the cursor
 * may move on (readers are lock-free), which only makes lag smaller. */
static void group_figures(pmq_ring_t *r, uint32_t i, pmq_group_stats_t *o)
{
    pmq_ring_hdr_t *h = r->hdr;
    pmq_group_t *g = &r->groups[i];
    uint64_t pos = LOAD_ACQ(&g->cursor), at;
    memset(o, 0, sizeof *o);
    memcpy(o->name, g->name, sizeof g->name);
    o->name[sizeof g->name - 1] = '\0';
    o->index = i;
    o->flags = g->flags;
    o->members = g->members;
    o->gen = g->gen;
    o->cursor = pos;
    o->delivered = g->delivered;
    o->delivered_bytes = g->delivered_bytes;
    o->idle_since_ns = g->idle_since_ns;
    o->cursor_seq = h->next_seq;
    if (pos >= h->head && pos <= h->tail) /* else corrupt: pmq_ring_gate reports it */
        seek_seq(r, pos, 0, &at, &o->cursor_seq);
    o->lag = h->next_seq - o->cursor_seq;
    pmq_ack_figures(r, g, o);
}

int pmq_ring_stats(pmq_ring_t *r, pmq_ring_stats_t *o, pmq_group_stats_t *groups,
                   uint32_t max_groups)
{
    if (!r || !o || (!groups && max_groups))
        return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    memset(o, 0, sizeof *o);
    o->capacity = r->capacity;
    o->head = h->head;
    o->tail = h->tail;
    o->next_seq = h->next_seq;
    rc = pmq_ring_gate(r, &o->gate_min);
    o->published = h->next_seq - 1;
    o->published_bytes = h->published_bytes;
    o->publish_waits = h->publish_waits;
    o->publish_full = h->publish_full;
    o->expired = h->expired;
    o->recoveries = h->recoveries;
    o->wakeups = h->wakeups;
    o->corrupt = h->corrupt;
    o->anon_delivered = h->anon_delivered;
    o->anon_delivered_bytes = h->anon_delivered_bytes;
    o->closed = h->closed;
    o->max_msg = r->max_msg;
    for (uint32_t i = 0; i < r->max_groups; i++) {
        if (r->groups[i].state != PMQ_SLOT_ACTIVE)
            continue;
        if (o->groups < max_groups)
            group_figures(r, i, &groups[o->groups]);
        o->groups++;
    }
    for (uint32_t i = 0; i < r->max_members; i++)
        o->members += r->members[i].state == PMQ_SLOT_ACTIVE;
    pmq_ring_unlock(r);
    return rc < 0 ? rc : (int)(o->groups < max_groups ? o->groups : max_groups);
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
