/*
 * group_internal.h - what group.c gives the layers above it (ack.c,
 * member.c, durable.c) besides the API. Not part of the API.
 */
#ifndef PMQ_GROUP_INTERNAL_H
#define PMQ_GROUP_INTERNAL_H

#include "ring_internal.h"

/* Entry n of ack group g's pending table (g->ptable checked by the caller). */
static inline pmq_pending_t *group_entry(const pmq_ring_t *r, const pmq_group_t *g, uint64_t n)
{
    return r->pending + (uint64_t)g->ptable * r->pending_cap + (n & (r->pending_cap - 1));
}

/* A group name that fits its slot (empty: anonymous). */
int group_name_ok(const char *name);

/* From pos (in [head, tail]), the first data record with seq >= want: its
 * position in *out and its seq in *seq; tail and next_seq if there is none.
 * Every step is checked, so the walk is bounded with or without the mutex. */
int group_seek(pmq_ring_t *r, uint64_t pos, uint64_t want, uint64_t *out, uint64_t *seq);

/* Mutex held. A new group (an ack group gets a pending table), its cursor
 * where start says: its index, or PMQ_ENOSLOT, PMQ_ECORRUPT. */
int group_new(pmq_ring_t *r, const char *name, uint32_t flags, int start, uint64_t start_seq,
              int64_t ack_timeout_ns, uint32_t max_retries);

/* Mutex held. The named group (made if there is none: *created), or a new
 * anonymous one for name "": its index; PMQ_EINVAL for a group of other flags. */
int group_join(pmq_ring_t *r, const char *name, uint32_t flags, int start, uint64_t start_seq,
               int64_t ack_timeout_ns, uint32_t max_retries, int *created);

/* A free slot of the member table, or -1. Mutex held. */
int group_free_member_slot(pmq_ring_t *r);

/* Mutex held. Member slot mi (free) joins group gi, owned by owner (*out). */
void group_add_member(pmq_ring_t *r, uint32_t gi, uint32_t mi, uint64_t owner, int32_t pid,
                      pmq_join_t *out);

/* Mutex held. Free member m's slot (state first) and take it from its group;
 * a group that goes with its last member goes (an ack group to DRAINING).
 * Returns the group's index if it is an ack group, whose pending table
 * pmq_ack_tidy must then see to, else -1. */
int group_remove_member(pmq_ring_t *r, pmq_member_t *m);

#endif
