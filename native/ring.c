/*
 * ring.c - the multi-producer, multi-group ring of one topic segment.
 *
 * Publishers serialise on the segment's robust mutex, write whole records
 * beyond tail and commit them with one release-store of tail. Readers never
 * take the mutex: a member claims records by a CAS on its group's cursor, after
 * copying them out; a failed CAS discards the copy. Publishers never overwrite
 * at or above the lowest cursor (the gate), so a copy taken while the cursor
 * still holds its old value is intact. Layout: pmq_ring.h. Groups, members
 * and figures: group.c.
 */
#define _GNU_SOURCE
#include "pmq_sync.h"
#include "ring_internal.h"

#include <errno.h>

uint32_t pmq_layout_version(void) { return PMQ_LAYOUT_VERSION; }

static int fill_handle(pmq_ring_t *r, void *base, uint64_t len);

/* ---- lock and recovery ------------------------------------------------ */

/* Repair the segment after a lock holder died (EOWNERDEAD), with the mutex
 * held. The only multi-word update a publisher makes is the commit, guarded by
 * the intent record; group and member tables commit by storing state last, so
 * recounting members from the member table makes them consistent again.
 * Returns 0, or PMQ_ECORRUPT when positions are out of bounds. */
static int ring_recover(pmq_ring_t *r)
{
    pmq_ring_hdr_t *h = r->hdr;
    pmq_intent_t *in = &h->intent;
    if (in->active) {
        /* tail is stored last, in one 64-bit store: it moved or it did not. */
        h->next_seq = h->tail == in->new_tail ? in->new_seq : in->old_seq;
        in->active = 0;
    }
    ADD_RLX(&h->recoveries, 1);
    if (h->head > h->tail || h->tail - h->head > r->capacity || h->next_seq == 0)
        return PMQ_ECORRUPT;
    pmq_group_recount(r);
    return pmq_ring_gate(r, &h->gate);
}

/* Cheap invariants that every locker checks before it trusts the positions:
 * a scribbled header gives PMQ_ECORRUPT, never a write out of bounds or a
 * walk without end (every walk below is from head or a cursor to tail, at
 * least 24 bytes a step, so at most capacity / 24 steps). */
static int positions_ok(const pmq_ring_t *r)
{
    const pmq_ring_hdr_t *h = r->hdr;
    uint64_t head = h->head, tail = h->tail, gate = h->gate;
    return head <= tail && tail - head <= r->capacity && ((head | tail) & 7) == 0 &&
           skip_gap(r, head) == head && skip_gap(r, tail) == tail && head <= gate &&
           gate <= tail && h->next_seq >= 1 && h->next_seq < (1ULL << 62);
}

int pmq_ring_lock(pmq_ring_t *r, int64_t timeout_ns, int64_t *blocked_since)
{
    int rc = pmq_mutex_lock(&r->hdr->lock, timeout_ns, blocked_since);
    if (rc == EOWNERDEAD) {
        rc = ring_recover(r);
        pthread_mutex_consistent(&r->hdr->lock);
    } else if (rc == -ENOTRECOVERABLE) {
        return PMQ_ECORRUPT;
    } else if (rc < 0) {
        return rc;
    }
    if (rc == 0 && !positions_ok(r))
        rc = PMQ_ECORRUPT;
    if (rc < 0) {
        ADD_RLX(&r->hdr->corrupt, 1);
        pthread_mutex_unlock(&r->hdr->lock);
    }
    return rc;
}

/* For everything but publish (which has its own timeout): the mutex is only
 * ever held for microseconds, so a wait this long means a garbage lock word,
 * and the caller gets -ETIMEDOUT instead of hanging. */
#define PMQ_ADMIN_LOCK_NS (10LL * 1000000000LL)

int pmq_ring_lock_admin(pmq_ring_t *r)
{
    return pmq_ring_lock(r, PMQ_ADMIN_LOCK_NS, NULL);
}

