/*
 * pmq_ring.h - the bytes of one topic segment, and the API of the layers
 * that work on them: records <- ring <- groups <- acks <- members.
 *
 * A topic segment is one POSIX shared-memory object, /pymq.<name>.<topic>,
 * mapped by every process that publishes to or reads from the topic. The code
 * works on (void *base, size_t len) and never maps memory itself, so it runs
 * the same on a plain buffer (tests) as on a mapping.
 *
 *   0                  PMQ_HDR_SIZE (4096)
 *   +------------------+-------------------+------------------+----------------------+--------------+
 *   | pmq_ring_hdr_t   | groups            | members          | pending tables       | data         |
 *   | (cache-line      | [max_groups]      | [max_members]    | [max_ack_groups]     | [capacity]   |
 *   |  padded sections | pmq_group_t,      | pmq_member_t,    | [pending_cap]        | records      |
 *   |  below)          | 384 B each        | 64 B each        | pmq_pending_t, 32 B  | (pmq_record.h)|
 *   +------------------+-------------------+------------------+----------------------+--------------+
 *   ^ groups_off, members_off, pending_off and data_off in the header say where each
 *     region starts (data_off rounded up to 4096); attach checks that they are in
 *     bounds and do not overlap.
 *
 * Positions are free-running 64-bit byte counts; a position p lives at data
 * offset (p & (capacity - 1)). Everything in [head, tail) is a sequence of
 * records; a group's cursor lies in [head, tail]. Publishers (under the mutex)
 * move tail forward and reclaim space by moving head forward, never past the
 * lowest cursor of any group (the "gate"; an ack group's gate is its floor).
 *
 * An ack group (subscribe_with_ack) also owns one pending table: a window of
 * claim numbers [pend_head, pend_tail), entry n at table[n % pending_cap], in
 * claim order (so in position order). Its floor is the position of its oldest
 * delivery not yet acked (or its cursor when none is pending), so a record
 * stays in the ring until every ack group acked or dead-lettered it.
 *
 * Commit: a publisher holding the mutex writes whole records beyond tail, then
 * publishes them with one release-store of tail. Readers load tail with acquire
 * and only read below it, so a record is visible only when complete; a
 * publisher killed before that store leaves nothing visible.
 *
 * Locks: the segment's mutex (publishers, and changes to the group and member
 * tables) and each ack group's own mutex (its pending table). Nobody waits for
 * one while holding the other: work that needs both is done in two steps, the
 * second of which anyone may finish (pmq_ack_tidy). docs/design.md tells the
 * lock, commit and wait protocols.
 */
#ifndef PMQ_RING_H
#define PMQ_RING_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "pmq_record.h"
#include "pmq_sync.h"

#define PMQ_RING_MAGIC     0x31474e52514d5950ULL /* "PYMQRNG1" little-endian */
#define PMQ_LAYOUT_VERSION 7u
#define PMQ_READY          0x52454459u           /* stored last by the creator */
#define PMQ_CACHE_LINE     64
#define PMQ_HDR_SIZE       4096
#define PMQ_NAME_MAX       48   /* group name bytes, NUL included */
#define PMQ_MAX_GROUPS     64
#define PMQ_MAX_MEMBERS    256
#define PMQ_MAX_ACK_GROUPS 32   /* pending tables a segment may have */
#define PMQ_MIN_CAPACITY   4096ULL
#define PMQ_MAX_CAPACITY   (1ULL << 40)

/* What a segment gets unless told otherwise (pymq/_core.py reads these). */
#define PMQ_DEFAULT_ACK_GROUPS  16   /* pending tables */
#define PMQ_DEFAULT_PENDING_CAP 1024 /* deliveries in flight per ack group */

/* pmq_ring_hdr_t.closed */
#define PMQ_OPEN           0u
#define PMQ_CLOSED_BROKER  1u /* the broker closed */
#define PMQ_CLOSED_DELETED 2u /* the topic was deleted */

/* The persistence writer's ack group, made with the ring when it persists.
 * Its name cannot be a user's group name (those cannot hold '~'). */
#define PMQ_PERSIST_GROUP "~persist"
#define PMQ_PERSIST_ACK_TIMEOUT_NS (3600LL * 1000000000LL)
#define PMQ_PERSIST_RETRIES 1000u
#define PMQ_MAX_RETRIES 1000u

