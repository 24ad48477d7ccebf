/*
 * ack_internal.h - what ack.c gives the layers above it (member.c,
 * durable.c) besides the API. Not part of the API.
 */
#ifndef PMQ_ACK_INTERNAL_H
#define PMQ_ACK_INTERNAL_H

#include "group_internal.h"

/* What an ack read saw, for the sleeper's re-check. */
typedef struct ack_snap {
    uint64_t tail, pend_head;
    uint32_t ready;
} ack_snap_t;

/* A read of member m (slot mi, gen mgen) of ack group g: takes the group's
 * lock (waiting, hooks around it, until d's deadline: then PMQ_EMPTY), gathers
 * redeliveries then new records, hands them over (sink) under the lock, and
 * records them as pending. The count, 0 when there is nothing for it, or an
 * error. */
int ack_take(pmq_ring_t *r, pmq_member_t *m, uint32_t mi, uint32_t mgen, pmq_group_t *g,
             pmq_batch_t *b, uint32_t max, const pmq_sink_t *sink, pmq_deadline_t *d,
             const pmq_hooks_t *hooks, ack_snap_t *snap);

/* Under the group's lock: the window's first pending seq (0 if none), the
 * seqs acked after it (up to max), and the cursor. Returns that count. */
int ack_window(pmq_ring_t *r, pmq_group_t *g, uint64_t *first_seq, uint64_t *acked, uint32_t max,
               uint64_t *cursor);

/* A new group's window (nobody else can see it yet), rebuilt from the records
 * at its cursor and the seqs acked among them (increasing). */
int ack_restore_window(pmq_ring_t *r, pmq_group_t *g, const uint64_t *acked, uint32_t n);

#endif