void pmq_ring_unlock(pmq_ring_t *r) { pthread_mutex_unlock(&r->hdr->lock); }

/* ---- init and attach -------------------------------------------------- */

static int params_ok(const pmq_ring_params_t *p)
{
    return p->capacity >= PMQ_MIN_CAPACITY && p->capacity <= PMQ_MAX_CAPACITY &&
           (p->capacity & (p->capacity - 1)) == 0 && p->max_msg > 0 &&
           rec_size(p->max_msg) <= p->capacity / 2 && p->max_groups > 0 &&
           p->max_groups <= PMQ_MAX_GROUPS && p->max_members > 0 &&
           p->max_members <= PMQ_MAX_MEMBERS && p->max_members <= 0xFFFF &&
           p->max_ack_groups <= PMQ_MAX_ACK_GROUPS && p->pending_cap > 0 &&
           p->pending_cap <= (1u << 20) && (p->pending_cap & (p->pending_cap - 1)) == 0;
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
    return params_ok(p) ? regions_of(p).data + p->capacity : 0;
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
    h->created_ns = pmq_now_real();
    h->next_seq = p->first_seq ? p->first_seq : 1;
    int rc = pmq_mutex_init(&h->lock);
    /* Every group slot's mutex is made once, here, and never again: a slot is
     * reused, its lock is not re-initialised under a stalled waiter. */
    pmq_group_t *groups = (pmq_group_t *)((uint8_t *)base + o.groups);
    for (uint32_t i = 0; rc == 0 && i < p->max_groups; i++)
        rc = pmq_mutex_init(&groups[i].lock);
    if (rc < 0)
        return rc;
    if (p->persist) {
        /* The persistence writer's group exists before anyone can publish: no
         * record can be reclaimed before it is on disk. */
        pmq_ring_t tmp;
        rc = fill_handle(&tmp, base, len);
        if (rc == 0)
            rc = pmq_group_create(&tmp, PMQ_PERSIST_GROUP, PMQ_GROUP_ACK, PMQ_START_EARLIEST, 0,
                                  PMQ_PERSIST_ACK_TIMEOUT_NS, PMQ_PERSIST_RETRIES);
        if (rc < 0)
            return rc;
    }
    STORE_REL(&h->ready, PMQ_READY); /* attachers check ready before anything else */
    return 0;
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
    r->base = base;
    r->len = len;
    r->hdr = h;
    r->groups = (pmq_group_t *)(r->base + o.groups);
    r->members = (pmq_member_t *)(r->base + o.members);
    r->pending = (pmq_pending_t *)(r->base + o.pending);
    r->data = r->base + o.data;
    r->data_off = o.data;
    r->capacity = p.capacity;
    r->mask = p.capacity - 1;
    r->max_groups = p.max_groups;
    r->max_members = p.max_members;
    r->max_msg = p.max_msg;
    r->pending_cap = p.pending_cap;
    r->max_ack_groups = p.max_ack_groups;
    return 0;
}

/* ---- waking ------------------------------------------------------------ */

void pmq_ring_wake_all(pmq_ring_t *r)
{
    wake(&r->hdr->data_seq, &r->hdr->data_waiters);
    wake(&r->hdr->space_seq, &r->hdr->space_waiters);
}

