/*
 * pmq_ring.h - the layout of one topic segment, and the ring API.
 *
 * A topic segment is one POSIX shared-memory object, /pymq.<name>.<topic>,
 * mapped by every process that publishes to or reads from the topic. The ring
 * code works on (void *base, size_t len) and never maps memory itself, so it
 * runs the same on a plain malloc'd buffer (tests) as on a mapping.
 *
 *   0                  PMQ_HDR_SIZE (4096)
 *   +------------------+-------------------+------------------+----------------------+--------------+
 *   | pmq_ring_hdr_t   | groups            | members          | pending tables       | data         |
 *   | (cache-line      | [max_groups]      | [max_members]    | [max_ack_groups]     | [capacity]   |
 *   |  padded sections | pmq_group_t,      | pmq_member_t,    | [pending_cap]        | records,     |
 *   |  below)          | 384 B each        | 64 B each        | pmq_pending_t, 32 B  | 8-aligned    |
 *   +------------------+-------------------+------------------+----------------------+--------------+
 *   ^ groups_off, members_off, pending_off and data_off in the header say where each
 *     region starts (data_off rounded up to 4096); attach checks that they are in
 *     bounds and do not overlap.
 *
 * Positions are free-running 64-bit byte counts; a position p lives at data
 * offset (p & (capacity - 1)). Everything in [head, tail) is a sequence of
 * records; a group's cursor lies in [head, tail]. Publishers (under the mutex)
 * move tail forward and reclaim space by moving head forward, never past the
 * lowest cursor of any live group (the "gate").
 *
 * A record is a pmq_rec_t header followed by the payload, padded to 8 bytes:
 *
 *   0        4        8                16               24
 *   +--------+--------+----------------+----------------+---------------+
 *   | len    | type   | seq            | ts_ns          | payload ...   |
 *   +--------+--------+----------------+----------------+---------------+
 *
 * A record never straddles the end of the data area: when fewer than
 * sizeof(pmq_rec_t) bytes remain before the end, they are an implicit gap;
 * when more remain but the record does not fit, a PMQ_REC_PAD record fills them.
 *
 * An ack group (subscribe_with_ack) also owns one pending table: a window of
 * claim numbers [pend_head, pend_tail), entry n at table[n % pending_cap], in
 * claim order (so in position order). Its gate is its floor: the position of
 * the oldest delivery not yet acked (or the cursor when none is pending), so a
 * record stays in the ring until every ack group acked or dead-lettered it.
 *
 * Commit: a publisher holding the mutex writes whole records beyond tail, then
 * publishes them with one release-store of tail. Readers load tail with acquire
 * and only read below it, so a record is visible only when complete; a
 * publisher killed before that store leaves nothing visible. See
 * docs/design.md for the lock, commit and wait protocol.
 */
#ifndef PMQ_RING_H
#define PMQ_RING_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PMQ_RING_MAGIC     0x31474e52514d5950ULL /* "PYMQRNG1" little-endian */
#define PMQ_LAYOUT_VERSION 3u
#define PMQ_READY          0x52454459u           /* stored last by init */
#define PMQ_CACHE_LINE     64
#define PMQ_HDR_SIZE       4096
#define PMQ_NAME_MAX       64   /* group name bytes, NUL included */
#define PMQ_MAX_GROUPS     64
#define PMQ_MAX_MEMBERS    256
#define PMQ_MAX_ACK_GROUPS 32   /* pending tables per topic */
#define PMQ_MIN_CAPACITY   4096ULL
#define PMQ_MAX_CAPACITY   (1ULL << 40)

/* Return codes: 0 or a count on success; named negatives for expected outcomes;
 * -errno for system failures (always below PMQ_ERRNO_BASE in magnitude). */
#define PMQ_OK          0
#define PMQ_EMPTY     (-1001) /* nothing to read before the timeout */
#define PMQ_FULL      (-1002) /* no ring space before the timeout */
#define PMQ_CLOSED    (-1003) /* the broker closed the segment */
#define PMQ_GONE      (-1004) /* this member was removed (unsubscribed or reaped) */
#define PMQ_ETOOBIG   (-1005) /* a payload above max_msg, or a batch above capacity */
#define PMQ_ECORRUPT  (-1006) /* a length, offset or count out of bounds */
#define PMQ_EVERSION  (-1007) /* another magic or layout version */
#define PMQ_NOTREADY  (-1008) /* segment still being initialised */
#define PMQ_ENOSLOT   (-1009) /* no free group or member slot */
#define PMQ_EINTR     (-1010) /* a signal interrupted a wait; retry */
#define PMQ_EINVAL    (-1011) /* bad argument */
#define PMQ_EBUFSMALL (-1012) /* the next record does not fit the caller's buffer */
#define PMQ_DELETED   (-1013) /* the topic was deleted (its segment goes once unmapped) */
#define PMQ_NOTFOUND  (-1014) /* no such group */

