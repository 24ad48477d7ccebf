/*
 * ring.c - the data area of a topic segment: formatting and attaching it,
 * its lock and the repair after a holder died, publishing (claim space under
 * the lock, copy, commit by a release-store of tail), reclaiming space up to
 * the gate, closing, and the plain groups' claim: copy out, then take by a CAS
 * of the group's cursor. It reads the group table only where the layout makes
 * it the ring's business: cursors and floors (the gate) and, in repair,
 * member counts. Layout: pmq_ring.h; records: pmq_record.h.
 */
#define _GNU_SOURCE
#include "ring_internal.h"

#include <errno.h>
#include <unistd.h>

uint32_t pmq_ring_layout_version(void) { return PMQ_LAYOUT_VERSION; }

/* ---- init and attach ------------------------------------------------------- */

static int params_ok(const pmq_ring_params_t *p)
{
    return p->capacity >= PMQ_MIN_CAPACITY && p->capacity <= PMQ_MAX_CAPACITY &&
           (p->capacity & (p->capacity - 1)) == 0 && p->max_msg > 0 &&
           pmq_record_size(p->max_msg) <= p->capacity / 2 && p->max_groups > 0 &&
           p->max_groups <= PMQ_MAX_GROUPS && p->max_members > 0 &&
           p->max_members <= PMQ_MAX_MEMBERS && p->max_ack_groups <= PMQ_MAX_ACK_GROUPS &&
           p->pending_cap > 0 && p->pending_cap <= (1u << 20) &&
           (p->pending_cap & (p->pending_cap - 1)) == 0;
}

/* Region offsets of a segment; data starts on a page. */
typedef struct regions {
    uint64_t groups, members, pending, data;
} regions_t;

static regions_t regions_of(const pmq_ring_params_t *p)
{
    regions_t o;
    o.groups = PMQ_HDR_SIZE;
    o.members = o.groups + (uint64_t)p->max_groups * sizeof(pmq_group_t);
    o.pending = o.members + (uint64_t)p->max_members * sizeof(pmq_member_t);
    uint64_t end = o.pending + (uint64_t)p->max_ack_groups * p->pending_cap * sizeof(pmq_pending_t);
    o.data = (end + 4095) & ~4095ULL;
    return o;
}

uint64_t pmq_ring_size(const pmq_ring_params_t *p)
{
    return p && params_ok(p) ? regions_of(p).data + p->capacity : 0;
}

/* Check the header's bounds and fill the handle (attach, less the ready check). */
static int fill_handle(pmq_ring_t *r, void *base, uint64_t len)
{
    pmq_ring_hdr_t *h = base;
    if (h->magic != PMQ_RING_MAGIC || h->version != PMQ_LAYOUT_VERSION)
        return PMQ_EVERSION;
    pmq_ring_params_t p = {
        .capacity = h->capacity, .max_msg = h->max_msg, .max_groups = h->max_groups,
        .max_members = h->max_members, .max_ack_groups = h->max_ack_groups,
        .pending_cap = h->pending_cap,
    };
    if (!params_ok(&p))
        return PMQ_ECORRUPT;
    regions_t o = regions_of(&p);
    if (h->seg_len != len || h->groups_off != o.groups || h->members_off != o.members ||
        h->pending_off != o.pending || h->data_off != o.data || o.data + p.capacity != len)
        return PMQ_ECORRUPT;
    *r = (pmq_ring_t){
        .base = base, .len = len, .hdr = h,
        .groups = (pmq_group_t *)((uint8_t *)base + o.groups),
        .members = (pmq_member_t *)((uint8_t *)base + o.members),
        .pending = (pmq_pending_t *)((uint8_t *)base + o.pending),
        .data = (uint8_t *)base + o.data, .data_off = o.data,
        .capacity = p.capacity, .mask = p.capacity - 1,
        .max_groups = p.max_groups, .max_members = p.max_members, .max_msg = p.max_msg,
        .pending_cap = p.pending_cap, .max_ack_groups = p.max_ack_groups,
        .pid = (int32_t)getpid(),
    };
    return 0;
}