int pmq_ring_close(pmq_ring_t *r, uint32_t why)
{
    if (!r || (why != PMQ_CLOSED_BROKER && why != PMQ_CLOSED_DELETED))
        return PMQ_EINVAL;
    /* Under the mutex: a publish either committed before (and is part of what
     * closed) or sees the mark; none is accepted after this returns. Even a
     * lock that cannot be had (a corrupt segment) does not keep the mark off. */
    int rc = pmq_ring_lock_admin(r);
    uint32_t open = PMQ_OPEN;
    __atomic_compare_exchange_n(&r->hdr->closed, &open, why, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
    if (rc == 0)
        pmq_ring_unlock(r);
    pmq_ring_wake_all(r);
    return rc < 0 ? rc : 0;
}

/* PMQ_CLOSED or PMQ_DELETED for a closed ring, else 0. */
static int closed_code(const pmq_ring_t *r)
{
    uint32_t why = LOAD_ACQ(&r->hdr->closed);
    return why == PMQ_OPEN ? 0 : why == PMQ_CLOSED_DELETED ? PMQ_DELETED : PMQ_CLOSED;
}

/* ---- publishing --------------------------------------------------------- */

/* The lowest cursor of any live group, or tail when there is none. */
int pmq_ring_gate(pmq_ring_t *r, uint64_t *gate)
{
    uint64_t tail = r->hdr->tail, head = r->hdr->head, g = tail;
    for (uint32_t i = 0; i < r->max_groups; i++) {
        pmq_group_t *gr = &r->groups[i];
        if (LOAD_ACQ(&gr->state) != PMQ_SLOT_ACTIVE)
            continue;
        /* an ack group holds what it has not acked: its floor gates */
        uint64_t c = (gr->flags & PMQ_GROUP_ACK) ? LOAD_SC(&gr->floor) : LOAD_SC(&gr->cursor);
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
        int rc = pmq_ring_gate(r, &h->gate);
        if (rc < 0)
            return rc;
    }
    uint64_t head = h->head;
    pmq_rec_t rec;
    while (head < target) {
        if (head >= h->gate)
            break;
        uint64_t size = rec_check(r, head, h->gate, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA)
            h->expired++;
        head = skip_gap(r, head + size);
    }
    h->head = head;
    return head >= target ? 0 : PMQ_FULL;
}

/* Where a batch starting at tail would end, counting padding at the wrap. */
static uint64_t plan_end(const pmq_ring_t *r, uint64_t pos, const uint32_t *lens, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        uint64_t size = rec_size(lens[i]), room = r->capacity - (pos & r->mask);
        if (size > room)
            pos += room;
        pos = skip_gap(r, pos + size);
    }
    return pos;
}

/* The intent brackets a commit. Its fields are complete before it is marked
 * active, and it is marked inactive only after the tail store: the fences keep
 * the compiler (and weaker CPUs) from moving stores across either mark, so a
 * process killed anywhere in between leaves what ring_recover expects. */
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

/* Write the batch from tail; the caller made room. Returns the new tail. */
/* Records get seqs from seq on and the time now, or, when restoring, the
 * given seqs[] and ts[]. */
static uint64_t write_records(pmq_ring_t *r, uint64_t pos, const char *const *parts,
                              const uint32_t *lens, uint32_t count, uint64_t seq,
                              const uint64_t *seqs, const int64_t *tss)
{
    int64_t ts = pmq_now_real();
    for (uint32_t i = 0; i < count; i++) {
        uint64_t size = rec_size(lens[i]), off = pos & r->mask, room = r->capacity - off;
        if (size > room) {
            pmq_rec_t pad = {.len = (uint32_t)(room - PMQ_REC_HDR), .type = PMQ_REC_PAD};
            memcpy(r->data + off, &pad, sizeof pad);
            pos += room;
            off = 0;
        }
        pmq_rec_t rec = {.len = lens[i], .type = PMQ_REC_DATA, .seq = seqs ? seqs[i] : seq++,
                         .ts_ns = tss ? tss[i] : ts};
        memcpy(r->data + off, &rec, sizeof rec);
        if (lens[i])
            memcpy(r->data + off + PMQ_REC_HDR, parts[i], lens[i]);
        pos = skip_gap(r, pos + size);
    }
    return pos;
}

/* Longest single sleep of a publisher waiting for space. The wake it asks for
 * comes with a quarter ring of slack (see pmq_ring_hdr_t.space_target), so it
 * also looks for itself this often: a slow reader that frees just enough
 * does not leave it asleep until its deadline. */