#define PMQ_START_LATEST   0
#define PMQ_START_EARLIEST 1
#define PMQ_START_SEQ      2

#define PMQ_SLOT_FREE     0u
#define PMQ_SLOT_ACTIVE   1u
#define PMQ_SLOT_DRAINING 2u /* an ack group on its way out: no member, found by nobody,
                                its table still its own until pmq_ack_tidy frees it */

#define PMQ_GROUP_ANON 1u  /* one member, removed with it */
#define PMQ_GROUP_ACK  2u  /* at-least-once: a pending table, acks, redelivery */

#define PMQ_PEND_FREE     0u
#define PMQ_PEND_INFLIGHT 1u  /* delivered to a member, waiting for its ack */
#define PMQ_PEND_READY    2u  /* to be delivered again (timeout, nack, member gone) */
#define PMQ_PEND_DEAD     3u  /* out of retries: the supervisor dead-letters it */

/* One consumer group. Its cursor sits alone on its cache line: it is the only
 * word readers write on the hot path (a 16-byte CAS of cursor and cursor_gen),
 * and publishers read it to gate. */
typedef struct pmq_group {
    /* line 0: identity, written under the segment's mutex */
    uint32_t state;                 /* PMQ_SLOT_*, stored last */
    uint32_t flags;                 /* PMQ_GROUP_* */
    uint32_t gen;                   /* bumped on every allocation of the slot */
    uint32_t members;               /* live members; recounted by recovery */
    char name[PMQ_NAME_MAX];        /* NUL-terminated; empty for anonymous */
    /* line 1: the cursor (next position this group reads) and, in the same
     * 16 bytes, the gen it belongs to: a claim names both, so a reader that
     * stalled while its group was freed and its slot reused cannot claim in
     * the new group (no ABA) */
    uint64_t cursor;
    uint64_t cursor_gen;
    uint8_t pad1[PMQ_CACHE_LINE - 16];
    /* line 2: counters, atomically added by readers */
    uint64_t delivered;
    uint64_t delivered_bytes;
    uint64_t created_ns;
    uint64_t start_seq;             /* seq at the cursor when the group was made */
    int64_t idle_since_ns;          /* CLOCK_REALTIME when it last had no member; 0 while it has */
    uint64_t from_seq;              /* records of a lower seq are passed over, not delivered:
                                       a group restored beyond what the ring holds yet */
    uint8_t pad2[PMQ_CACHE_LINE - 48];
    /* line 3: an ack group's own robust mutex, taken to claim, redeliver, ack,
     * nack and sweep (never by publishers: they only read the floor) */
    pthread_mutex_t lock;
    int32_t lock_pid;               /* who holds it (informational: figures) */
    uint8_t pad3[PMQ_CACHE_LINE - (sizeof(pthread_mutex_t) + 4) % PMQ_CACHE_LINE];
    /* line 4: an ack group's window, under its lock */
    uint64_t floor;                 /* oldest unacked position, or cursor: its gate */
    uint64_t pend_head, pend_tail;  /* claim numbers; pend_tail - pend_head <= pending_cap */
    int64_t ack_timeout_ns;         /* a delivery not acked in this time is redelivered */
    uint32_t ptable;                /* which pending table is this group's */
    uint32_t ready;                 /* entries PMQ_PEND_READY */
    uint32_t dead;                  /* entries PMQ_PEND_DEAD */
    uint32_t max_retries;           /* redeliveries after the first, then dead-letter */
    uint32_t drained;               /* DRAINING, and nobody uses its table any more */
    uint32_t stale;                 /* an ack freed entries without the lock: the next
                                       holder moves the floor and recounts */
    uint8_t pad4[PMQ_CACHE_LINE - 56];
    /* line 5: an ack group's counters */
    uint64_t acked, nacked, redelivered, dead_lettered, timeouts;
    uint8_t pad5[PMQ_CACHE_LINE - 40];
} pmq_group_t;

/* One delivery of an ack group, waiting for its ack. Its seq and the word
 * after it (state, attempts, member) are one 16-byte word: without the group's
 * lock an ack or nack changes the entry by a compare-and-swap of both; under
 * it (where no entry is claimed or reused, so seq stays put) an ack exchanges
 * the word alone. */
