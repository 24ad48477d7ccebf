/*
 * ring.c - the multi-producer, multi-group ring of one topic segment.
 *
 * Publishers serialise on the segment's robust mutex, write whole records
 * beyond tail and commit them with one release-store of tail. Readers never
 * take the mutex: a member claims records by a CAS on its group's cursor, after
 * copying them out; a failed CAS discards the copy. Publishers never overwrite
 * at or above the lowest cursor (the gate), so a copy taken while the cursor
 * still holds its old value is intact. Layout: pmq_ring.h.
 */
#define _GNU_SOURCE
#include "pmq_ring.h"
#include "pmq_sync.h"

#include <errno.h>
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

uint32_t pmq_layout_version(void) { return PMQ_LAYOUT_VERSION; }

static uint64_t rec_size(uint64_t len) { return ALIGN8(PMQ_REC_HDR + len); }

/* Positions are kept normalised: never inside the implicit gap of fewer than
 * a header's bytes at the end of the data area. */
static uint64_t skip_gap(const pmq_ring_t *r, uint64_t pos)
{
    uint64_t room = r->capacity - (pos & r->mask);
    return room < PMQ_REC_HDR ? pos + room : pos;
}

/* Copy out and check the record at pos, which must lie below limit. Returns
 * its size in the ring (a padding record's too), or 0 if anything is out of
 * bounds. Copying first means a racing overwrite cannot change what is checked. */
static uint64_t rec_check(const pmq_ring_t *r, uint64_t pos, uint64_t limit, pmq_rec_t *rec)
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

/* ---- lock and recovery ------------------------------------------------ */

static void recount_members(pmq_ring_t *r)
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
            STORE_REL(&gr->state, PMQ_SLOT_FREE);
    }
}

static int compute_gate(pmq_ring_t *r, uint64_t *gate);

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
    recount_members(r);
    return compute_gate(r, &h->gate);
}

static int ring_lock(pmq_ring_t *r, int64_t deadline_real_ns)
{
    int rc = pmq_mutex_lock(&r->hdr->lock, deadline_real_ns);
    if (rc == EOWNERDEAD) {
        int rec = ring_recover(r);
        pthread_mutex_consistent(&r->hdr->lock);
        if (rec < 0) {
            ADD_RLX(&r->hdr->corrupt, 1);
            pthread_mutex_unlock(&r->hdr->lock);
            return rec;
        }
        return 0;
    }
    if (rc == -ENOTRECOVERABLE)
        return PMQ_ECORRUPT;
    return rc;
}

/* For everything but publish (which has its own timeout): the mutex is only
 * ever held for microseconds, so a wait this long means a garbage lock word,
 * and the caller gets -ETIMEDOUT instead of hanging. */
#define PMQ_ADMIN_LOCK_NS (10LL * 1000000000LL)

static int ring_lock_admin(pmq_ring_t *r)
{
    return ring_lock(r, pmq_now_real() + PMQ_ADMIN_LOCK_NS);
}

static void ring_unlock(pmq_ring_t *r) { pthread_mutex_unlock(&r->hdr->lock); }

/* ---- init and attach -------------------------------------------------- */

static int params_ok(const pmq_ring_params_t *p)
{
    return p->capacity >= PMQ_MIN_CAPACITY && p->capacity <= PMQ_MAX_CAPACITY &&
           (p->capacity & (p->capacity - 1)) == 0 && p->max_msg > 0 &&
           rec_size(p->max_msg) <= p->capacity / 2 && p->max_groups > 0 &&
           p->max_groups <= PMQ_MAX_GROUPS && p->max_members > 0 &&
           p->max_members <= PMQ_MAX_MEMBERS;
}

static uint64_t data_offset(uint32_t groups, uint32_t members)
{
    uint64_t end = PMQ_HDR_SIZE + (uint64_t)groups * sizeof(pmq_group_t) +
                   (uint64_t)members * sizeof(pmq_member_t);
    return (end + 4095) & ~4095ULL;
}

uint64_t pmq_ring_size(const pmq_ring_params_t *p)
{
    return params_ok(p) ? data_offset(p->max_groups, p->max_members) + p->capacity : 0;
}