#define PMQ_SPACE_SLICE_NS (10LL * 1000000LL)
/* Re-taking the mutex after a wait is not waiting for space: allow this much
 * beyond the publish deadline, so that contention alone never means Full. */
#define PMQ_RELOCK_GRACE_NS (1000LL * 1000000LL)

/* Wait for space with the mutex released. Returns 0 with the mutex held again
 * (retry), or an error with it released. */
static int wait_for_space(pmq_ring_t *r, uint64_t target, int64_t deadline)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t seen = LOAD_ACQ(&h->space_seq);
    uint64_t want = target + r->capacity / 4;
    /* Stored before the flag; a reader loads it after its CAS, so either the
     * reader sees it or our re-check below sees the reader's cursor. */
    STORE_SC(&h->space_target, want < h->tail ? want : h->tail);
    STORE_SC(&h->space_waiters, 1);
    int rc = pmq_ring_gate(r, &h->gate); /* re-check after announcing */
    if (rc < 0) {
        pmq_ring_unlock(r);
        return rc;
    }
    if (h->gate >= target || LOAD_ACQ(&h->closed))
        return 0;
    int64_t now = pmq_now_mono(), left = deadline < 0 ? -1 : deadline - now;
    pmq_ring_unlock(r);
    if (deadline >= 0 && left <= 0)
        return PMQ_FULL;
    if (left < 0 || left > PMQ_SPACE_SLICE_NS)
        left = PMQ_SPACE_SLICE_NS;
    if (pmq_futex_wait(&h->space_seq, seen, left) == -EINTR)
        return PMQ_EINTR;
    rc = pmq_ring_lock(r, deadline < 0 ? -1 : PMQ_RELOCK_GRACE_NS, NULL);
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

int64_t pmq_ring_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                         uint32_t count, int64_t timeout_ns)
{
    uint64_t bytes;
    int64_t bad = r ? parts_ok(r, parts, lens, count, &bytes) : PMQ_EINVAL;
    if (bad)
        return bad;
    pmq_ring_hdr_t *h = r->hdr;
    /* The timeout counts from the call, but the clock is read only when the
     * lock's spin fails (blocked_since) or at the first wait for space: a
     * publish that gets the lock and finds room reads it only for its records' time. */
    int64_t deadline = -1, blocked_since = -1;
    int rc = pmq_ring_lock(r, pmq_deadline_after(PMQ_RELOCK_GRACE_NS, timeout_ns), &blocked_since),
        waited = 0; /* timeout + grace */
    if (rc < 0) {
        if (rc != -ETIMEDOUT)
            return rc;
        ADD_RLX(&h->publish_full, 1);
        return PMQ_FULL;
    }
    for (;;) {
        if ((rc = closed_code(r)) != 0) {
            pmq_ring_unlock(r);
            return rc;
        }
        uint64_t tail = h->tail, end = plan_end(r, tail, lens, count);
        if (end - tail > r->capacity) {
            pmq_ring_unlock(r);
            return PMQ_ETOOBIG;
        }
        uint64_t target = end > r->capacity ? end - r->capacity : 0;
        rc = h->head >= target ? 0 : reclaim(r, target);
        if (rc == 0)
            break;
        if (rc == PMQ_FULL && timeout_ns != 0) {
            if (!waited++) {
                ADD_RLX(&h->publish_waits, 1);
                deadline = pmq_deadline_after(blocked_since >= 0 ? blocked_since : pmq_now_mono(),
                                              timeout_ns);
            }
            rc = wait_for_space(r, target, deadline);
            if (rc == 0)
                continue; /* the mutex is held again */
            if (rc != PMQ_FULL)
                return rc; /* EINTR or corrupt: the mutex is released */
            ADD_RLX(&h->publish_full, 1);
            return PMQ_FULL;
        }
        if (rc == PMQ_FULL)
            ADD_RLX(&h->publish_full, 1);
        else
            ADD_RLX(&h->corrupt, 1);
        pmq_ring_unlock(r);
        return rc;
    }
    uint64_t tail = h->tail, seq = h->next_seq, end;
    intent_begin(h, tail, plan_end(r, tail, lens, count), seq, seq + count);
    end = write_records(r, tail, parts, lens, count, seq, NULL, NULL);
    h->next_seq = seq + count;
    h->published_bytes += bytes;
    STORE_REL(&h->tail, end); /* the commit: readers acquire tail */
    intent_end(h);
    pmq_ring_unlock(r);
    if (wake_if_waiting(&h->data_seq, &h->data_waiters))
        ADD_RLX(&h->wakeups, 1);
    return (int64_t)seq;
}

