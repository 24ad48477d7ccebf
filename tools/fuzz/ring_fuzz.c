/*
 * tools/fuzz/ring_fuzz.c - owns the libFuzzer target of a topic segment:
 * pmq_ring_attach's validation and every layer that reads what a segment
 * holds (records, groups, members, pending tables), on plain memory.
 *
 * Each input is a program run on a fresh, small segment (4 KiB of data, 4
 * groups, 8 members, 2 pending tables of 8) that a prologue filled with
 * groups, members and records (the first byte picks one of four): a
 * sequence of edits (bytes written anywhere in the segment but the mutexes,
 * whose glibc internals are trusted by design; their kind word may be
 * edited, which pymq checks) and operations (publish, read, ack, nack,
 * sweep, tidy, stats, join, leave, reap, delete, positions, dead letters,
 * restores, a fresh attach, close). Every call is made with a zero timeout.
 *
 * Besides ASan and UBSan, it aborts when a call returns with a lock still
 * held, a read returns more records than asked or a record out of its
 * buffer or over max_msg, or a figure says more groups than asked for.
 *
 * Built by tools/fuzz_native.py (clang -fsanitize=fuzzer,address,undefined)
 * from native/ring's sources, as they are.
 */
#define _GNU_SOURCE
#include "pmq_ring.h"
#include "pmq_sync.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAP 4096u
#define MAX_MSG 1000u
#define GROUPS 4u
#define MEMBERS 8u
#define TABLES 2u
#define PENDING 8u
#define BATCH 8u

static uint8_t *base;
static uint64_t seg_len;
static int mutex_kind;

typedef struct input {
    const uint8_t *p;
    size_t n;
} input_t;

static int more(const input_t *in) { return in->n > 0; }

static uint8_t byte(input_t *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static uint64_t bytes(input_t *in, unsigned k)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < k; i++)
        v |= (uint64_t)byte(in) << (8 * i);
    return v;
}

/* ---- what this process knows of the members it made ----------------------- */

typedef struct joined {
    int live;
    pmq_join_t j;
    uint32_t n;                 /* deliveries of the last read */
    uint32_t slots[BATCH], attempts[BATCH];
    uint64_t seqs[BATCH];
} joined_t;

static joined_t members[MEMBERS];
static const char *const NAMES[] = {"", "p", "a", "q"};

/* ---- oracles ------------------------------------------------------------------ */

static void fail(const char *what)
{
    fprintf(stderr, "ring_fuzz: %s\n", what);
    abort();
}

/* A mutex of the segment still held after a call returned (unless its kind
 * was edited: pymq then leaves it alone, as corrupt). */
static void lock_free_or_die(pthread_mutex_t *m, const char *what)
{
    if (m->__data.__kind != mutex_kind)
        return;
    int rc = pthread_mutex_trylock(m);
    if (rc == 0 || rc == EOWNERDEAD) {
        if (rc == EOWNERDEAD)
            pthread_mutex_consistent(m);
        pthread_mutex_unlock(m);
    } else if (rc == EBUSY) {
        fail(what);
    }
}

static void locks_free_or_die(void)
{
    pmq_ring_hdr_t *h = (pmq_ring_hdr_t *)base;
    lock_free_or_die(&h->lock, "the segment's lock is still held after a call");
    pmq_group_t *g = (pmq_group_t *)(base + PMQ_HDR_SIZE); /* as made: not what the header says */
    for (uint32_t i = 0; i < GROUPS; i++)
        lock_free_or_die(&g[i].lock, "a group's lock is still held after a call");
}

/* ---- the segment -------------------------------------------------------------- */

static pmq_ring_params_t params(void)
{
    return (pmq_ring_params_t){.capacity = CAP, .max_msg = MAX_MSG, .max_groups = GROUPS,
                               .max_members = MEMBERS, .max_ack_groups = TABLES,
                               .pending_cap = PENDING, .first_seq = 1, .creator_pid = 1,
                               .creator_start = 1};
}

/* Edits may not touch a mutex but its kind word. */
static int in_mutex(uint64_t off)
{
    uint64_t kind = offsetof(pthread_mutex_t, __data.__kind);
    uint64_t lock = offsetof(pmq_ring_hdr_t, lock);
    if (off >= lock && off < lock + sizeof(pthread_mutex_t))
        return off - lock < kind || off - lock >= kind + 4;
    if (off >= PMQ_HDR_SIZE && off < PMQ_HDR_SIZE + GROUPS * sizeof(pmq_group_t)) {
        uint64_t in = (off - PMQ_HDR_SIZE) % sizeof(pmq_group_t), gl = offsetof(pmq_group_t, lock);
        if (in >= gl && in < gl + sizeof(pthread_mutex_t))
            return in - gl < kind || in - gl >= kind + 4;
    }
    return 0;
}