/* pmq_ring_hdr_t.closed */
#define PMQ_OPEN           0u
#define PMQ_CLOSED_BROKER  1u /* the broker closed */
#define PMQ_CLOSED_DELETED 2u /* the topic was deleted */

#define PMQ_REC_DATA 1u
#define PMQ_REC_PAD  2u

/* The persistence writer's ack group, made with the ring when params.persist
 * is set. Its name cannot be a user's group name (those cannot hold '~'). */
#define PMQ_PERSIST_GROUP "~persist"
#define PMQ_PERSIST_ACK_TIMEOUT_NS (3600LL * 1000000000LL)
#define PMQ_PERSIST_RETRIES 1000u

#define PMQ_START_LATEST   0
#define PMQ_START_EARLIEST 1
#define PMQ_START_SEQ      2

#define PMQ_SLOT_FREE   0u
#define PMQ_SLOT_ACTIVE 1u

#define PMQ_GROUP_ANON 1u  /* one member, removed with it */
#define PMQ_GROUP_ACK  2u  /* at-least-once: a pending table, acks, redelivery */

#define PMQ_PEND_FREE     0u
#define PMQ_PEND_INFLIGHT 1u  /* delivered to a member, waiting for its ack */
#define PMQ_PEND_READY    2u  /* to be delivered again (timeout, nack, member died) */
#define PMQ_PEND_DEAD     3u  /* out of retries: the supervisor dead-letters it */

typedef struct pmq_rec {
    uint32_t len;   /* payload bytes; <= max_msg */
    uint32_t type;  /* PMQ_REC_DATA or PMQ_REC_PAD */
    uint64_t seq;   /* topic sequence number, from 1; 0 for padding */
    int64_t ts_ns;  /* publish time, CLOCK_REALTIME nanoseconds */
} pmq_rec_t;

#define PMQ_REC_HDR ((uint64_t)sizeof(pmq_rec_t))

/* One consumer group. Its cursor sits alone on its cache line: it is the only
 * word readers write on the hot path (CAS), and publishers read it to gate. */
typedef struct pmq_group {
    /* line 0: identity, written under the mutex */
    uint32_t state;                 /* PMQ_SLOT_FREE / PMQ_SLOT_ACTIVE, stored last */
    uint32_t flags;                 /* PMQ_GROUP_* */
    uint32_t gen;                   /* bumped on every allocation of the slot */
    uint32_t members;               /* live members; recounted by recovery */
    char name[PMQ_NAME_MAX - 16];   /* NUL-terminated; empty for anonymous */
    /* line 1: the cursor: next position this group reads */
    uint64_t cursor;
    uint8_t pad1[PMQ_CACHE_LINE - 8];
    /* line 2: counters, atomically added by readers */
    uint64_t delivered;
    uint64_t delivered_bytes;
    uint64_t created_ns;
    uint64_t start_seq;             /* seq at the cursor when the group was made */
    int64_t idle_since_ns;          /* CLOCK_REALTIME when it last had no member; 0 while it has */
    uint8_t pad2[PMQ_CACHE_LINE - 40];
    /* line 3: an ack group's own robust mutex, taken to claim, redeliver, ack,
     * nack and sweep (never by publishers: they only read the floor) */
    pthread_mutex_t lock;
    uint8_t pad3[PMQ_CACHE_LINE - sizeof(pthread_mutex_t) % PMQ_CACHE_LINE];
    /* line 4: an ack group's window, under its lock */
    uint64_t floor;                 /* oldest unacked position, or cursor: its gate */
    uint64_t pend_head, pend_tail;  /* claim numbers; pend_tail - pend_head <= pending_cap */
    int64_t ack_timeout_ns;         /* a delivery not acked in this time is redelivered */
    uint32_t ptable;                /* which pending table is this group's */
    uint32_t ready;                 /* entries PMQ_PEND_READY */
    uint32_t dead;                  /* entries PMQ_PEND_DEAD */
    uint32_t max_retries;           /* redeliveries after the first, then dead-letter */
    uint8_t pad4[PMQ_CACHE_LINE - 48];
    /* line 5: an ack group's counters */
    uint64_t acked, nacked, redelivered, dead_lettered, timeouts;
    uint8_t pad5[PMQ_CACHE_LINE - 40];
} pmq_group_t;