int pmq_ring_restore(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                     const uint64_t *seqs, const int64_t *ts, uint32_t count)
{
    uint64_t bytes;
    int bad = r ? parts_ok(r, parts, lens, count, &bytes) : PMQ_EINVAL;
    if (bad || !seqs || !ts)
        return bad ? bad : PMQ_EINVAL;
    for (uint32_t i = 0; i < count; i++)
        if ((i && seqs[i] <= seqs[i - 1]) || seqs[i] >= (1ULL << 62))
            return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    uint64_t tail = h->tail, end = plan_end(r, tail, lens, count);
    if (seqs[0] < h->next_seq)
        rc = PMQ_EINVAL;
    else if (end - tail > r->capacity)
        rc = PMQ_ETOOBIG;
    else if (end > r->capacity && h->head < end - r->capacity)
        rc = reclaim(r, end - r->capacity);
    if (rc == 0) {
        uint64_t next = seqs[count - 1] + 1;
        intent_begin(h, tail, end, h->next_seq, next);
        write_records(r, tail, parts, lens, count, 0, seqs, ts);
        h->next_seq = next;
        STORE_REL(&h->tail, end);
        intent_end(h);
    }
    pmq_ring_unlock(r);
    return rc;
}

int64_t pmq_ring_publish1(pmq_ring_t *r, const char *data, uint32_t len, int64_t timeout_ns)
{
    return pmq_ring_publish(r, &data, &len, 1, timeout_ns);
}

/* For tests of recovery only: run a publish of one payload up to `phase` and
 * return with the mutex still held, so that the caller can die there:
 * 0 just locked; 1 record and next_seq written, tail not moved; 2 tail moved,
 * intent not yet cleared. Returns the seq the record got, or an error. */
