/*
 * tools/fuzz/ns_fuzz.c - owns the libFuzzer target of the namespace
 * segment's validation (pmq_ns_attach): the input is written over a valid
 * namespace (pmq_ns_init) from an offset it names, and attached with a
 * length it names. A namespace that passes must hold what pymq then reads
 * without further checks: config_len within the config, admin_port within
 * -1..65535, seg_len the length mapped.
 */
#include "pmq_ns.h"
#include "pmq_sync.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t *base;
static uint64_t size;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    size = pmq_ns_size();
    if (posix_memalign((void **)&base, 4096, size) != 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    static const char config[] = "{\"name\": \"fuzz\", \"ring_bytes\": 4096}";
    if (n < 4)
        return 0;
    memset(base, 0, size);
    if (pmq_ns_init(base, size, 1, 2, 3, config, sizeof config - 1) != 0)
        abort();
    uint64_t off = ((uint64_t)data[0] | (uint64_t)data[1] << 8) % size;
    uint64_t len = size - (data[2] & 3) * 8 + (data[2] & 4 ? 4096 : 0);
    data += 3;
    n -= 3;
    if (n > size - off)
        n = size - off;
    memcpy(base + off, data, n);
    if (len > size)
        len = size;
    if (pmq_ns_attach(base, len) != 0)
        return 0;
    const pmq_ns_t *ns = (const pmq_ns_t *)base;
    if (ns->config_len > PMQ_NS_CONFIG_MAX || ns->admin_port < -1 || ns->admin_port > 65535 ||
        ns->seg_len != len || len < sizeof(pmq_ns_t)) {
        fprintf(stderr, "ns_fuzz: an attached namespace holds a field out of bounds\n");
        abort();
    }
    return 0;
}