int pmq_ring_init(void *base, uint64_t len, const pmq_ring_params_t *p)
{
    uint64_t size = pmq_ring_size(p);
    if (!base || size == 0 || len < size)
        return PMQ_EINVAL;
    pmq_ring_hdr_t *h = base;
    memset(base, 0, data_offset(p->max_groups, p->max_members));
    h->magic = PMQ_RING_MAGIC;
    h->version = PMQ_LAYOUT_VERSION;
    h->seg_len = size;
    h->capacity = p->capacity;
    h->groups_off = PMQ_HDR_SIZE;
    h->members_off = h->groups_off + (uint64_t)p->max_groups * sizeof(pmq_group_t);
    h->pending_off = h->members_off + (uint64_t)p->max_members * sizeof(pmq_member_t);
    h->data_off = data_offset(p->max_groups, p->max_members);
    h->max_groups = p->max_groups;
    h->max_members = p->max_members;
    h->pending_cap = p->pending_cap;
    h->max_msg = p->max_msg;
    h->creator_pid = p->creator_pid;
    h->creator_start = p->creator_start;
    h->created_ns = pmq_now_real();
    h->next_seq = 1;
    int rc = pmq_mutex_init(&h->lock);
    if (rc < 0)
        return rc;
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
    if (h->magic != PMQ_RING_MAGIC || h->version != PMQ_LAYOUT_VERSION)
        return PMQ_EVERSION;
    pmq_ring_params_t p = {
        .capacity = h->capacity, .max_msg = h->max_msg,
        .max_groups = h->max_groups, .max_members = h->max_members,
    };
    uint64_t doff = data_offset(p.max_groups, p.max_members);
    if (!params_ok(&p) || h->seg_len != len || h->groups_off != PMQ_HDR_SIZE ||
        h->members_off != h->groups_off + (uint64_t)p.max_groups * sizeof(pmq_group_t) ||
        h->pending_off != h->members_off + (uint64_t)p.max_members * sizeof(pmq_member_t) ||
        h->data_off != doff || doff + p.capacity != len)
        return PMQ_ECORRUPT;
    r->base = base;
    r->len = len;
    r->hdr = h;
    r->groups = (pmq_group_t *)(r->base + h->groups_off);
    r->members = (pmq_member_t *)(r->base + h->members_off);
    r->data = r->base + doff;
    r->capacity = p.capacity;
    r->mask = p.capacity - 1;
    r->max_groups = p.max_groups;
    r->max_members = p.max_members;
    r->max_msg = p.max_msg;
    r->pending_cap = h->pending_cap;
    return 0;
}

/* ---- waking ------------------------------------------------------------ */

/* Clear the flag before bumping the word: a sleeper that sets the flag after
 * the clear either read the word before the bump (its wait returns at once)
 * or leaves the flag set for the next waker. */
static void wake(uint32_t *seq, uint32_t *waiters)
{
    STORE_SC(waiters, 0);
    __atomic_fetch_add(seq, 1, __ATOMIC_SEQ_CST);
    pmq_futex_wake_all(seq);
}

/* Called after a store that may let a sleeper proceed. The fence orders that
 * store before the load of the flag; the sleeper stores the flag before it
 * re-checks, so one of the two sees the other. No system call without a sleeper. */
static int wake_if_waiting(uint32_t *seq, uint32_t *waiters)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(waiters, __ATOMIC_RELAXED) == 0)
        return 0;
    wake(seq, waiters);
    return 1;
}

void pmq_ring_wake_all(pmq_ring_t *r)
{
    wake(&r->hdr->data_seq, &r->hdr->data_waiters);
    wake(&r->hdr->space_seq, &r->hdr->space_waiters);
}

void pmq_ring_close(pmq_ring_t *r)
{
    STORE_SC(&r->hdr->closed, 1);
    pmq_ring_wake_all(r);
}

/* ---- publishing --------------------------------------------------------- */

/* The lowest cursor of any live group, or tail when there is none. */
static int compute_gate(pmq_ring_t *r, uint64_t *gate)
{
    uint64_t tail = r->hdr->tail, head = r->hdr->head, g = tail;
    for (uint32_t i = 0; i < r->max_groups; i++) {
        pmq_group_t *gr = &r->groups[i];
        if (LOAD_ACQ(&gr->state) != PMQ_SLOT_ACTIVE)
            continue;
        uint64_t c = LOAD_SC(&gr->cursor);
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
        int rc = compute_gate(r, &h->gate);
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

/* Write the batch from tail; the caller made room. Returns the new tail. */
static uint64_t write_records(pmq_ring_t *r, uint64_t pos, const char *data,
                              const uint32_t *lens, uint32_t count, uint64_t seq)
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
        pmq_rec_t rec = {.len = lens[i], .type = PMQ_REC_DATA, .seq = seq++, .ts_ns = ts};
        memcpy(r->data + off, &rec, sizeof rec);
        memcpy(r->data + off + PMQ_REC_HDR, data, lens[i]);
        data += lens[i];
        pos = skip_gap(r, pos + size);
    }
    return pos;
}