int pmq_ring_init(void *base, uint64_t len, const pmq_ring_params_t *p)
{
    uint64_t size = pmq_ring_size(p);
    if (!base || size == 0 || len < size)
        return PMQ_EINVAL;
    regions_t o = regions_of(p);
    pmq_ring_hdr_t *h = base;
    memset(base, 0, o.data);
    h->magic = PMQ_RING_MAGIC;
    h->version = PMQ_LAYOUT_VERSION;
    h->seg_len = size;
    h->capacity = p->capacity;
    h->groups_off = o.groups;
    h->members_off = o.members;
    h->pending_off = o.pending;
    h->data_off = o.data;
    h->max_groups = p->max_groups;
    h->max_members = p->max_members;
    h->max_ack_groups = p->max_ack_groups;
    h->pending_cap = p->pending_cap;
    h->max_msg = p->max_msg;
    h->creator_pid = p->creator_pid;
    h->creator_start = p->creator_start;
    h->created_ns = pmq_sync_now_real();
    h->next_seq = p->first_seq ? p->first_seq : 1;
    int rc = pmq_sync_lock_init(&h->lock);
    /* Every group slot's mutex is made once, here, and never again: a slot is
     * reused, its lock is not re-initialised under a stalled waiter. */
    pmq_group_t *groups = (pmq_group_t *)((uint8_t *)base + o.groups);
    for (uint32_t i = 0; rc == 0 && i < p->max_groups; i++)
        rc = pmq_sync_lock_init(&groups[i].lock);
    return rc;
}

void pmq_ring_ready(void *base)
{
    STORE_REL(&((pmq_ring_hdr_t *)base)->ready, PMQ_READY); /* attachers check it first */
}

int pmq_ring_attach_unready(pmq_ring_t *r, void *base, uint64_t len)
{
    return r && base && len >= PMQ_HDR_SIZE ? fill_handle(r, base, len) : PMQ_ECORRUPT;
}

int pmq_ring_attach(pmq_ring_t *r, void *base, uint64_t len)
{
    if (!r || !base || len < PMQ_HDR_SIZE)
        return PMQ_ECORRUPT;
    pmq_ring_hdr_t *h = base;
    if (LOAD_ACQ(&h->ready) != PMQ_READY)
        return h->magic == 0 || h->magic == PMQ_RING_MAGIC ? PMQ_NOTREADY : PMQ_EVERSION;
    return fill_handle(r, base, len);
}

/* ---- the lock, and repair after a holder died ------------------------------------ */

/* Recount members per group from the member table (a holder may have died
 * between a slot's state and its group's count); a group left with none that
 * goes with its last member goes now; the pending tables in use are those of
 * the ack groups there are. */
static void recount(pmq_ring_t *r)
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
    uint32_t used = 0;
    for (uint32_t i = 0; i < r->max_groups; i++) {
        pmq_group_t *g = &r->groups[i];
        if (g->state == PMQ_SLOT_ACTIVE && (g->flags & PMQ_GROUP_ANON) && g->members == 0)
            ring_free_group(r, g);
        if (g->state != PMQ_SLOT_FREE && (g->flags & PMQ_GROUP_ACK) && g->ptable < r->max_ack_groups)
            used |= 1u << g->ptable;
    }
    r->hdr->ptables_used = used;
}

/* The repair of pmq_sync_lock's EOWNERDEAD, segment's mutex held. The only
 * multi-word update a publisher makes is the commit, guarded by the intent;
 * the group and member tables commit by storing a slot's state last, so a
 * recount makes them consistent again. PMQ_ECORRUPT for positions out of
 * bounds. */