int64_t pmq_ring_test_stop_in_publish(pmq_ring_t *r, const char *data, uint32_t len, int phase)
{
    if (!r || !data || len > r->max_msg || phase < 0 || phase > 2)
        return PMQ_EINVAL;
    int rc = pmq_ring_lock_admin(r);
    if (rc < 0 || phase == 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    uint64_t tail = h->tail, seq = h->next_seq, end = plan_end(r, tail, &len, 1);
    if (end - tail > r->capacity || (h->head < end - r->capacity && end > r->capacity &&
                                     reclaim(r, end - r->capacity) < 0))
        return PMQ_FULL;
    intent_begin(h, tail, end, seq, seq + 1);
    write_records(r, tail, &data, &len, 1, seq, NULL, NULL);
    h->next_seq = seq + 1;
    if (phase == 2)
        STORE_REL(&h->tail, end);
    return (int64_t)seq;
}

/* ---- reading -------------------------------------------------------------- */

int pmq_batch_add(const pmq_ring_t *r, uint64_t pos, const pmq_rec_t *rec, pmq_batch_t *b)
{
    if (b->n >= b->max || rec->len > b->buflen - b->used)
        return 0;
    uint32_t i = b->n++;
    uint64_t at = (pos & r->mask) + PMQ_REC_HDR; /* rec_check: the payload lies within data */
    if (b->buf && rec->len)
        memcpy(b->buf + b->used, r->data + at, rec->len);
    b->offs[i] = b->buf ? b->used : at;
    b->lens[i] = rec->len;
    b->seqs[i] = rec->seq;
    b->ts[i] = rec->ts_ns;
    if (b->pos)
        b->pos[i] = pos;
    b->bytes += rec->len;
    b->used += ALIGN8((uint64_t)rec->len);
    if (b->used > b->buflen)
        b->used = b->buflen;
    return 1;
}

/* Copy records from pos (below tail) into the batch, up to max; set *next past
 * the last one taken. Returns the count or PMQ_ECORRUPT / PMQ_EBUFSMALL. */
static int collect(const pmq_ring_t *r, uint64_t pos, uint64_t tail, pmq_batch_t *b,
                   uint32_t max, uint64_t *next)
{
    pmq_rec_t rec;
    b->n = 0;
    b->used = b->bytes = 0;
    while (pos < tail && b->n < max) {
        uint64_t size = rec_check(r, pos, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA && !pmq_batch_add(r, pos, &rec, b)) {
            if (b->n == 0)
                return PMQ_EBUFSMALL;
            break;
        }
        pos = skip_gap(r, pos + size);
    }
    *next = pos;
    return (int)b->n;
}

/* The member's group, or NULL (*rc set) when the member or group is gone. */
pmq_group_t *pmq_member_group(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, int *rc)
{
    if (LOAD_ACQ(&m->state) != PMQ_SLOT_ACTIVE || __atomic_load_n(&m->gen, __ATOMIC_RELAXED) != gen) {
        *rc = PMQ_GONE;
        return NULL;
    }
    uint32_t gi = __atomic_load_n(&m->group, __ATOMIC_RELAXED);
    if (gi >= r->max_groups) {
        *rc = PMQ_ECORRUPT;
        return NULL;
    }
    pmq_group_t *g = &r->groups[gi];
    if (LOAD_ACQ(&g->state) != PMQ_SLOT_ACTIVE ||
        __atomic_load_n(&g->gen, __ATOMIC_RELAXED) != __atomic_load_n(&m->group_gen, __ATOMIC_RELAXED)) {
        *rc = PMQ_GONE;
        return NULL;
    }
    return g;
}

/* Longest single sleep of a reader: a publisher killed between its commit and
 * its wake-up costs a sleeping reader at most this much. */
#define PMQ_READ_SLICE_NS (1000LL * 1000000LL)

/* Sleep on the readers' word, at most PMQ_READ_SLICE_NS at a time. */
static int sleep_on_data(pmq_ring_hdr_t *h, uint32_t seen, int64_t deadline)
{
    int64_t left = deadline < 0 ? -1 : deadline - pmq_now_mono();
    if (deadline >= 0 && left <= 0)
        return PMQ_EMPTY;
    if (left < 0 || left > PMQ_READ_SLICE_NS)
        left = PMQ_READ_SLICE_NS;
    if (pmq_futex_wait(&h->data_seq, seen, left) == -EINTR)
        return PMQ_EINTR;
    return 0; /* woken, spurious or timed out: the caller re-checks */
}

/* Sleep until tail moves, the member goes, the deadline passes or someone
 * wakes us. Everything the waker might have changed is re-checked after the
 * flag is stored: tail, the cursor, closed, and membership (a leave bumps the
 * word after freeing the slot). */
static int wait_for_data(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, pmq_group_t *g,
                         uint64_t cur, uint64_t tail, int64_t deadline)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t seen = LOAD_ACQ(&h->data_seq);
    STORE_SC(&h->data_waiters, 1);
    int rc = 0;
    if (LOAD_SC(&h->tail) != tail || LOAD_SC(&g->cursor) != cur || LOAD_SC(&h->closed) ||
        pmq_member_group(r, m, gen, &rc) != g)
        return 0;
    return sleep_on_data(h, seen, deadline);
}

/* Sleep until an ack group has something for us: tail moved, a delivery became
 * ready, or the window opened (see wait_for_data). */