/* One delivery of an ack group, waiting for its ack. */
typedef struct pmq_pending {
    uint64_t pos;          /* the record's position (it stays in the ring until freed) */
    uint64_t seq;          /* the record's seq: an ack must name it */
    int64_t deadline_ns;   /* CLOCK_MONOTONIC: redeliver after this */
    uint16_t member;       /* member slot it was last delivered to */
    uint16_t attempts;     /* deliveries so far (1 on the first) */
    uint32_t state;        /* PMQ_PEND_* */
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
    /* line 0-1: immutable after init */
    uint64_t magic;
    uint32_t version;
    uint32_t ready;           /* PMQ_READY, release-stored last by init */
    uint64_t seg_len;         /* total segment bytes */
    uint64_t capacity;        /* data bytes, a power of two */
    uint64_t groups_off, members_off, pending_off, data_off;
    uint32_t max_groups, max_members;
    uint32_t pending_cap;     /* entries of a pending table, a power of two */
    uint32_t max_msg;         /* largest payload accepted */
    int32_t creator_pid;
    uint32_t pad0;
    uint64_t creator_start;   /* creator's start time, ms since the epoch */
    int64_t created_ns;
    uint32_t max_ack_groups;  /* pending tables */
    uint32_t closed;          /* PMQ_OPEN, or why it closed: stored once, under the mutex,
                                 and read-mostly, so readers may load it on every read */
    uint8_t pad1[2 * PMQ_CACHE_LINE - 112];

    /* lines 2-3: the mutex (40 bytes on glibc x86_64) and the commit intent */
    pthread_mutex_t lock;
    uint8_t pad2[PMQ_CACHE_LINE - sizeof(pthread_mutex_t) % PMQ_CACHE_LINE];
    pmq_intent_t intent;
    uint8_t pad3[PMQ_CACHE_LINE - sizeof(pmq_intent_t)];

    /* line 4: tail, written by publishers under the mutex, read by everyone */
    uint64_t tail;
    uint8_t pad4[PMQ_CACHE_LINE - 8];

    /* line 5: publisher-private state (under the mutex) */
    uint64_t head;            /* oldest retained record */
    uint64_t gate;            /* lower bound of every live group's cursor */
    uint64_t next_seq;        /* seq of the next record */
    uint32_t pad5b;
    uint32_t group_hint;      /* where the search for a free group slot starts */
    uint32_t ptables_used;    /* bit i: pending table i belongs to a live ack group */
    uint32_t pad5a;
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

    /* line 8: counters */
    uint64_t published_bytes; /* payload bytes committed */
    uint64_t publish_waits;   /* publishes that had to wait for space */
    uint64_t publish_full;    /* publishes refused with PMQ_FULL */
    uint64_t expired;         /* records reclaimed from history (no group needed them) */
    uint64_t recoveries;      /* EOWNERDEAD recoveries */
    uint64_t wakeups;         /* futex wakes issued by publishers */
    uint64_t corrupt;         /* corruption detected */
    uint64_t anon_delivered;  /* deliveries to anonymous groups since freed (their figures */
    uint64_t anon_delivered_bytes; /* go here when they go, so the totals never fall) */
    uint8_t pad8[2 * PMQ_CACHE_LINE - 72];
} pmq_ring_hdr_t;