static int repair(void *ctx)
{
    pmq_ring_t *r = ctx;
    pmq_ring_hdr_t *h = r->hdr;
    pmq_intent_t *in = &h->intent;
    if (in->active) {
        /* tail is stored last, in one 64-bit store: it moved or it did not. */
        h->next_seq = h->tail == in->new_tail ? in->new_seq : in->old_seq;
        in->active = 0;
    }
    if (h->reap_slot) {
        /* a reap died here: its member is counted once if it was removed
         * (state stored first), and not if it is still there (the next reap) */
        uint32_t i = h->reap_slot - 1;
        if (i < r->max_members && r->members[i].state != PMQ_SLOT_ACTIVE &&
            h->reaped_members == h->reap_before)
            h->reaped_members++;
        h->reap_slot = 0;
    }
    ADD_RLX(&h->recoveries, 1);
    if (h->head > h->tail || h->tail - h->head > r->capacity || h->next_seq == 0)
        return PMQ_ECORRUPT;
    recount(r);
    return ring_gate(r, &h->gate);
}

/* Cheap invariants that every locker checks before it trusts the positions:
 * a scribbled header gives PMQ_ECORRUPT, never a write out of bounds or a
 * walk without end (every walk is from head or a cursor to tail, at least 8
 * bytes a step, so at most capacity / 8 steps). */
static int positions_ok(const pmq_ring_t *r)
{
    const pmq_ring_hdr_t *h = r->hdr;
    uint64_t head = h->head, tail = h->tail, gate = h->gate;
    return head <= tail && tail - head <= r->capacity && ((head | tail) & 7) == 0 &&
           head <= gate && gate <= tail && h->next_seq >= 1 && h->next_seq < (1ULL << 62) &&
           h->restore_end < (1ULL << 62);
}

/* After pmq_sync_lock: the positions checked, the holder noted; or the
 * mutex released again, and corruption counted. */
static int checked(pmq_ring_t *r, int rc)
{
    if (rc == 0 && !positions_ok(r)) {
        pmq_sync_unlock(&r->hdr->lock);
        rc = PMQ_ECORRUPT;
    }
    if (rc == 0)
        r->hdr->lock_pid = r->pid;
    else if (rc == PMQ_ECORRUPT)
        ADD_RLX(&r->hdr->corrupt, 1);
    return rc;
}

int ring_lock(pmq_ring_t *r, pmq_deadline_t *d, int64_t min_ns, const pmq_hooks_t *hooks)
{
    return checked(r, pmq_sync_lock(&r->hdr->lock, d, min_ns, hooks, repair, r));
}

int ring_trylock(pmq_ring_t *r)
{
    return checked(r, pmq_sync_trylock(&r->hdr->lock, repair, r));
}

int ring_lock_for(pmq_ring_t *r, int64_t timeout_ns)
{
    pmq_deadline_t d = PMQ_DEADLINE(timeout_ns);
    return ring_lock(r, &d, 0, NULL);
}

int ring_lock_admin(pmq_ring_t *r) { return ring_lock_for(r, PMQ_ADMIN_LOCK_NS); }

void ring_unlock(pmq_ring_t *r)
{
    r->hdr->lock_pid = 0;
    pmq_sync_unlock(&r->hdr->lock);
}

/* ---- closing ------------------------------------------------------------------- */