/* Wait for space with the mutex released. Returns 0 with the mutex held again
 * (retry), or an error with it released. */
static int wait_for_space(pmq_ring_t *r, uint64_t target, int64_t deadline, int64_t deadline_real)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t seen = LOAD_ACQ(&h->space_seq);
    STORE_SC(&h->space_waiters, 1);
    int rc = compute_gate(r, &h->gate); /* re-check after announcing */
    if (rc < 0) {
        ring_unlock(r);
        return rc;
    }
    if (h->gate >= target || h->closed)
        return 0;
    int64_t left = deadline < 0 ? -1 : deadline - pmq_now_mono();
    ring_unlock(r);
    if (deadline >= 0 && left <= 0)
        return PMQ_FULL;
    if (pmq_futex_wait(&h->space_seq, seen, left) == -EINTR)
        return PMQ_EINTR;
    rc = ring_lock(r, deadline_real);
    return rc == -ETIMEDOUT ? PMQ_FULL : rc;
}

int64_t pmq_ring_publish(pmq_ring_t *r, const char *data, const uint32_t *lens,
                         uint32_t count, int64_t timeout_ns)
{
    if (!r || !data || !lens || count == 0)
        return PMQ_EINVAL;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (lens[i] > r->max_msg)
            return PMQ_ETOOBIG;
        bytes += lens[i];
    }
    pmq_ring_hdr_t *h = r->hdr;
    int64_t now = pmq_now_mono(), deadline = timeout_ns < 0 ? -1 : now + timeout_ns;
    int64_t deadline_real = timeout_ns < 0 ? -1 : pmq_now_real() + timeout_ns;
    int rc = ring_lock(r, deadline_real), waited = 0;
    if (rc < 0) {
        if (rc != -ETIMEDOUT)
            return rc;
        ADD_RLX(&h->publish_full, 1);
        return PMQ_FULL;
    }
    for (;;) {
        if (h->closed) {
            ring_unlock(r);
            return PMQ_CLOSED;
        }
        uint64_t tail = h->tail, end = plan_end(r, tail, lens, count);
        if (end - tail > r->capacity) {
            ring_unlock(r);
            return PMQ_ETOOBIG;
        }
        uint64_t target = end > r->capacity ? end - r->capacity : 0;
        rc = h->head >= target ? 0 : reclaim(r, target);
        if (rc == 0)
            break;
        if (rc == PMQ_FULL && timeout_ns != 0) {
            if (!waited++)
                ADD_RLX(&h->publish_waits, 1);
            rc = wait_for_space(r, target, deadline, deadline_real);
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
        ring_unlock(r);
        return rc;
    }
    uint64_t tail = h->tail, seq = h->next_seq, end;
    h->intent = (pmq_intent_t){.active = 1, .old_tail = tail, .old_seq = seq,
                               .new_tail = plan_end(r, tail, lens, count),
                               .new_seq = seq + count};
    end = write_records(r, tail, data, lens, count, seq);
    h->next_seq = seq + count;
    STORE_REL(&h->tail, end); /* the commit: readers acquire tail */
    h->intent.active = 0;
    h->published_bytes += bytes;
    ring_unlock(r);
    if (wake_if_waiting(&h->data_seq, &h->data_waiters))
        ADD_RLX(&h->wakeups, 1);
    return (int64_t)seq;
}

int64_t pmq_ring_publish1(pmq_ring_t *r, const char *data, uint32_t len, int64_t timeout_ns)
{
    return pmq_ring_publish(r, data, &len, 1, timeout_ns);
}

/* For tests of recovery only: run a publish of one payload up to `phase` and
 * return with the mutex still held, so that the caller can die there:
 * 0 just locked; 1 record and next_seq written, tail not moved; 2 tail moved,
 * intent not yet cleared. Returns the seq the record got, or an error. */