typedef union pmq_pending_word {
    struct {
        uint16_t member;     /* member slot it was last delivered to ... */
        uint16_t attempts;   /* deliveries so far (1 on the first) */
        uint8_t state;       /* PMQ_PEND_* */
        uint8_t pad;
        uint16_t member_gen; /* ... and that member's gen (low 16 bits): a slot reused
                                by another member does not inherit the delivery */
    } f;
    uint64_t bits;
} pmq_pending_word_t;

typedef struct pmq_pending {
    uint64_t pos;          /* the record's position (it stays in the ring until freed) */
    int64_t deadline_ns;   /* CLOCK_MONOTONIC: redeliver after this */
    uint64_t seq;          /* the record's seq: an ack must name it */
    pmq_pending_word_t w;
} pmq_pending_t;

/* One subscription. owner names the process (its liveness token). */
typedef struct pmq_member {
    uint32_t state;     /* stored last */
    uint32_t group;     /* index into groups[] */
    uint32_t gen;       /* bumped on every allocation */
    uint32_t group_gen; /* gen of the group when joined */
    uint64_t owner;     /* process token (see pymq/segments.py) */
    int32_t pid;        /* informational */
    uint32_t pad0;
    uint64_t delivered;
    uint8_t pad1[PMQ_CACHE_LINE - 40];
} pmq_member_t;

/* Recorded by a publisher before it moves tail, so that recovery after its
 * death knows whether the commit happened and can set next_seq to match. */
typedef struct pmq_intent {
    uint32_t active;
    uint32_t pad;
    uint64_t old_tail, new_tail;
    uint64_t old_seq, new_seq;
} pmq_intent_t;

typedef struct pmq_ring_hdr {
    /* lines 0-1: immutable after init, but for closed (stored once) */
    uint64_t magic;
    uint32_t version;
    uint32_t ready;           /* PMQ_READY, release-stored last by the creator */
    uint64_t seg_len;         /* total segment bytes */
    uint64_t capacity;        /* data bytes, a power of two */
    uint64_t groups_off, members_off, pending_off, data_off;
    uint32_t max_groups, max_members;
    uint32_t pending_cap;     /* entries of a pending table, a power of two */
    uint32_t max_msg;         /* largest payload accepted */
    int32_t creator_pid;
    uint32_t closed;          /* PMQ_OPEN, or why it closed: stored once, under the mutex,
                                 and read-mostly, so readers may load it on every read */
    uint64_t creator_start;   /* creator's start time, ms since the epoch */
    int64_t created_ns;
    uint32_t max_ack_groups;  /* pending tables */
    uint32_t pad1a;
    uint8_t pad1[2 * PMQ_CACHE_LINE - 112];

    /* lines 2-4: what a publish writes, on three lines, so that a publish
     * after one on another CPU moves three lines, not five (a line moves
     * between this machine's CPUs in about 200 ns; contended fan-in paid for
     * each, docs/benchmarks.md). line 2: the mutex (40 bytes on glibc
     * x86_64) and who holds it */
    pthread_mutex_t lock;
    int32_t lock_pid;         /* stored after locking, cleared before unlocking */
    uint8_t pad2[PMQ_CACHE_LINE - (sizeof(pthread_mutex_t) + 4) % PMQ_CACHE_LINE];
    /* line 3: the commit intent and what a commit moves besides tail */
    pmq_intent_t intent;
    uint64_t next_seq;        /* seq of the next record */
    uint64_t published_bytes; /* payload bytes committed */
    uint64_t head;            /* oldest retained record (moved by a publish once the ring
                                 has wrapped) */

    /* line 4: tail, written by publishers under the mutex, read by everyone */
    uint64_t tail;
    uint8_t pad4[PMQ_CACHE_LINE - 8];

    /* line 5: under the mutex, read by every locker and rarely written */
    uint64_t gate;            /* lower bound of every group's cursor (floor) */
    uint64_t restore_end;     /* restoring a backlog from disk: publishes wait until it is
                                 in, and next_seq becomes this; 0 otherwise */
    uint32_t group_hint;      /* where the search for a free group slot starts */
    uint32_t ptables_used;    /* bit i: pending table i belongs to an ack group */
    /* the reap note: the member slot + 1 that pmq_member_reap is removing
     * (0: none) and reaped_members before it, so that the repair after its
     * death counts that member exactly once */
    uint32_t reap_slot;
    uint32_t pad5a;
    uint64_t reap_before;
    uint8_t pad5[PMQ_CACHE_LINE - 40];

    /* line 6: readers' wake word: bumped by a publisher that saw data_waiters */
    uint32_t data_seq;
    uint32_t data_waiters;
    uint8_t pad6[PMQ_CACHE_LINE - 8];

    /* line 7: publishers' wake word: bumped by a reader whose cursor reached
     * space_target while space_waiters was set. A waiting publisher asks for a
     * quarter of the ring more than it needs, so a full ring does not make
     * reader and publisher wake each other for every record. */
    uint32_t space_seq;
    uint32_t space_waiters;
    uint64_t space_target;
    uint8_t pad7[PMQ_CACHE_LINE - 16];

    /* lines 8-9: counters */
    uint64_t publish_waits;   /* publishes that had to wait for space */
    uint64_t publish_full;    /* publishes refused with PMQ_FULL */
    uint64_t expired;         /* records reclaimed from history (no group needed them) */
    uint64_t recoveries;      /* EOWNERDEAD recoveries */
    uint64_t wakeups;         /* futex wakes issued by publishers */
    uint64_t corrupt;         /* corruption detected */
    uint64_t anon_delivered;  /* deliveries to anonymous groups since freed (their figures */
    uint64_t anon_delivered_bytes; /* go here when they go, so the totals never fall) */
    uint64_t reaped_members;  /* members of dead processes removed (pmq_member_reap) */
    uint8_t pad8[2 * PMQ_CACHE_LINE - 72];
} pmq_ring_hdr_t;