int pmq_ring_close(pmq_ring_t *r, uint32_t why)
{
    if (!r || (why != PMQ_CLOSED_BROKER && why != PMQ_CLOSED_DELETED))
        return PMQ_EINVAL;
    /* Under the mutex: a publish either committed before (and is part of what
     * closed) or sees the mark; none is accepted after this returns. Even a
     * lock that cannot be had soon (corrupt, or held by a stopped process)
     * does not keep the mark off: publishers check it under the lock, which
     * they will not get before the holder lets go. */
    int rc = ring_lock_for(r, PMQ_SWEEP_LOCK_NS);
    uint32_t open = PMQ_OPEN;
    __atomic_compare_exchange_n(&r->hdr->closed, &open, why, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
    if (rc == 0)
        ring_unlock(r);
    ring_wake_all(r);
    return rc < 0 ? rc : 0;
}

/* PMQ_CLOSED or PMQ_DELETED for a closed ring, else 0. */
int ring_closed(const pmq_ring_t *r)
{
    uint32_t why = LOAD_ACQ(&r->hdr->closed);
    return why == PMQ_OPEN ? 0 : why == PMQ_CLOSED_DELETED ? PMQ_DELETED : PMQ_CLOSED;
}

/* ---- the gate and reclaiming ---------------------------------------------------- */

int ring_gate(pmq_ring_t *r, uint64_t *gate)
{
    uint64_t tail = r->hdr->tail, head = r->hdr->head, g = tail;
    for (uint32_t i = 0; i < r->max_groups; i++) {
        pmq_group_t *gr = &r->groups[i];
        uint32_t state = LOAD_ACQ(&gr->state);
        int ack = (gr->flags & PMQ_GROUP_ACK) != 0;
        if (state == PMQ_SLOT_FREE || (state != PMQ_SLOT_ACTIVE && !ack))
            continue;
        /* an ack group holds what it has not acked until it is freed (DRAINING
         * too, while a member that was inside it may still read): its floor gates */
        uint64_t c = ack ? LOAD_SC(&gr->floor) : LOAD_SC(&gr->cursor);
        if (c < head || c > tail)
            return PMQ_ECORRUPT;
        if (c < g)
            g = c;
    }
    *gate = g;
    return 0;
}

/* Move head forward to at least target without passing the gate. Returns 0,
 * PMQ_FULL if the gate is in the way, PMQ_ECORRUPT on a bad record. */
static int reclaim(pmq_ring_t *r, uint64_t target)
{
    pmq_ring_hdr_t *h = r->hdr;
    if (h->gate < target) {
        int rc = ring_gate(r, &h->gate);
        if (rc < 0)
            return rc;
    }
    uint64_t head = h->head;
    pmq_rec_t rec;
    while (head < target && head < h->gate) {
        uint64_t size = ring_record(r, head, h->gate, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA)
            h->expired++;
        head += size;
    }
    h->head = head;
    return head >= target ? 0 : PMQ_FULL;
}

/* ---- publishing ----------------------------------------------------------------- */

/* Where a batch starting at pos would end, counting padding at the wrap. */
static uint64_t plan_end(const pmq_ring_t *r, uint64_t pos, const uint32_t *lens, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        uint64_t size = pmq_record_size(lens[i]), room = r->capacity - (pos & r->mask);
        if (size > room)
            pos += room;
        pos += size;
    }
    return pos;
}

/* The intent brackets a commit. Its fields are complete before it is marked
 * active, and it is marked inactive only after the tail store: the fences keep
 * the compiler (and weaker CPUs) from moving stores across either mark, so a
 * process killed anywhere in between leaves what repair() expects. */