_Static_assert(sizeof(pmq_rec_t) == 24, "record header is 24 bytes");
_Static_assert(sizeof(pmq_group_t) == 6 * PMQ_CACHE_LINE, "group is 6 cache lines");
_Static_assert(offsetof(pmq_group_t, lock) == 3 * PMQ_CACHE_LINE, "group lock at line 3");
_Static_assert(offsetof(pmq_group_t, floor) == 4 * PMQ_CACHE_LINE, "floor at line 4");
_Static_assert(sizeof(pmq_pending_t) == 32, "pending entry is 32 bytes");
_Static_assert(PMQ_MAX_ACK_GROUPS <= 32, "ptables_used is a 32-bit mask");
_Static_assert(sizeof(pmq_member_t) == PMQ_CACHE_LINE, "member is one cache line");
_Static_assert(offsetof(pmq_group_t, cursor) == PMQ_CACHE_LINE, "cursor on its own line");
_Static_assert(offsetof(pmq_ring_hdr_t, lock) == 2 * PMQ_CACHE_LINE, "lock at line 2");
_Static_assert(offsetof(pmq_ring_hdr_t, tail) % PMQ_CACHE_LINE == 0, "tail on its own line");
_Static_assert(offsetof(pmq_ring_hdr_t, data_seq) % PMQ_CACHE_LINE == 0, "data_seq on its own line");
_Static_assert(offsetof(pmq_ring_hdr_t, space_seq) % PMQ_CACHE_LINE == 0, "space_seq on its own line");
_Static_assert(sizeof(pmq_ring_hdr_t) <= PMQ_HDR_SIZE, "header fits its page");

/* Parameters for pmq_ring_init. */
typedef struct pmq_ring_params {
    uint64_t capacity;     /* power of two in [PMQ_MIN_CAPACITY, PMQ_MAX_CAPACITY] */
    uint32_t max_msg;      /* max payload; max_msg + header <= capacity / 2 */
    uint32_t max_groups;   /* <= PMQ_MAX_GROUPS */
    uint32_t max_members;  /* <= PMQ_MAX_MEMBERS */
    uint32_t max_ack_groups; /* pending tables, <= PMQ_MAX_ACK_GROUPS */
    uint32_t pending_cap;  /* deliveries in flight per ack group, a power of two */
    uint32_t persist;      /* 1: make the persistence writer's group (PMQ_PERSIST_GROUP) */
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
} pmq_ring_t;

/* What a read fills: payloads end to end in buf (each 8-aligned) and, per
 * record, its offset in buf, length, seq and publish time; for an ack group
 * also its position in the ring (for zero-copy views), pending slot (to ack
 * it) and delivery attempt. Python allocates all of it once per subscription.
 * Zero-copy: buf NULL, buflen a budget of payload bytes, and offs[i] the
 * payload's offset in the ring's data area instead of in buf. For an ack
 * group the records stay in the ring until acked; for a plain group the read
 * is a peek: nothing is taken until pmq_ring_claim(claim_from -> claim_to)
 * succeeds after the caller copied them (until then another member may take
 * them, and the space be reused: a failed claim means the copy is void). */
typedef struct pmq_batch {
    char *buf;
    uint64_t buflen;
    uint32_t max;          /* capacity of each array */
    uint32_t n;            /* records filled */
    uint64_t used, bytes;  /* bytes of buf used; payload bytes */
    uint64_t *offs, *seqs, *pos;
    uint32_t *lens, *slots, *attempts;
    int64_t *ts;
    uint64_t claim_from, claim_to; /* a plain group's peek: the cursor move to claim (else 0) */
    int64_t deadline; /* CLOCK_MONOTONIC ns by which a read that had to wait gives up (else -1) */
} pmq_batch_t;

/* Totals and one group's figures, filled by pmq_ring_stats. */
typedef struct pmq_ring_stats {
    uint64_t capacity, head, tail, gate_min, next_seq;
    uint64_t published, published_bytes, publish_waits, publish_full;
    uint64_t expired, recoveries, wakeups, corrupt;
    uint64_t anon_delivered, anon_delivered_bytes; /* of anonymous groups gone */
    uint32_t groups, members, closed, max_msg;
} pmq_ring_stats_t;

typedef struct pmq_group_stats {
    char name[PMQ_NAME_MAX];
    uint32_t index, flags, members, gen;
    uint64_t cursor, delivered, delivered_bytes, lag, cursor_seq;
    int64_t idle_since_ns;
    uint64_t acked, nacked, redelivered, dead_lettered, timeouts;
    uint32_t pending, ready, dead, max_retries;
} pmq_group_stats_t;

/* Where a join put the subscription. */
typedef struct pmq_join {
    uint32_t member, member_gen, group, group_gen;
    uint32_t created;  /* 1 if this join made the group (start= applied) */
} pmq_join_t;

/* Size of a segment for these parameters; 0 if they are invalid. */
uint64_t pmq_ring_size(const pmq_ring_params_t *p);