static void edit(input_t *in)
{
    uint64_t off = bytes(in, 3) % seg_len;
    unsigned n = 1 + (byte(in) & 15);
    for (unsigned i = 0; i < n && off + i < seg_len; i++) {
        uint8_t v = byte(in);
        if (!in_mutex(off + i))
            base[off + i] = v;
    }
}

/* A field-sized value written at a field's offset: the boundaries the ring checks. */
static void edit_value(input_t *in, pmq_ring_t *r)
{
    static const uint64_t special[] = {0, 1, 7, 8, 24, CAP - 8, CAP, CAP + 8, 2 * CAP, PENDING,
                                       PENDING + 1, GROUPS, MEMBERS, TABLES, 0xFFFF, 0x7FFFFFFF,
                                       0xFFFFFFFF, 1ull << 32, 1ull << 62, UINT64_MAX};
    uint64_t off = (bytes(in, 3) % seg_len) & ~3ull;
    unsigned size = byte(in) & 1 ? 8 : 4;
    if (size == 8)
        off &= ~7ull;
    uint8_t pick = byte(in);
    uint64_t v;
    if (pick < 160) {
        v = special[pick % (sizeof special / sizeof special[0])];
    } else {
        pmq_ring_hdr_t *h = r->hdr;
        uint64_t around[] = {h->head, h->tail, h->gate, h->next_seq};
        v = around[pick & 3] + (uint64_t)(int64_t)(int8_t)byte(in);
    }
    if (off + size > seg_len)
        return;
    for (unsigned i = 0; i < size; i++)
        if (in_mutex(off + i))
            return;
    memcpy(base + off, &v, size);
}

/* ---- operations ----------------------------------------------------------------- */

static pmq_deadline_t now_or_never(void) { return PMQ_DEADLINE(0); }

static void op_publish(input_t *in, pmq_ring_t *r)
{
    static char payload[MAX_MSG + 16];
    uint32_t count = 1 + (byte(in) & 3), lens[4];
    const char *parts[4];
    for (uint32_t i = 0; i < count; i++) {
        lens[i] = (uint32_t)(bytes(in, 2) % (MAX_MSG + 2));
        parts[i] = payload;
        memset(payload, 'a' + (int)i, sizeof payload);
    }
    pmq_deadline_t d = now_or_never();
    int64_t rc = pmq_ring_publish(r, parts, lens, count, &d, NULL);
    if (rc == 0)
        fail("publish returned seq 0");
}

static void op_read(input_t *in, pmq_ring_t *r)
{
    static char buf[BATCH * (MAX_MSG + 8)];
    uint64_t offs[BATCH], seqs[BATCH], pos[BATCH];
    uint32_t lens[BATCH], slots[BATCH], attempts[BATCH];
    int64_t ts[BATCH];
    joined_t *m = &members[byte(in) % MEMBERS];
    uint32_t max = 1 + byte(in) % BATCH;
    int zero_copy = byte(in) & 1;
    pmq_batch_t b = {.buf = zero_copy ? NULL : buf, .buflen = sizeof buf, .max = BATCH,
                     .offs = offs, .seqs = seqs, .pos = pos, .lens = lens, .slots = slots,
                     .attempts = attempts, .ts = ts};
    pmq_deadline_t d = now_or_never();
    int rc = pmq_member_read(r, m->j.member, m->j.member_gen, &b, max, &d, NULL, NULL);
    if (rc <= 0)
        return;
    if ((uint32_t)rc > max || (uint32_t)rc != b.n)
        fail("a read returned more records than asked for");
    for (int i = 0; i < rc; i++) {
        if (lens[i] > MAX_MSG)
            fail("a read returned a record over max_msg");
        uint64_t limit = zero_copy ? CAP : sizeof buf;
        if (offs[i] > limit || lens[i] > limit - offs[i])
            fail("a read returned a record outside its buffer");
    }
    m->n = (uint32_t)rc;
    memcpy(m->slots, slots, sizeof slots);
    memcpy(m->seqs, seqs, sizeof seqs);
    memcpy(m->attempts, attempts, sizeof attempts);
}