static void intent_begin(pmq_ring_hdr_t *h, uint64_t old_tail, uint64_t new_tail,
                         uint64_t old_seq, uint64_t new_seq)
{
    h->intent.old_tail = old_tail;
    h->intent.new_tail = new_tail;
    h->intent.old_seq = old_seq;
    h->intent.new_seq = new_seq;
    STORE_REL(&h->intent.active, 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static void intent_end(pmq_ring_hdr_t *h)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    STORE_REL(&h->intent.active, 0);
}

/* Write the batch from pos (the caller made room); returns the new tail.
 * Records get seqs from seq on and the time ts, or, when restoring, the
 * given seqs[] and tss[]. A record that does not fit before the end of the
 * data area goes to its start, after a padding record. */
static uint64_t write_records(pmq_ring_t *r, uint64_t pos, const char *const *parts,
                              const uint32_t *lens, uint32_t count, uint64_t seq, int64_t ts,
                              const uint64_t *seqs, const int64_t *tss)
{
    for (uint32_t i = 0; i < count; i++) {
        uint64_t size = pmq_record_size(lens[i]), off = pos & r->mask, room = r->capacity - off;
        if (size > room) {
            uint32_t pad[2] = {(uint32_t)(room - PMQ_PAD_HDR), PMQ_REC_PAD};
            memcpy(r->data + off, pad, sizeof pad);
            pos += room;
            off = 0;
        }
        pmq_rec_t rec = {.len = lens[i], .type = PMQ_REC_DATA, .seq = seqs ? seqs[i] : seq++,
                         .ts_ns = tss ? tss[i] : ts};
        memcpy(r->data + off, &rec, sizeof rec);
        if (lens[i])
            pmq_payload_copy(r->data + off + PMQ_REC_HDR, parts[i], lens[i]);
        pos += size;
    }
    return pos;
}

/* Longest single sleep of a publisher waiting for space. The wake it asks for
 * comes with a quarter ring of slack (see pmq_ring_hdr_t.space_target), so it
 * also looks for itself this often: a slow reader that frees just enough
 * does not leave it asleep until its deadline. */
#define PMQ_SPACE_SLICE_NS (10LL * 1000000LL)
/* The least a publish waits for the mutex, whatever its timeout: contention
 * alone (a holder preempted by the scheduler, say) does not mean Full; a
 * holder that keeps it longer (stopped, frozen) does, within the publish's
 * own timeout when that is longer. */
#define PMQ_LOCK_MIN_NS (100LL * 1000000LL)

/* Wait for space (a publisher: and for a restore to end) with the mutex
 * released. Returns 0 with the mutex held again (look again), or an error
 * with it released. */
static int wait_for_space(pmq_ring_t *r, uint64_t target, int publisher, pmq_deadline_t *d,
                          const pmq_hooks_t *hooks)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t seen = LOAD_ACQ(&h->space_seq);
    uint64_t want = target + r->capacity / 4;
    /* Stored before the flag; a reader loads it after its CAS, so either the
     * reader sees it or our re-check below sees the reader's cursor. */
    STORE_SC(&h->space_target, want < h->tail ? want : h->tail);
    STORE_SC(&h->space_waiters, 1);
    int rc = ring_gate(r, &h->gate); /* re-check after announcing */
    if (rc < 0) {
        ring_unlock(r);
        return rc;
    }
    if ((h->gate >= target && !(publisher && h->restore_end)) || LOAD_ACQ(&h->closed))
        return 0;
    int64_t left = pmq_deadline_left(d);
    ring_unlock(r);
    if (left == 0)
        return PMQ_FULL;
    if (left < 0 || left > PMQ_SPACE_SLICE_NS)
        left = PMQ_SPACE_SLICE_NS;
    pmq_sync_block(hooks);
    rc = pmq_sync_wait(&h->space_seq, seen, left);
    pmq_sync_unblock(hooks);
    if (rc == PMQ_EINTR)
        return rc;
    rc = ring_lock(r, d, PMQ_LOCK_MIN_NS, hooks);
    return rc == -ETIMEDOUT ? PMQ_FULL : rc;
}

/* Every part there, none over max_msg: 0, PMQ_EINVAL or PMQ_ETOOBIG; *bytes their sum. */
static int parts_ok(const pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                    uint32_t count, uint64_t *bytes)
{
    if (!parts || !lens || count == 0)
        return PMQ_EINVAL;
    *bytes = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (lens[i] && !parts[i])
            return PMQ_EINVAL;
        if (lens[i] > r->max_msg)
            return PMQ_ETOOBIG;
        *bytes += lens[i];
    }
    return 0;
}

/* Room for a batch that ends at end, mutex held: 0 (still held); PMQ_RETRY
 * after a wait (held again: plan again, other publishers moved tail); or an
 * error with it released (counted: a refusal, or corruption). A publisher
 * also waits while a backlog is being restored (its seqs come first). */