_Static_assert(sizeof(pmq_group_t) == 6 * PMQ_CACHE_LINE, "group is 6 cache lines");
_Static_assert(offsetof(pmq_group_t, cursor) == PMQ_CACHE_LINE, "cursor on its own line");
_Static_assert(offsetof(pmq_group_t, cursor) % 16 == 0, "cursor and cursor_gen: one 16-byte word");
_Static_assert(offsetof(pmq_group_t, cursor_gen) == offsetof(pmq_group_t, cursor) + 8, "cursor_gen");
_Static_assert(offsetof(pmq_group_t, lock) == 3 * PMQ_CACHE_LINE, "group lock at line 3");
_Static_assert(offsetof(pmq_group_t, floor) == 4 * PMQ_CACHE_LINE, "floor at line 4");
_Static_assert(sizeof(pmq_pending_t) == 32, "pending entry is 32 bytes");
_Static_assert(offsetof(pmq_pending_t, seq) % 16 == 0, "seq and word: one 16-byte word");
_Static_assert(PMQ_MAX_ACK_GROUPS <= 32, "ptables_used is a 32-bit mask");
_Static_assert(PMQ_MAX_MEMBERS <= 0xFFFF, "a pending entry names its member in 16 bits");
_Static_assert(sizeof(pmq_member_t) == PMQ_CACHE_LINE, "member is one cache line");
_Static_assert(offsetof(pmq_ring_hdr_t, lock) == 2 * PMQ_CACHE_LINE, "lock at line 2");
_Static_assert(offsetof(pmq_ring_hdr_t, intent) == 3 * PMQ_CACHE_LINE, "intent at line 3");
_Static_assert(offsetof(pmq_ring_hdr_t, head) + 8 == 4 * PMQ_CACHE_LINE, "a commit's fields on line 3");
_Static_assert(offsetof(pmq_ring_hdr_t, tail) == 4 * PMQ_CACHE_LINE, "tail on its own line");
_Static_assert(offsetof(pmq_ring_hdr_t, data_seq) % PMQ_CACHE_LINE == 0, "data_seq on its own line");
_Static_assert(offsetof(pmq_ring_hdr_t, space_seq) % PMQ_CACHE_LINE == 0, "space_seq on its own line");
_Static_assert(sizeof(pmq_ring_hdr_t) <= PMQ_HDR_SIZE, "header fits its page");