static int wait_for_ack(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, pmq_group_t *g,
                        const pmq_ack_snap_t *snap, int64_t deadline)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t seen = LOAD_ACQ(&h->data_seq);
    STORE_SC(&h->data_waiters, 1);
    int rc = 0;
    if (LOAD_SC(&h->tail) != snap->tail || LOAD_SC(&g->ready) != snap->ready ||
        LOAD_SC(&g->pend_head) != snap->pend_head || LOAD_SC(&h->closed) ||
        pmq_member_group(r, m, gen, &rc) != g)
        return 0;
    return sleep_on_data(h, seen, deadline);
}

/* Take the records of b, read from cur up to next, for a plain group: CAS its
 * cursor. The count, PMQ_RETRY (another member took them first, or they were
 * only padding: look again), or an error. */
static int plain_claim(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, pmq_group_t *g,
                       uint64_t cur, uint64_t next, const pmq_batch_t *b)
{
    pmq_ring_hdr_t *h = r->hdr;
    int rc = 0;
    if (!__atomic_compare_exchange_n(&g->cursor, &cur, next, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_RELAXED))
        return PMQ_RETRY; /* lost the race: the copy is discarded */
    /* A member removed while it copied (its group freed, the space reused)
     * must not return the copy: the CAS then hit a freed slot, whose cursor
     * was poisoned, or a reused one (see group.c). */
    if (pmq_member_group(r, m, gen, &rc) != g)
        return rc;
    if (next >= LOAD_SC(&h->space_target))
        wake_if_waiting(&h->space_seq, &h->space_waiters);
    if (b->n == 0)
        return PMQ_RETRY; /* only padding */
    ADD_RLX(&g->delivered, (uint64_t)b->n);
    ADD_RLX(&g->delivered_bytes, b->bytes);
    ADD_RLX(&m->delivered, (uint64_t)b->n);
    return (int)b->n;
}

/* A plain group's read: copy, then claim (CAS the cursor); or, zero-copy
 * (b->buf NULL), a peek: the records' places and the claim to make once the
 * caller copied them. Returns the count, PMQ_RETRY, 0 for nothing there, or an
 * error. *cur_out and *tail_out say what it saw. */
static int plain_read(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, pmq_group_t *g,
                      pmq_batch_t *b, uint32_t max, uint64_t *cur_out, uint64_t *tail_out)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint64_t cur = LOAD_ACQ(&g->cursor), tail = LOAD_ACQ(&h->tail), next = cur;
    int rc;
    *cur_out = cur;
    *tail_out = tail;
    if (cur == tail)
        return 0;
    if (cur < tail && tail - cur <= r->capacity)
        rc = collect(r, cur, tail, b, max, &next);
    else
        rc = PMQ_ECORRUPT;
    if (rc < 0) {
        /* Another member may have claimed and the publisher reused the space,
         * or our group was freed (its cursor poisoned): only an unmoved
         * cursor of a live group means corruption. */
        if (LOAD_SC(&g->cursor) != cur)
            return PMQ_RETRY;
        if (pmq_member_group(r, m, gen, &rc) != g)
            return rc;
        if (rc == PMQ_ECORRUPT)
            ADD_RLX(&h->corrupt, 1);
        return rc;
    }
    if (!b->buf && rc > 0) { /* a peek: the caller copies, then claims (pmq_ring_claim) */
        b->claim_from = cur;
        b->claim_to = next;
        return rc;
    }
    return plain_claim(r, m, gen, g, cur, next, b);
}