static void op_settle(input_t *in, pmq_ring_t *r, int nack)
{
    joined_t *m = &members[byte(in) % MEMBERS];
    if (!m->n)
        return;
    if (byte(in) & 1) /* a stale or forged slot */
        m->slots[0] = byte(in);
    if (nack)
        pmq_ack_nack(r, m->j.group, m->j.group_gen, m->slots, m->seqs, m->attempts, m->n, NULL);
    else
        pmq_ack_ack(r, m->j.group, m->j.group_gen, m->slots, m->seqs, m->n, NULL);
    m->n = 0;
}

static void op_join(input_t *in, pmq_ring_t *r)
{
    uint8_t b = byte(in);
    joined_t *m = &members[b % MEMBERS];
    const char *name = NAMES[(b >> 3) & 3];
    uint32_t flags = (b & 0x20) ? PMQ_GROUP_ACK : 0;
    int start = (b >> 6) % 3;
    pmq_join_t j;
    if (pmq_member_join(r, name, flags, start, byte(in), 77, 1, 1000000, byte(in) & 3, &j) == 0) {
        m->live = 1;
        m->j = j;
        m->n = 0;
    }
}

static void op_leave(input_t *in, pmq_ring_t *r)
{
    joined_t *m = &members[byte(in) % MEMBERS];
    pmq_member_leave(r, m->j.member % MEMBERS, m->j.member_gen, 0);
    m->live = 0;
}

static void op_stats(pmq_ring_t *r, input_t *in)
{
    pmq_ring_stats_t s;
    pmq_group_stats_t g[GROUPS + 1];
    uint32_t max = byte(in) % (GROUPS + 2);
    pmq_deadline_t d = now_or_never();
    int rc = pmq_group_stats(r, &s, g, max, &d);
    if (rc > (int)max)
        fail("stats filled more groups than asked for");
}

static void op_dead(input_t *in, pmq_ring_t *r)
{
    static char buf[BATCH * (MAX_MSG + 8)];
    uint64_t offs[BATCH], seqs[BATCH], pos[BATCH];
    uint32_t lens[BATCH], slots[BATCH], attempts[BATCH], gen;
    int64_t ts[BATCH];
    pmq_batch_t b = {.buf = buf, .buflen = sizeof buf, .max = BATCH, .offs = offs, .seqs = seqs,
                     .pos = pos, .lens = lens, .slots = slots, .attempts = attempts, .ts = ts};
    uint32_t g = byte(in) % GROUPS;
    int n = pmq_ack_take_dead(r, g, &b, BATCH, &gen);
    if (n > (int)BATCH)
        fail("take_dead returned more than asked for");
    for (int i = 0; i < n; i++)
        if (offs[i] > sizeof buf || lens[i] > sizeof buf - offs[i])
            fail("take_dead returned a record outside its buffer");
    if (n > 0)
        pmq_ack_dead_lettered(r, g, gen, slots, seqs, (uint32_t)n);
}

static void op_restore(input_t *in, pmq_ring_t *r)
{
    static const char payload[64] = "restored";
    const char *parts[2] = {payload, payload};
    uint32_t lens[2] = {byte(in) % 64, byte(in) % 64};
    uint64_t first = r->hdr->next_seq + byte(in) % 3;
    uint64_t seqs[2] = {first, first + 1 + byte(in) % 2};
    int64_t ts[2] = {1, 2};
    pmq_deadline_t d = now_or_never();
    pmq_ring_restore(r, parts, lens, seqs, ts, 1 + (byte(in) & 1), &d, NULL);
    uint64_t acked[2] = {seqs[0], seqs[1]};
    pmq_durable_restore(r, NAMES[1 + byte(in) % 3], byte(in) & 1 ? PMQ_GROUP_ACK : 0,
                        seqs[0], acked, byte(in) % 3, 1000000, 2);
}

/* ---- the prologue: a segment in use -------------------------------------------------- */