int64_t pmq_ring_test_stop_in_publish(pmq_ring_t *r, const char *data, uint32_t len, int phase)
{
    if (!r || !data || len > r->max_msg || phase < 0 || phase > 2)
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0 || phase == 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    uint64_t tail = h->tail, seq = h->next_seq, end = plan_end(r, tail, &len, 1);
    if (end - tail > r->capacity || (h->head < end - r->capacity && end > r->capacity &&
                                     reclaim(r, end - r->capacity) < 0))
        return PMQ_FULL;
    h->intent = (pmq_intent_t){.active = 1, .old_tail = tail, .old_seq = seq,
                               .new_tail = end, .new_seq = seq + 1};
    write_records(r, tail, data, &len, 1, seq);
    h->next_seq = seq + 1;
    if (phase == 2)
        STORE_REL(&h->tail, end);
    return (int64_t)seq;
}

/* ---- groups and members --------------------------------------------------- */

/* Position of the first record with seq >= want, or tail. Mutex held. */
static int seek_seq(pmq_ring_t *r, uint64_t want, uint64_t *out)
{
    uint64_t pos = r->hdr->head, tail = r->hdr->tail;
    pmq_rec_t rec;
    while (pos < tail) {
        uint64_t size = rec_check(r, pos, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA && rec.seq >= want)
            break;
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

static int free_slot(uint32_t *state, uint32_t n, size_t stride)
{
    for (uint32_t i = 0; i < n; i++)
        if (*(uint32_t *)((char *)state + i * stride) == PMQ_SLOT_FREE)
            return (int)i;
    return -1;
}

static int new_group(pmq_ring_t *r, const char *name, uint32_t flags, int start, uint64_t start_seq)
{
    pmq_ring_hdr_t *h = r->hdr;
    int gi = free_slot(&r->groups[0].state, r->max_groups, sizeof(pmq_group_t));
    if (gi < 0)
        return PMQ_ENOSLOT;
    uint64_t cursor = h->tail;
    if (start == PMQ_START_EARLIEST)
        cursor = h->head;
    else if (start == PMQ_START_SEQ) {
        int rc = seek_seq(r, start_seq, &cursor);
        if (rc < 0)
            return rc;
    }
    pmq_group_t *g = &r->groups[gi];
    pmq_rec_t rec;
    g->flags = flags;
    g->gen++;
    g->members = 0;
    memset(g->name, 0, sizeof g->name);
    strncpy(g->name, name, sizeof g->name - 1);
    g->delivered = g->delivered_bytes = 0;
    g->created_ns = (uint64_t)pmq_now_real();
    g->start_seq = rec_check(r, cursor, h->tail, &rec) && rec.type == PMQ_REC_DATA ? rec.seq : h->next_seq;
    STORE_SC(&g->cursor, cursor);
    if (cursor < h->gate)
        h->gate = cursor; /* the gate stays a lower bound of every cursor */
    STORE_REL(&g->state, PMQ_SLOT_ACTIVE);
    return gi;
}

int pmq_group_join(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                   uint64_t start_seq, uint64_t owner, int32_t pid, uint32_t *member_gen)
{
    if (!r || !name || !member_gen || strnlen(name, PMQ_NAME_MAX - 16) >= PMQ_NAME_MAX - 16 ||
        (flags & ~(PMQ_GROUP_ACK)) != 0 || start < PMQ_START_LATEST || start > PMQ_START_SEQ)
        return PMQ_EINVAL;
    int anon = name[0] == '\0';
    if (anon)
        flags |= PMQ_GROUP_ANON;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    int mi = free_slot(&r->members[0].state, r->max_members, sizeof(pmq_member_t));
    int gi = anon ? -1 : find_group(r, name);
    if (mi < 0)
        rc = PMQ_ENOSLOT;
    else if (gi >= 0 && r->groups[gi].flags != flags)
        rc = PMQ_EINVAL;
    else if (gi < 0)
        rc = gi = new_group(r, name, flags, start, start_seq);
    if (rc >= 0) {
        pmq_group_t *g = &r->groups[gi];
        pmq_member_t *m = &r->members[mi];
        m->group = (uint32_t)gi;
        m->group_gen = g->gen;
        m->owner = owner;
        m->pid = pid;
        m->delivered = 0;
        *member_gen = ++m->gen;
        g->members++;
        STORE_REL(&m->state, PMQ_SLOT_ACTIVE);
        rc = mi;
    }
    ring_unlock(r);
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
    if ((g->flags & PMQ_GROUP_ANON) && g->members == 0)
        STORE_REL(&g->state, PMQ_SLOT_FREE);
}

int pmq_member_leave(pmq_ring_t *r, uint32_t member, uint32_t gen)
{
    if (!r || member >= r->max_members)
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_member_t *m = &r->members[member];
    if (m->state == PMQ_SLOT_ACTIVE && m->gen == gen)
        remove_member(r, m);
    else
        rc = PMQ_GONE;
    ring_unlock(r);
    pmq_ring_wake_all(r); /* a reader blocked on this member returns PMQ_GONE */
    return rc;
}

int pmq_ring_reap(pmq_ring_t *r, uint64_t owner)
{
    if (!r)
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r), n = 0;
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < r->max_members; i++) {
        pmq_member_t *m = &r->members[i];
        if (m->state == PMQ_SLOT_ACTIVE && m->owner == owner) {
            remove_member(r, m);
            n++;
        }
    }
    ring_unlock(r);
    if (n)
        pmq_ring_wake_all(r);
    return n;
}