/* Format a fresh segment of len bytes at base (zeroed by the caller or not).
 * Returns 0, or PMQ_EINVAL for bad parameters, or -errno from pthread init.
 * Assumes nobody else uses the memory until it returns. */
int pmq_ring_init(void *base, uint64_t len, const pmq_ring_params_t *p);

/* Validate a mapped segment and fill the handle. Returns 0, PMQ_NOTREADY
 * (initialisation not finished), PMQ_EVERSION (other magic/version) or
 * PMQ_ECORRUPT (a field out of bounds). Never writes to the segment. */
int pmq_ring_attach(pmq_ring_t *r, void *base, uint64_t len);

/* Publish count payloads, parts[i] of lens[i] bytes each (wherever they lie:
 * the caller's own buffers, copied once, into the ring), as one atomic batch:
 * all are committed or none. Waits up to timeout_ns for space
 * (<0: for ever; 0: not at all). Returns the seq of the first (>= 1), or
 * PMQ_FULL on timeout, PMQ_ETOOBIG if a payload exceeds
 * max_msg or the batch exceeds capacity, PMQ_CLOSED, PMQ_EINTR, PMQ_ECORRUPT.
 * Safe to call from any number of processes at once. */
int64_t pmq_ring_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                         uint32_t count, int64_t timeout_ns);

/* One payload: the hot path of publish(). */
int64_t pmq_ring_publish1(pmq_ring_t *r, const char *data, uint32_t len, int64_t timeout_ns);

/* Join (or create) a group and add a member owned by `owner`.
 * name == "" makes an anonymous group. flags is 0 or PMQ_GROUP_ACK; an ack
 * group redelivers after ack_timeout_ns, max_retries times, then dead-letters.
 * start is PMQ_START_* (start_seq with PMQ_START_SEQ); it, the timeout and the
 * retries apply only when the group is created. Fills *out and returns 0;
 * PMQ_ENOSLOT when a table is full; PMQ_EINVAL for a named group that exists
 * with other flags. */
int pmq_group_join(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                   uint64_t start_seq, uint64_t owner, int32_t pid, int64_t ack_timeout_ns,
                   uint32_t max_retries, pmq_join_t *out);

/* Remove a member (idempotent: PMQ_GONE if already gone). An anonymous group
 * goes with its last member; a named group stays (durable). What an ack
 * member had in flight is redelivered to the group's other members at once. */
int pmq_member_leave(pmq_ring_t *r, uint32_t member, uint32_t gen);

/* Delete the named group: its members are removed (their reads and acks
 * then give PMQ_GONE), what an ack group had pending goes with it, and its
 * cursor no longer holds publishers back. 0, PMQ_NOTFOUND or PMQ_EINVAL. */
int pmq_group_delete(pmq_ring_t *r, const char *name);

/* Remove every member owned by `owner` (a dead process). Returns how many. */
int pmq_ring_reap(pmq_ring_t *r, uint64_t owner);

/* Read up to max_count (<= b->max) records for a member into the batch. Waits
 * up to timeout_ns (<0: for ever) when there is nothing to read. Returns the
 * count (>= 1), PMQ_EMPTY, PMQ_CLOSED, PMQ_GONE, PMQ_EINTR, PMQ_EBUFSMALL or
 * PMQ_ECORRUPT. A plain group's members claim records lock-free (a CAS on the
 * cursor). An ack group's member takes the group's lock, gets redeliveries
 * first, then new records while its window has room, and records each in the
 * pending table (b->pos, b->slots, b->attempts must be set). */
int pmq_ring_read(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                  uint32_t max_count, int64_t timeout_ns);

/* One record, the hot path of get(): its payload length (at offset 0 of
 * b->buf), or an error as pmq_ring_read. */
int pmq_ring_read1(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                   int64_t timeout_ns);

/* Take what a plain group's zero-copy read (a peek) returned, once copied.
 * Returns the count; 0 if another member took them first (the copy is void:
 * read again); PMQ_GONE; or PMQ_EINVAL for a batch that holds no peek. */
int pmq_ring_claim(pmq_ring_t *r, uint32_t member, uint32_t gen, const pmq_batch_t *b);

/* Acknowledge n deliveries of group `group` (of generation group_gen), each
 * named by the slot and seq its read gave. An ack of a delivery already acked
 * (or by now another record's slot) is ignored: returns how many it acked. */
int pmq_group_ack(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                  const uint64_t *seqs, uint32_t n);

