/*
 * api.c - the table of pmq_api.h: what the CPython fast path may call.
 */
#include "pmq_api.h"

static const pmq_api_t table = {
    .version = PMQ_API_VERSION,
    .size = sizeof(pmq_api_t),
    .layout = PMQ_LAYOUT_VERSION,
    .build_id = PMQ_BUILD_ID,
    .publish = pmq_ring_publish,
    .read = pmq_member_read,
    .ack = pmq_ack_ack,
    .nack = pmq_ack_nack,
    .wait_word = pmq_ring_wait_word,
};

const pmq_api_t *pmq_api(void) { return &table; }