static void prologue(pmq_ring_t *r, uint8_t variant)
{
    static const char payload[MAX_MSG] = {0};
    memset(members, 0, sizeof members);
    pmq_group_create(r, "p", 0, PMQ_START_EARLIEST, 0, 0, 0);
    pmq_group_create(r, "a", PMQ_GROUP_ACK, PMQ_START_EARLIEST, 0, 1000, variant & 1);
    pmq_ring_ready(base);
    const char *names[] = {"", "p", "p", "a", "a", ""};
    uint32_t flags[] = {0, 0, 0, PMQ_GROUP_ACK, PMQ_GROUP_ACK, PMQ_GROUP_ACK};
    for (int i = 0; i < 6; i++)
        if (pmq_member_join(r, names[i], flags[i], PMQ_START_EARLIEST, 0, 42 + (i & 1), 1,
                            1000, 1, &members[i].j) == 0)
            members[i].live = 1;
    uint8_t rounds = 1 + (variant & 3) * 3;
    for (uint8_t k = 0; k < rounds; k++) {
        const char *parts[3] = {payload, payload, payload};
        uint32_t lens[3] = {(uint32_t)(k * 37) % 300, 5, (uint32_t)(k * 101) % MAX_MSG};
        pmq_deadline_t d = now_or_never();
        pmq_ring_publish(r, parts, lens, 3, &d, NULL);
        for (int i = 0; i < 6; i++) {
            uint8_t prog[3] = {(uint8_t)i, (uint8_t)(2 + (k & 3)), 0};
            input_t in = {prog, sizeof prog};
            op_read(&in, r);
        }
        if (variant & 2) { /* some acked, some nacked, some left in flight */
            uint8_t a[2] = {3, 0}, b[2] = {4, 0};
            input_t ia = {a, 2}, ib = {b, 2};
            op_settle(&ia, r, 0);
            if (k & 1)
                op_settle(&ib, r, 1);
        }
    }
    uint64_t dead;
    uint32_t busy;
    if (variant & 4)
        pmq_ack_sweep(r, pmq_sync_now() + 10 * 1000000000LL, &dead, &busy);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pmq_ring_params_t p = params();
    seg_len = pmq_ring_size(&p);
    if (posix_memalign((void **)&base, 4096, seg_len) != 0)
        abort();
    pthread_mutex_t m;
    pmq_sync_lock_init(&m);
    mutex_kind = m.__data.__kind;
    pthread_mutex_destroy(&m);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input_t in = {data, size};
    pmq_ring_params_t p = params();
    memset(base, 0, seg_len);
    if (pmq_ring_init(base, seg_len, &p) != 0)
        abort();
    pmq_ring_t ring, fresh;
    if (pmq_ring_attach_unready(&ring, base, seg_len) != 0)
        abort();
    prologue(&ring, byte(&in));
    locks_free_or_die();
    pmq_ring_t *r = &ring;
    for (int steps = 0; more(&in) && steps < 256; steps++) {
        uint8_t op = byte(&in);
        uint64_t dead;
        uint32_t busy;
        uint64_t position, acked[PENDING];
        switch (op % 20) {
        case 0: case 1: case 2: case 3:
            edit(&in);
            break;
        case 4: case 5:
            edit_value(&in, r);
            break;
        case 6:
            op_publish(&in, r);
            break;
        case 7: case 8:
            op_read(&in, r);
            break;
        case 9:
            op_settle(&in, r, byte(&in) & 1);
            break;
        case 10:
            pmq_ack_sweep(r, pmq_sync_now() + (int64_t)byte(&in) * 100000000LL, &dead, &busy);
            break;
        case 11:
            pmq_ack_tidy(r, byte(&in) % (GROUPS + 1));
            break;
        case 12:
            op_stats(r, &in);
            break;
        case 13:
            op_join(&in, r);
            break;
        case 14:
            op_leave(&in, r);
            break;
        case 15:
            pmq_member_reap(r, 42 + (byte(&in) & 1));
            pmq_group_delete(r, NAMES[byte(&in) & 3]);
            break;
        case 16:
            pmq_durable_position(r, byte(&in) % GROUPS, &position, acked, PENDING);
            break;
        case 17:
            op_dead(&in, r);
            break;
        case 18:
            op_restore(&in, r);
            break;
        case 19:
            /* a fresh attach of the segment as it is now; if it passes, later
             * calls use its bounds */
            if (pmq_ring_attach(&fresh, base, seg_len - (byte(&in) & 1) * 4096) == 0 &&
                fresh.len == seg_len)
                r = &fresh;
            if (byte(&in) == 0xff)
                pmq_ring_close(r, PMQ_CLOSED_BROKER);
            break;
        }
        locks_free_or_die();
    }
    return 0;
}