static int make_room(pmq_ring_t *r, uint64_t end, int publisher, pmq_deadline_t *d,
                     const pmq_hooks_t *hooks, int *waited)
{
    pmq_ring_hdr_t *h = r->hdr;
    int rc = ring_closed(r);
    if (rc == 0 && end - h->tail > r->capacity)
        rc = PMQ_ETOOBIG;
    if (rc < 0) {
        ring_unlock(r);
        return rc;
    }
    uint64_t target = end > r->capacity ? end - r->capacity : 0;
    rc = h->head >= target ? 0 : reclaim(r, target);
    if (rc == 0 && publisher && h->restore_end)
        rc = PMQ_FULL;
    if (rc == 0)
        return 0;
    if (rc == PMQ_FULL && d->timeout_ns != 0) {
        if (!(*waited)++)
            ADD_RLX(&h->publish_waits, 1);
        rc = wait_for_space(r, target, publisher, d, hooks);
        if (rc == 0)
            return PMQ_RETRY;
        if (rc == PMQ_FULL)
            ADD_RLX(&h->publish_full, 1);
        return rc; /* released */
    }
    ADD_RLX(rc == PMQ_FULL ? &h->publish_full : &h->corrupt, 1);
    ring_unlock(r);
    return rc;
}

int64_t pmq_ring_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                         uint32_t count, pmq_deadline_t *d, const pmq_hooks_t *hooks)
{
    uint64_t bytes;
    int rc = r && d ? parts_ok(r, parts, lens, count, &bytes) : PMQ_EINVAL;
    if (rc < 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    /* The publish time is the call's, read before the lock: 20-30 ns less
     * with it held. Records of publishers racing for the lock may so carry
     * times a little out of their seqs' order. */
    int64_t ts = pmq_sync_now_real();
    /* The lines a commit writes besides the mutex's, asked for now: when the
     * last publish ran on another CPU, each comes from there (about 200 ns
     * here), and fetched in turn as the code reaches them they added up. */
    __builtin_prefetch(&h->intent, 1);
    __builtin_prefetch(&h->tail, 1);
    /* The deadline starts when the lock's spin fails or at the first wait for
     * space: a publish that gets the lock and finds room reads the clock only
     * for its records' time. */
    rc = ring_lock(r, d, PMQ_LOCK_MIN_NS, hooks);
    if (rc == -ETIMEDOUT) {
        ADD_RLX(&h->publish_full, 1);
        return PMQ_FULL;
    }
    uint64_t tail = 0, end = 0;
    for (int waited = 0; rc == 0 || rc == PMQ_RETRY;) {
        tail = h->tail;
        end = plan_end(r, tail, lens, count);
        if ((rc = make_room(r, end, 1, d, hooks, &waited)) == 0)
            break;
    }
    if (rc < 0)
        return rc;
    PMQ_TEST_POINT("publish.locked");
    uint64_t seq = h->next_seq;
    intent_begin(h, tail, end, seq, seq + count);
    write_records(r, tail, parts, lens, count, seq, ts, NULL, NULL);
    h->next_seq = seq + count;
    h->published_bytes += bytes;
    PMQ_TEST_POINT("publish.written");
    STORE_REL(&h->tail, end); /* the commit: readers acquire tail */
    PMQ_TEST_POINT("publish.committed");
    intent_end(h);
    ring_unlock(r);
    if (ring_wake_if_waiting(&h->data_seq, &h->data_waiters))
        ADD_RLX(&h->wakeups, 1);
    return (int64_t)seq;
}

int pmq_ring_restore(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                     const uint64_t *seqs, const int64_t *ts, uint32_t count, pmq_deadline_t *d,
                     const pmq_hooks_t *hooks)
{
    uint64_t bytes;
    int rc = r && d ? parts_ok(r, parts, lens, count, &bytes) : PMQ_EINVAL;
    if (rc < 0 || !seqs || !ts)
        return rc < 0 ? rc : PMQ_EINVAL;
    for (uint32_t i = 0; i < count; i++)
        if ((i && seqs[i] <= seqs[i - 1]) || seqs[i] >= (1ULL << 62))
            return PMQ_EINVAL;
    pmq_ring_hdr_t *h = r->hdr;
    if ((rc = ring_lock(r, d, PMQ_LOCK_MIN_NS, hooks)) < 0)
        return rc == -ETIMEDOUT ? PMQ_FULL : rc;
    uint64_t tail = 0, end = 0;
    for (int waited = 0; rc == 0 || rc == PMQ_RETRY;) {
        tail = h->tail;
        end = plan_end(r, tail, lens, count);
        if (seqs[0] < h->next_seq || (h->restore_end && seqs[count - 1] >= h->restore_end)) {
            ring_unlock(r);
            return PMQ_EINVAL;
        }
        if ((rc = make_room(r, end, 0, d, hooks, &waited)) == 0)
            break;
    }
    if (rc < 0)
        return rc;
    uint64_t next = seqs[count - 1] + 1;
    intent_begin(h, tail, end, h->next_seq, next);
    write_records(r, tail, parts, lens, count, 0, 0, seqs, ts);
    h->next_seq = next;
    h->published_bytes += bytes;
    STORE_REL(&h->tail, end);
    intent_end(h);
    ring_unlock(r);
    ring_wake_if_waiting(&h->data_seq, &h->data_waiters);
    return 0;
}

int pmq_ring_wait_word(pmq_ring_t *r, int which, uint32_t **word, uint32_t *value)
{
    if (!r || !word || !value || (which != PMQ_WAIT_DATA && which != PMQ_WAIT_SPACE))
        return PMQ_EINVAL;
    pmq_ring_hdr_t *h = r->hdr;
    if (which == PMQ_WAIT_DATA) {
        *word = &h->data_seq;
        *value = LOAD_ACQ(&h->data_seq);
        STORE_SC(&h->data_waiters, 1);
    } else {
        *word = &h->space_seq;
        *value = LOAD_ACQ(&h->space_seq);
        STORE_SC(&h->space_target, 0); /* any progress wakes it: it looks again */
        STORE_SC(&h->space_waiters, 1);
    }
    return 0;
}

int pmq_ring_restoring(pmq_ring_t *r, uint64_t end_seq)
{
    if (!r || end_seq >= (1ULL << 62))
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    if (end_seq && end_seq < h->next_seq) {
        rc = PMQ_EINVAL;
    } else if (end_seq) {
        h->restore_end = end_seq;
    } else if (h->restore_end) {
        if (h->next_seq < h->restore_end)
            h->next_seq = h->restore_end;
        h->restore_end = 0;
    }
    ring_unlock(r);
    if (!end_seq) { /* publishers waiting for the restore go on */
        ADD_RLX(&h->space_seq, 1);
        pmq_sync_wake(&h->space_seq);
    }
    return rc;
}

/* ---- reading: what a batch holds, and the plain groups' claim -------------------- */

void ring_batch_reset(pmq_batch_t *b)
{
    b->n = 0;
    b->used = b->bytes = 0;
}

int ring_batch_add(const pmq_ring_t *r, uint64_t pos, const pmq_rec_t *rec, pmq_batch_t *b)
{
    uint64_t need = (rec->len + 7ull) & ~7ull;
    if (b->n >= b->max || need > b->buflen - b->used)
        return 0;
    uint32_t i = b->n++;
    b->offs[i] = (pos & r->mask) + PMQ_REC_HDR; /* pmq_record_check: within the data area */
    b->lens[i] = rec->len;
    b->seqs[i] = rec->seq;
    b->ts[i] = rec->ts_ns;
    if (b->pos)
        b->pos[i] = pos;
    b->bytes += rec->len;
    b->used += need;
    return 1;
}

int ring_batch_copy(const pmq_ring_t *r, pmq_batch_t *b)
{
    if (!b->buf)
        return 0; /* zero-copy: the offsets stay in the data area */
    uint64_t at = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        if (b->offs[i] > r->capacity || b->lens[i] > r->capacity - b->offs[i])
            return PMQ_ECORRUPT;
        pmq_payload_copy(b->buf + at, r->data + b->offs[i], b->lens[i]);
        b->offs[i] = at;
        at += (b->lens[i] + 7ull) & ~7ull;
    }
    return 0;
}