int pmq_ring_claim(pmq_ring_t *r, uint32_t member, uint32_t gen, const pmq_batch_t *b)
{
    if (!r || member >= r->max_members || !b || b->claim_to <= b->claim_from ||
        b->claim_to - b->claim_from > r->capacity || b->claim_to > LOAD_ACQ(&r->hdr->tail))
        return PMQ_EINVAL;
    pmq_member_t *m = &r->members[member];
    int rc = 0;
    pmq_group_t *g = pmq_member_group(r, m, gen, &rc);
    if (!g)
        return rc;
    if (__atomic_load_n(&g->flags, __ATOMIC_RELAXED) & PMQ_GROUP_ACK)
        return PMQ_EINVAL; /* an ack group's cursor moves under its lock only */
    rc = plain_claim(r, m, gen, g, b->claim_from, b->claim_to, b);
    return rc == PMQ_RETRY ? 0 : rc;
}

/* How long a reader that finds nothing polls tail before it sleeps. A reader
 * that keeps up with a steady stream then gets the next record without a
 * system call on either side (no sleep, so no wake); an idle one pays this
 * once per wait (a few microseconds of CPU per second of idleness). */
#define PMQ_SPIN_NS (20LL * 1000)

/* Poll tail for up to PMQ_SPIN_NS from now (and not past the deadline): 1 if it moved. */
static int spin_for_tail(pmq_ring_hdr_t *h, uint64_t tail, int64_t now, int64_t deadline)
{
    int64_t until = now + PMQ_SPIN_NS;
    if (deadline >= 0 && deadline < until)
        until = deadline;
    for (uint32_t i = 1;; i++) {
        if (LOAD_ACQ(&h->tail) != tail)
            return 1;
        pmq_cpu_relax();
        if ((i & 63) == 0 && pmq_now_mono() >= until)
            return 0;
    }
}

int pmq_ring_read(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                  uint32_t max_count, int64_t timeout_ns)
{
    if (!r || member >= r->max_members || !b || max_count == 0 || !b->offs ||
        !b->lens || !b->seqs || !b->ts)
        return PMQ_EINVAL;
    if (max_count > b->max)
        max_count = b->max;
    if (max_count > INT32_MAX)
        max_count = INT32_MAX; /* the count is returned as an int */
    pmq_ring_hdr_t *h = r->hdr;
    pmq_member_t *m = &r->members[member];
    int64_t deadline = -1; /* from when it first finds nothing: a read that finds records reads no clock */
    int spun = 0;
    b->deadline = -1;
    for (;;) {
        int rc = 0;
        pmq_group_t *g = pmq_member_group(r, m, gen, &rc);
        if (!g)
            return rc;
        int ack = (__atomic_load_n(&g->flags, __ATOMIC_RELAXED) & PMQ_GROUP_ACK) != 0; /* once */
        uint64_t cur = 0, tail = 0;
        b->claim_from = b->claim_to = 0;
        pmq_ack_snap_t snap = {.blocked_since = -1};
        if (ack)
            rc = pmq_ack_read(r, m, member, g, gen, b, max_count, &snap);
        else
            rc = plain_read(r, m, gen, g, b, max_count, &cur, &tail);
        if (rc == PMQ_RETRY)
            continue;
        if (rc != 0)
            return rc;
        if ((rc = closed_code(r)) != 0)
            return rc;
        if (timeout_ns == 0)
            return PMQ_EMPTY;
        if (!spun++) { /* the first time it finds nothing: poll a while before sleeping */
            int64_t now = pmq_now_mono();
            /* an ack read that waited for its group's lock counts that wait */
            int64_t start = ack && snap.blocked_since >= 0 ? snap.blocked_since : now;
            b->deadline = deadline = pmq_deadline_after(start, timeout_ns);
            if (spin_for_tail(h, ack ? snap.tail : tail, now, deadline))
                continue;
        }
        if (ack)
            rc = wait_for_ack(r, m, gen, g, &snap, deadline);
        else
            rc = wait_for_data(r, m, gen, g, cur, tail, deadline);
        if (rc < 0)
            return rc;
    }
}

int pmq_ring_read1(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                   int64_t timeout_ns)
{
    int rc = pmq_ring_read(r, member, gen, b, 1, timeout_ns);
    return rc == 1 ? (int)b->lens[0] : rc;
}