/* Parameters for pmq_ring_init. */
typedef struct pmq_ring_params {
    uint64_t capacity;     /* power of two in [PMQ_MIN_CAPACITY, PMQ_MAX_CAPACITY] */
    uint32_t max_msg;      /* max payload; its record fits half the capacity */
    uint32_t max_groups;   /* <= PMQ_MAX_GROUPS */
    uint32_t max_members;  /* <= PMQ_MAX_MEMBERS */
    uint32_t max_ack_groups; /* pending tables, <= PMQ_MAX_ACK_GROUPS */
    uint32_t pending_cap;  /* deliveries in flight per ack group, a power of two */
    uint64_t first_seq;    /* seq of the first record (a restored topic goes on); 0: 1 */
    int32_t creator_pid;
    uint64_t creator_start;
} pmq_ring_params_t;

/* A process-local handle: the bounds checked at attach, copied out of shared
 * memory so that a later scribble over the header cannot move them. */
typedef struct pmq_ring {
    uint8_t *base;
    uint64_t len;
    pmq_ring_hdr_t *hdr;
    pmq_group_t *groups;
    pmq_member_t *members;
    pmq_pending_t *pending;
    uint8_t *data;
    uint64_t data_off;
    uint64_t capacity;
    uint64_t mask;
    uint32_t max_groups, max_members, max_msg, pending_cap, max_ack_groups;
    int32_t pid;           /* this process, for lock_pid */
    uint64_t seen_tail;    /* tail as this process's readers last loaded it (a lower
                              bound: ring_seen_tail), or 0 */
    uint64_t seen_head;    /* head, loaded with it (a lower bound too), or 0 */
} pmq_ring_t;

/* What a read fills: per record, where its payload is (offs: in the data
 * area, or, once copied into buf, in buf), its length, seq, publish time, its
 * position in the ring, and, for an ack group, its pending slot (to ack it)
 * and delivery attempt. Python allocates the arrays once per reader. buflen
 * is a budget of payload bytes per read (and the size of buf, when given). */
typedef struct pmq_batch {
    char *buf;
    uint64_t buflen;
    uint32_t max;          /* capacity of each array */
    uint32_t n;            /* records filled */
    uint64_t used, bytes;  /* bytes of buf used; payload bytes */
    uint64_t *offs, *seqs, *pos;
    uint32_t *lens, *slots, *attempts;
    int64_t *ts;
    uint32_t kind;         /* the kind of group the reader joined: PMQ_KIND_PLAIN or
                              PMQ_KIND_ACK, or 0 (any); a group found of the other kind
                              (its flags scribbled) is PMQ_ECORRUPT, not a wrong read */
} pmq_batch_t;

#define PMQ_KIND_PLAIN 1u
#define PMQ_KIND_ACK   2u

/* How a read hands its records over: copy(ctx, b, data) copies records
 * 0..b->n-1 out of the data area (payload i at data + b->offs[i], b->lens[i]
 * bytes), and returns 0 or a negative code (the read then takes nothing and
 * returns it). For a plain group it runs with no lock held and its copies
 * stand only if the claim that follows succeeds; if another member of the
 * group took the records first, drop(ctx) voids them (the space may have been
 * reused under the copy) and the read looks again. For an ack group it runs
 * under the group's lock, where the records cannot move. NULL: the records'
 * payloads are copied into b->buf (offs then in buf), or, with b->buf NULL
 * (an ack group only), left where they are. */
typedef struct pmq_sink {
    int (*copy)(void *ctx, const pmq_batch_t *b, const uint8_t *data);
    void (*drop)(void *ctx);
    void *ctx;
} pmq_sink_t;

/* Totals and one group's figures, filled by pmq_group_stats. */
typedef struct pmq_ring_stats {
    uint64_t capacity, head, tail, gate_min, next_seq;
    uint64_t published, published_bytes, publish_waits, publish_full;
    uint64_t expired, recoveries, wakeups, corrupt;
    uint64_t anon_delivered, anon_delivered_bytes; /* of anonymous groups gone */
    uint64_t reaped_members;
    uint32_t groups, members, closed, max_msg;
    int32_t lock_pid;      /* holder of the segment's lock when it could not be had */
    uint32_t locked;       /* 1: the figures are from a lock-free look (the lock was held) */
    uint64_t restore_end;  /* a backlog being restored from disk up to here, or 0 */
} pmq_ring_stats_t;

