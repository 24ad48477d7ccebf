/*
 * pmq_api.h - the table of functions that pymq._native hands the CPython
 * fast path (pymq._fast, native/py/): one versioned struct, checked before
 * use, instead of loose addresses (CPython's PyDateTime_CAPI, NumPy's
 * _ARRAY_API). The fast path refuses a table of another version, size or
 * build: a stale build of either half is an error at import, never a wrong
 * call.
 */
#ifndef PMQ_API_H
#define PMQ_API_H

#include "pmq_ring.h"

#define PMQ_API_VERSION 2u

#ifndef PMQ_BUILD_ID
#define PMQ_BUILD_ID "unknown" /* build.py passes -DPMQ_BUILD_ID: a hash of native/ */
#endif

typedef struct pmq_api {
    uint32_t version;        /* PMQ_API_VERSION */
    uint32_t size;           /* sizeof(pmq_api_t) */
    uint32_t layout;         /* PMQ_LAYOUT_VERSION */
    uint32_t pad;
    const char *build_id;    /* PMQ_BUILD_ID of the build that made the table */
    int64_t (*publish)(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                       uint32_t count, pmq_deadline_t *d, const pmq_hooks_t *hooks);
    int (*read)(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b, uint32_t max_count,
                pmq_deadline_t *d, const pmq_sink_t *sink, const pmq_hooks_t *hooks);
    int (*ack)(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
               const uint64_t *seqs, uint32_t n, const pmq_hooks_t *hooks);
    int (*nack)(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                const uint64_t *seqs, const uint32_t *attempts, uint32_t n,
                const pmq_hooks_t *hooks);
    int (*wait_word)(pmq_ring_t *r, int which, uint32_t **word, uint32_t *value);
} pmq_api_t;

/* The table (static, read-only). */
const pmq_api_t *pmq_api(void);

#endif