/* ---- reading -------------------------------------------------------------- */

typedef struct batch {
    char *buf;
    uint64_t buflen, used, bytes;
    uint32_t max, n;
    uint64_t *offs, *seqs;
    uint32_t *lens;
    int64_t *ts;
} batch_t;

/* Copy records from pos (below tail) into the batch; set *next past the last
 * one taken. Returns the count or PMQ_ECORRUPT / PMQ_EBUFSMALL. */
static int collect(const pmq_ring_t *r, uint64_t pos, uint64_t tail, batch_t *b, uint64_t *next)
{
    pmq_rec_t rec;
    b->n = 0;
    b->used = b->bytes = 0;
    while (pos < tail && b->n < b->max) {
        uint64_t size = rec_check(r, pos, tail, &rec);
        if (size == 0)
            return PMQ_ECORRUPT;
        if (rec.type == PMQ_REC_DATA) {
            if (rec.len > b->buflen - b->used) {
                if (b->n == 0)
                    return PMQ_EBUFSMALL;
                break;
            }
            memcpy(b->buf + b->used, r->data + (pos & r->mask) + PMQ_REC_HDR, rec.len);
            b->offs[b->n] = b->used;
            b->lens[b->n] = rec.len;
            b->seqs[b->n] = rec.seq;
            b->ts[b->n] = rec.ts_ns;
            b->n++;
            b->bytes += rec.len;
            b->used += ALIGN8(rec.len);
            if (b->used > b->buflen)
                b->used = b->buflen;
        }
        pos = skip_gap(r, pos + size);
    }
    *next = pos;
    return (int)b->n;
}

/* The member's group, or NULL (*rc set) when the member or group is gone. */
static pmq_group_t *member_group(pmq_ring_t *r, pmq_member_t *m, uint32_t gen, int *rc)
{
    if (LOAD_ACQ(&m->state) != PMQ_SLOT_ACTIVE || m->gen != gen) {
        *rc = PMQ_GONE;
        return NULL;
    }
    uint32_t gi = m->group;
    if (gi >= r->max_groups) {
        *rc = PMQ_ECORRUPT;
        return NULL;
    }
    pmq_group_t *g = &r->groups[gi];
    if (LOAD_ACQ(&g->state) != PMQ_SLOT_ACTIVE || g->gen != m->group_gen) {
        *rc = PMQ_GONE;
        return NULL;
    }
    return g;
}

/* Sleep until tail moves, the deadline passes or someone wakes us. */
static int wait_for_data(pmq_ring_t *r, pmq_group_t *g, uint64_t cur, uint64_t tail, int64_t deadline)
{
    pmq_ring_hdr_t *h = r->hdr;
    uint32_t seen = LOAD_ACQ(&h->data_seq);
    STORE_SC(&h->data_waiters, 1);
    if (LOAD_SC(&h->tail) != tail || LOAD_SC(&g->cursor) != cur || LOAD_SC(&h->closed))
        return 0;
    int64_t left = deadline < 0 ? -1 : deadline - pmq_now_mono();
    if (deadline >= 0 && left <= 0)
        return PMQ_EMPTY;
    int rc = pmq_futex_wait(&h->data_seq, seen, left);
    if (rc == -EINTR)
        return PMQ_EINTR;
    return 0; /* woken, spurious or timed out: the caller re-checks */
}