typedef struct pmq_group_stats {
    char name[PMQ_NAME_MAX];
    uint32_t index, flags, members, gen, state;
    uint64_t cursor, delivered, delivered_bytes, lag, cursor_seq;
    int64_t idle_since_ns;
    uint64_t acked, nacked, redelivered, dead_lettered, timeouts;
    uint32_t pending, ready, dead, max_retries;
    int32_t lock_pid;      /* holder of the group's lock, 0 if none */
} pmq_group_stats_t;

/* Where a join put the subscription. */
typedef struct pmq_join {
    uint32_t member, member_gen, group, group_gen;
    uint32_t created;  /* 1 if this join made the group (start= applied) */
} pmq_join_t;

/* ==== ring.c: the segment and its data area ==================================== */

/* Size of a segment for these parameters; 0 if they are invalid. */
uint64_t pmq_ring_size(const pmq_ring_params_t *p);

/* Format a fresh segment of len bytes at base, all but the ready mark: its
 * creator may make groups in it (pmq_group_create) before pmq_ring_ready lets
 * anybody else attach. PMQ_EINVAL for bad parameters, or -errno from
 * pthread init. Assumes nobody else uses the memory until it is ready. */
int pmq_ring_init(void *base, uint64_t len, const pmq_ring_params_t *p);
void pmq_ring_ready(void *base);

/* Validate a mapped segment and fill the handle. PMQ_NOTREADY (initialisation
 * not finished), PMQ_EVERSION (other magic or layout version) or PMQ_ECORRUPT
 * (a field out of bounds). Never writes to the segment. */
int pmq_ring_attach(pmq_ring_t *r, void *base, uint64_t len);
/* The creator's attach, before pmq_ring_ready: the same checks but that one. */
int pmq_ring_attach_unready(pmq_ring_t *r, void *base, uint64_t len);

/* Publish count payloads, parts[i] of lens[i] bytes each (wherever they lie:
 * copied once, into the ring), as one atomic batch: all committed, or none.
 * Waits for the lock and for space until d's deadline (a second more for the
 * lock alone, so that contention alone never means full). Returns the seq of
 * the first (>= 1), or PMQ_FULL, PMQ_ETOOBIG (a payload above max_msg or a
 * batch above capacity), PMQ_CLOSED, PMQ_DELETED, PMQ_EINTR (call again with
 * d), PMQ_ECORRUPT, PMQ_EINVAL. Safe from any number of processes at once. */
int64_t pmq_ring_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                         uint32_t count, pmq_deadline_t *d, const pmq_hooks_t *hooks);

/* Append records with the given (increasing) seqs and publish times, as they
 * were before a restart; next_seq follows the last. All or none, waiting for
 * room until d's deadline (PMQ_FULL then); PMQ_EINVAL for seqs below next_seq
 * (or, while restoring, not below restore_end). */
int pmq_ring_restore(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                     const uint64_t *seqs, const int64_t *ts, uint32_t count,
                     pmq_deadline_t *d, const pmq_hooks_t *hooks);

/* For a waiter that does not sleep here (an event loop's): announce a reader
 * (which = PMQ_WAIT_DATA) or a publisher waiting for room (PMQ_WAIT_SPACE)
 * and return the word to sleep on and its value now. The caller then looks
 * again (a read or a publish that does not wait) and, if that finds nothing,
 * sleeps while *word == *value: whatever it waits for changes the word after
 * this call. A publisher is woken by any reader's progress (it looks again). */
#define PMQ_WAIT_DATA  0
#define PMQ_WAIT_SPACE 1
int pmq_ring_wait_word(pmq_ring_t *r, int which, uint32_t **word, uint32_t *value);

/* A backlog larger than the ring is streamed in: end_seq > 0 starts it (the
 * seq after the backlog's last: publishes wait until it is in, as for room),
 * 0 ends it (next_seq becomes at least that seq, and waiting publishers go
 * on). A restarted supervisor finds it in the figures (restore_end) and
 * carries on from next_seq. */