int ring_hand_over(const pmq_ring_t *r, pmq_batch_t *b, const pmq_sink_t *sink)
{
    if (sink && sink->copy)
        return sink->copy(sink->ctx, b, r->data);
    return ring_batch_copy(r, b);
}

/* Gather records from pos (below tail) into the batch, up to max; *next past
 * the last one gathered. The count (0: only padding), PMQ_EBUFSMALL (the
 * first record is over the budget) or PMQ_ECORRUPT. */
static int gather(const pmq_ring_t *r, uint64_t pos, uint64_t tail, uint64_t from_seq,
                  pmq_batch_t *b, uint32_t max, uint64_t *next)
{
    pmq_rec_t rec;
    ring_batch_reset(b);
    while (pos < tail && b->n < max) {
        uint64_t size = ring_record(r, pos, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA && rec.seq >= from_seq && !ring_batch_add(r, pos, &rec, b)) {
            if (b->n == 0)
                return PMQ_EBUFSMALL;
            break;
        }
        pos += size;
    }
    *next = pos;
    return (int)b->n;
}

/* CAS the group's cursor and its gen together (16 bytes): a claim in a group
 * that was freed, and perhaps made anew in the same slot, fails. */
static int claim(pmq_group_t *g, uint64_t gen, uint64_t cur, uint64_t next)
{
#if defined(__x86_64__) || defined(__aarch64__)
    unsigned __int128 *word = (unsigned __int128 *)(void *)&g->cursor;
    unsigned __int128 want = (unsigned __int128)gen << 64 | cur;
    unsigned __int128 to = (unsigned __int128)gen << 64 | next;
    return __sync_bool_compare_and_swap(word, want, to);
#else
#error "pymq needs a 16-byte compare-and-swap (x86_64 or aarch64)"
#endif
}