/* One ack: the hot path of Message.ack(). */
int pmq_group_ack1(pmq_ring_t *r, uint32_t group, uint32_t group_gen, uint32_t slot, uint64_t seq);

/* Ask for redelivery now (or dead-lettering, when out of retries). Each nack
 * names the delivery attempt it answers; a stale one (the delivery has moved
 * on to another attempt) is ignored. Returns how many it requeued. */
int pmq_group_nack(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                   const uint64_t *seqs, const uint32_t *attempts, uint32_t n);

/* The supervisor's sweep of one ack group: deliveries past their deadline
 * (CLOCK_MONOTONIC now_ns) are requeued, or marked dead when out of retries.
 * Returns how many timed out; 0 for a group that is not an ack group. */
int pmq_group_sweep(pmq_ring_t *r, uint32_t group, int64_t now_ns);

/* Sweep every ack group of the ring (pmq_group_sweep); bit i of *dead_groups
 * says group i has dead deliveries to dead-letter. Returns how many timed out. */
int pmq_ring_sweep(pmq_ring_t *r, int64_t now_ns, uint64_t *dead_groups);

/* Copy up to max_count dead deliveries of the group into b (payload, seq,
 * slot, attempts), leaving them pending, and the group's generation: the
 * supervisor publishes them to the dead-letter topic, then calls
 * pmq_group_dead_lettered. Returns the count. */
int pmq_group_take_dead(pmq_ring_t *r, uint32_t group, pmq_batch_t *b, uint32_t max_count,
                        uint32_t *group_gen);

/* Free dead deliveries that are now on the dead-letter topic; counts them. */
int pmq_group_dead_lettered(pmq_ring_t *r, uint32_t group, uint32_t group_gen,
                            const uint32_t *slots, const uint64_t *seqs, uint32_t n);

/* Wake every waiter (readers and publishers) of this segment. */
void pmq_ring_wake_all(pmq_ring_t *r);

/* Mark closed, why (PMQ_CLOSED_BROKER or PMQ_CLOSED_DELETED), under the
 * mutex, and wake all: publishers then return PMQ_CLOSED or PMQ_DELETED, and
 * readers too once they have read what was there. A close that finds the
 * ring closed already keeps the first reason. 0, or an error of the lock. */
int pmq_ring_close(pmq_ring_t *r, uint32_t why);

/* The ring's figures and those of up to max_groups live groups, in one locked
 * snapshot (published never trails delivered). Returns how many groups it
 * filled; out->groups says how many are live. */
int pmq_ring_stats(pmq_ring_t *r, pmq_ring_stats_t *out, pmq_group_stats_t *groups,
                   uint32_t max_groups);


/* Members of the table: state and owner of slot i (for the supervisor). */
int pmq_member_info(pmq_ring_t *r, uint32_t i, uint64_t *owner, uint32_t *group,
                    int32_t *pid);

/* ---- persistence: restoring a ring after a restart ---------------------------- */

/* Append records with the given (increasing) seqs and publish times, as they
 * were before a restart; next_seq follows the last. All or none, no waiting:
 * PMQ_FULL if the ring has no room, PMQ_EINVAL for seqs below next_seq. */
int pmq_ring_restore(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                     const uint64_t *seqs, const int64_t *ts, uint32_t count);

/* Make a named group as it was durably recorded: its cursor at the first
 * record with seq >= position_seq; for an ack group, acked[] (increasing) are
 * the seqs already acked after that: the others up to the last of them are
 * redelivered (attempt 2). PMQ_EINVAL if the group exists. */
int pmq_group_restore(pmq_ring_t *r, const char *name, uint32_t flags, uint64_t position_seq,
                      const uint64_t *acked, uint32_t n_acked, int64_t ack_timeout_ns,
                      uint32_t max_retries);

/* What a durable record of group `group` needs: *position, the seq of its
 * oldest unacked record (plain group: the next to deliver), and, for an ack
 * group, up to max seqs acked after it into acked[]. Returns that count. */
int pmq_group_position(pmq_ring_t *r, uint32_t group, uint64_t *position, uint64_t *acked,
                       uint32_t max);

/* Tests of recovery only: stop a publish part-way with the mutex held. */
int64_t pmq_ring_test_stop_in_publish(pmq_ring_t *r, const char *data, uint32_t len, int phase);

/* Layout version compiled in; pymq checks it at import. */
uint32_t pmq_layout_version(void);

#endif