int pmq_ring_restoring(pmq_ring_t *r, uint64_t end_seq);

/* Mark closed, why (PMQ_CLOSED_BROKER or PMQ_CLOSED_DELETED), under the
 * mutex, and wake everyone: publishers then return PMQ_CLOSED or PMQ_DELETED,
 * and readers too once they have read what was there. The first reason
 * stays. The mark is made even when the lock cannot be had (corrupt). */
int pmq_ring_close(pmq_ring_t *r, uint32_t why);

/* The test points (PMQ_TEST_POINT, pmq_sync.h) of this file: "publish.locked"
 * (the segment's mutex held), "publish.written" (records and next_seq
 * written, tail not moved), "publish.committed" (tail moved, intent not
 * cleared). ack.c: "ack.locked", "ack.claimed" (entries recorded, cursor not
 * moved). member.c: "member.locked" (the segment's mutex held to join, leave
 * or reap), "member.reaping" (a reaped member removed, not yet counted). */

/* Layout version compiled in. */
uint32_t pmq_ring_layout_version(void);

/* ==== group.c: consumer groups and the member table =============================== */

/* A named group with no member, made by the segment's creator before it is
 * ready (the persistence writer's): 0 or an error. */
int pmq_group_create(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                     uint64_t start_seq, int64_t ack_timeout_ns, uint32_t max_retries);

/* Delete the named group: its members are removed (their reads and acks
 * then give PMQ_GONE) and it no longer holds publishers back; an ack group
 * goes to DRAINING, which pmq_ack_tidy (or the supervisor's sweep) finishes.
 * 0, PMQ_NOTFOUND or PMQ_EINVAL. */
int pmq_group_delete(pmq_ring_t *r, const char *name);

/* The ring's figures and those of up to max_groups groups, in one snapshot
 * under the lock (published never trails delivered). With d's timeout spent
 * waiting for a lock held by another process (stopped, say), the figures come
 * from a look without it, out->locked says so and out->lock_pid who holds
 * it. Returns how many groups it filled; out->groups says how many there are. */
int pmq_group_stats(pmq_ring_t *r, pmq_ring_stats_t *out, pmq_group_stats_t *groups,
                    uint32_t max_groups, pmq_deadline_t *d);

/* ==== ack.c: the pending tables of ack groups ===================================== */

/* Acknowledge n deliveries of group `group` (of generation group_gen), each
 * named by the slot and seq its read gave. An ack of a delivery already acked
 * (or by now another record's slot) is ignored: returns how many it acked.
 * It never waits: with the group's lock free it takes it and frees each
 * entry by one exchange, else it changes each by a compare-and-swap. */
int pmq_ack_ack(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                const uint64_t *seqs, uint32_t n, const pmq_hooks_t *hooks);

/* Ask for redelivery now (or dead-lettering, when out of retries). Each nack
 * names the delivery attempt it answers; a stale one (the delivery has moved
 * on to another attempt) is ignored. It takes no lock (a compare-and-swap of
 * each entry) and never waits. Returns how many it requeued. */
int pmq_ack_nack(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                 const uint64_t *seqs, const uint32_t *attempts, uint32_t n,
                 const pmq_hooks_t *hooks);

/* The supervisor's sweep of every ack group: deliveries past their deadline
 * (CLOCK_MONOTONIC now_ns) and those of members that are gone are requeued,
 * or marked dead when out of retries, and DRAINING groups are freed. A group
 * whose lock another process holds is left for the next sweep (*busy counts
 * them): the sweep never waits. Bit i of *dead_groups says group i has dead
 * deliveries to dead-letter. Returns how many timed out. */
int pmq_ack_sweep(pmq_ring_t *r, int64_t now_ns, uint64_t *dead_groups, uint32_t *busy);

/* Finish, now, what a member's leaving, a reaping or a deletion left to do
 * for ack group `group`: requeue the deliveries of members that are gone, and
 * free the group if it is DRAINING. It never waits: PMQ_BUSY when a lock is
 * held (the supervisor's next sweep then does it). 0 or an error. */
int pmq_ack_tidy(pmq_ring_t *r, uint32_t group);