int ring_take(pmq_ring_t *r, pmq_group_t *g, uint32_t gen, pmq_batch_t *b, uint32_t max,
              const pmq_sink_t *sink, uint64_t *cur_out, uint64_t *tail_out)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint64_t cur = LOAD_ACQ(&g->cursor), tail = ring_seen_tail(r, cur), next = cur;
    *cur_out = cur;
    *tail_out = tail; /* when cur == tail, tail itself: ring_seen_tail loaded it */
    if (cur == tail)
        return 0;
    if (LOAD_ACQ(&g->cursor_gen) != gen)
        return PMQ_GONE; /* freed (and perhaps made anew) while we looked */
    int rc = cur < tail && tail - cur <= r->capacity
                 ? gather(r, cur, tail, LOAD_RLX(&g->from_seq), b, max, &next)
                 : PMQ_ECORRUPT;
    if (rc < 0) {
        /* Another member may have taken them and the publisher reused the
         * space, or our group was freed: only an unmoved cursor of our gen
         * means corruption, and then only below tail itself. */
        if (LOAD_SC(&g->cursor) != cur || LOAD_SC(&g->cursor_gen) != gen)
            return PMQ_RETRY;
        if (tail != LOAD_ACQ(&h->tail)) {
            ring_forget_tail(r);
            return PMQ_RETRY;
        }
        if (rc == PMQ_ECORRUPT)
            ADD_RLX(&h->corrupt, 1);
        return rc;
    }
    if (rc > 0 && (rc = ring_hand_over(r, b, sink)) < 0)
        return rc;
    if (!claim(g, gen, cur, next)) {
        if (b->n && sink && sink->drop)
            sink->drop(sink->ctx); /* the space may have been reused under the copy */
        return PMQ_RETRY;
    }
    /* A successful claim proves the cursor stood at cur all along, and the gate
     * kept the records from cur to next: the copies are whole. */
    if (next >= LOAD_SC(&h->space_target))
        ring_wake_if_waiting(&h->space_seq, &h->space_waiters);
    if (b->n == 0)
        return PMQ_RETRY; /* only padding */
    ADD_RLX(&g->delivered, (uint64_t)b->n);
    ADD_RLX(&g->delivered_bytes, b->bytes);
    return (int)b->n;
}
