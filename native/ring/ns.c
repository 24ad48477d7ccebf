/*
 * ns.c - the namespace segment: format and validate.
 */
#include "pmq_ns.h"
#include "pmq_ring.h"
#include "pmq_sync.h"

#include <string.h>

uint64_t pmq_ns_size(void) { return (sizeof(pmq_ns_t) + 4095) & ~4095ULL; }

int pmq_ns_init(void *base, uint64_t len, int32_t owner_pid, uint64_t owner_start,
                uint64_t owner_token, const char *config, uint32_t config_len)
{
    if (!base || len < pmq_ns_size() || config_len > PMQ_NS_CONFIG_MAX || (!config && config_len))
        return PMQ_EINVAL;
    pmq_ns_t *ns = base;
    memset(ns, 0, sizeof *ns);
    ns->magic = PMQ_NS_MAGIC;
    ns->version = PMQ_NS_VERSION;
    ns->seg_len = len;
    ns->owner_pid = owner_pid;
    ns->owner_start = owner_start;
    ns->owner_token = owner_token;
    ns->created_ns = pmq_sync_now_real();
    ns->admin_port = -1;
    ns->config_len = config_len;
    if (config_len)
        memcpy(ns->config, config, config_len);
    __atomic_store_n(&ns->ready, PMQ_READY, __ATOMIC_RELEASE);
    return 0;
}

int pmq_ns_attach(void *base, uint64_t len)
{
    if (!base || len < sizeof(pmq_ns_t))
        return PMQ_ECORRUPT;
    pmq_ns_t *ns = base;
    if (__atomic_load_n(&ns->ready, __ATOMIC_ACQUIRE) != PMQ_READY)
        return ns->magic == 0 || ns->magic == PMQ_NS_MAGIC ? PMQ_NOTREADY : PMQ_EVERSION;
    if (ns->magic != PMQ_NS_MAGIC || ns->version != PMQ_NS_VERSION)
        return PMQ_EVERSION;
    if (ns->seg_len != len || ns->config_len > PMQ_NS_CONFIG_MAX || ns->admin_port < -1 ||
        ns->admin_port > 65535)
        return PMQ_ECORRUPT;
    return 0;
}