/* Copy up to max_count dead deliveries of the group into b (payload, seq,
 * slot, attempts), leaving them pending, and the group's generation: the
 * supervisor publishes them to the dead-letter topic, then calls
 * pmq_ack_dead_lettered. Returns the count. */
int pmq_ack_take_dead(pmq_ring_t *r, uint32_t group, pmq_batch_t *b, uint32_t max_count,
                      uint32_t *group_gen);

/* Free dead deliveries that are now on the dead-letter topic; counts them. */
int pmq_ack_dead_lettered(pmq_ring_t *r, uint32_t group, uint32_t group_gen,
                          const uint32_t *slots, const uint64_t *seqs, uint32_t n);

/* ==== durable.c: groups as persistence records and restores them ================== */

/* What a durable record of group `group` needs: *position, the seq of its
 * oldest unacked record (plain group: the next to deliver), and, for an ack
 * group, up to max seqs acked after it into acked[]. Returns that count. */
int pmq_durable_position(pmq_ring_t *r, uint32_t group, uint64_t *position, uint64_t *acked,
                         uint32_t max);

/* Make a named group as it was durably recorded: its cursor at the first
 * record with seq >= position_seq; for an ack group, acked[] (increasing) are
 * the seqs already acked after that: the others up to the last of them are
 * redelivered (attempt 2). PMQ_EINVAL if the group exists. */
int pmq_durable_restore(pmq_ring_t *r, const char *name, uint32_t flags, uint64_t position_seq,
                        const uint64_t *acked, uint32_t n_acked, int64_t ack_timeout_ns,
                        uint32_t max_retries);

/* ==== member.c: what a subscription does =========================================== */

/* Join (or create) a group and add a member owned by `owner`. name "" makes
 * an anonymous group. flags is 0 or PMQ_GROUP_ACK; an ack group redelivers
 * after ack_timeout_ns, max_retries times, then dead-letters. start is
 * PMQ_START_* (start_seq with PMQ_START_SEQ); it, the timeout and the
 * retries apply only when the group is created. Fills *out and returns 0;
 * PMQ_ENOSLOT when a table is full; PMQ_EINVAL for a named group that exists
 * with other flags. */
int pmq_member_join(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                    uint64_t start_seq, uint64_t owner, int32_t pid, int64_t ack_timeout_ns,
                    uint32_t max_retries, pmq_join_t *out);

/* Read up to max_count (<= b->max) records for a member, handed over by sink
 * (see pmq_sink_t). Waits until d's deadline when there is nothing to read.
 * Returns the count (>= 1), PMQ_EMPTY, PMQ_CLOSED, PMQ_DELETED, PMQ_GONE,
 * PMQ_EINTR (call again with d), PMQ_EBUFSMALL, PMQ_ECORRUPT, PMQ_EINVAL,
 * or the sink's error; with a timeout of 0, PMQ_BUSY when an ack group's
 * lock is held by another member (look again soon: nothing says when). A plain group's members claim records lock-free;
 * an ack group's member takes the group's lock, gets redeliveries first, then
 * new records while its window has room, and records each as pending. */
int pmq_member_read(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                    uint32_t max_count, pmq_deadline_t *d, const pmq_sink_t *sink,
                    const pmq_hooks_t *hooks);

/* Remove a member (idempotent: PMQ_GONE if already gone). An anonymous group
 * goes with its last member; a named group stays (durable). What an ack
 * member had in flight is redelivered to the group's other members at once.
 * Waits for the segment's lock at most timeout_ns (< 0: PMQ_ADMIN_LOCK_NS),
 * then -ETIMEDOUT. */
int pmq_member_leave(pmq_ring_t *r, uint32_t member, uint32_t gen, int64_t timeout_ns);

/* Remove every member owned by `owner` (a dead process). Returns how many;
 * -ETIMEDOUT if the segment's lock is held (by a stopped process, say) for
 * longer than the supervisor waits (it tries again next sweep). */
int pmq_member_reap(pmq_ring_t *r, uint64_t owner);

/* Slot i of the member table: 1 and its owner, group and pid if in use, else 0. */
int pmq_member_info(pmq_ring_t *r, uint32_t i, uint64_t *owner, uint32_t *group, int32_t *pid);

#endif