int pmq_ring_read(pmq_ring_t *r, uint32_t member, uint32_t gen, char *buf,
                  uint64_t buflen, uint32_t max_count, uint64_t *offs,
                  uint32_t *lens, uint64_t *seqs, int64_t *ts, int64_t timeout_ns)
{
    if (!r || member >= r->max_members || !buf || max_count == 0 || !offs || !lens || !seqs || !ts)
        return PMQ_EINVAL;
    pmq_ring_hdr_t *h = r->hdr;
    pmq_member_t *m = &r->members[member];
    batch_t b = {.buf = buf, .buflen = buflen, .max = max_count,
                 .offs = offs, .lens = lens, .seqs = seqs, .ts = ts};
    int64_t deadline = timeout_ns < 0 ? -1 : pmq_now_mono() + timeout_ns;
    for (;;) {
        int rc = 0;
        pmq_group_t *g = member_group(r, m, gen, &rc);
        if (!g)
            return rc;
        uint64_t cur = LOAD_ACQ(&g->cursor), tail = LOAD_ACQ(&h->tail), next = cur;
        if (cur < tail) {
            if (tail - cur <= r->capacity)
                rc = collect(r, cur, tail, &b, &next);
            else
                rc = PMQ_ECORRUPT;
            if (rc < 0) {
                /* Another member may have claimed and the publisher reused
                 * the space: only an unmoved cursor means real corruption. */
                if (LOAD_SC(&g->cursor) != cur)
                    continue;
                ADD_RLX(&h->corrupt, 1);
                return rc;
            }
            if (!__atomic_compare_exchange_n(&g->cursor, &cur, next, 0,
                                             __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                continue; /* lost the race: the copy is discarded */
            wake_if_waiting(&h->space_seq, &h->space_waiters);
            if (rc == 0)
                continue; /* only padding */
            ADD_RLX(&g->delivered, (uint64_t)rc);
            ADD_RLX(&g->delivered_bytes, b.bytes);
            ADD_RLX(&m->delivered, (uint64_t)rc);
            return rc;
        }
        if (LOAD_ACQ(&h->closed))
            return PMQ_CLOSED;
        if (timeout_ns == 0)
            return PMQ_EMPTY;
        rc = wait_for_data(r, g, cur, tail, deadline);
        if (rc < 0)
            return rc;
    }
}

/* ---- figures -------------------------------------------------------------- */

int pmq_ring_stats(pmq_ring_t *r, pmq_ring_stats_t *o)
{
    if (!r || !o)
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    memset(o, 0, sizeof *o);
    o->capacity = r->capacity;
    o->head = h->head;
    o->tail = h->tail;
    o->next_seq = h->next_seq;
    rc = compute_gate(r, &o->gate_min);
    o->published = h->next_seq - 1;
    o->published_bytes = h->published_bytes;
    o->publish_waits = h->publish_waits;
    o->publish_full = h->publish_full;
    o->expired = h->expired;
    o->recoveries = h->recoveries;
    o->wakeups = h->wakeups;
    o->corrupt = h->corrupt;
    o->closed = h->closed;
    o->max_msg = r->max_msg;
    for (uint32_t i = 0; i < r->max_groups; i++)
        o->groups += r->groups[i].state == PMQ_SLOT_ACTIVE;
    for (uint32_t i = 0; i < r->max_members; i++)
        o->members += r->members[i].state == PMQ_SLOT_ACTIVE;
    ring_unlock(r);
    return rc;
}

int pmq_group_stats(pmq_ring_t *r, uint32_t i, pmq_group_stats_t *o)
{
    if (!r || !o || i >= r->max_groups)
        return PMQ_EINVAL;
    int rc = ring_lock_admin(r);
    if (rc < 0)
        return rc;
    pmq_ring_hdr_t *h = r->hdr;
    pmq_group_t *g = &r->groups[i];
    memset(o, 0, sizeof *o);
    o->active = g->state == PMQ_SLOT_ACTIVE;
    if (o->active) {
        pmq_rec_t rec;
        uint64_t pos = LOAD_ACQ(&g->cursor);
        memcpy(o->name, g->name, sizeof g->name);
        o->name[sizeof g->name - 1] = '\0';
        o->flags = g->flags;
        o->members = g->members;
        o->gen = g->gen;
        o->cursor = pos;
        o->delivered = g->delivered;
        o->delivered_bytes = g->delivered_bytes;
        o->cursor_seq = h->next_seq;
        /* the first data record at or after the cursor, skipping padding */
        for (uint64_t size; pos < h->tail && (size = rec_check(r, pos, h->tail, &rec));
             pos = skip_gap(r, pos + size)) {
            if (rec.type == PMQ_REC_DATA) {
                o->cursor_seq = rec.seq;
                break;
            }
        }
        o->lag = h->next_seq - o->cursor_seq;
    }
    ring_unlock(r);
    return o->active;
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
