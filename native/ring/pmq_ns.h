/*
 * pmq_ns.h - the namespace segment of one broker, /pymq.<name>..ns
 *
 * One small segment per broker name, created by the Broker. It says the
 * broker exists (connect() attaches to it), who owns it, which supervisor
 * serves it, and the configuration in force (JSON text, validated by Python
 * on every read). Topic segments are found by name: /pymq.<name>.<topic>.
 *
 *   0            8        12       16         24
 *   +------------+--------+--------+----------+-----------------------------+
 *   | magic      | version| ready  | seg_len  | owner, supervisor, closed,  |
 *   | "PYMQNS01" |        |        |          | config_len, config[4096]    |
 *   +------------+--------+--------+----------+-----------------------------+
 *
 * Every field has a single writer: the owning Broker process, except what the
 * supervisor stores (heartbeat, reaping counters, admin_port). Requests to
 * the supervisor do not go through here: see pymq/control.py.
 */
#ifndef PMQ_NS_H
#define PMQ_NS_H

#include <stdint.h>

#define PMQ_NS_MAGIC 0x3130534e514d5950ULL /* "PYMQNS01" little-endian */
#define PMQ_NS_VERSION 4u
#define PMQ_NS_CONFIG_MAX 4096

typedef struct pmq_ns {
    uint64_t magic;
    uint32_t version;
    uint32_t ready;             /* PMQ_READY (pmq_ring.h), stored last by init */
    uint64_t seg_len;
    int32_t owner_pid;          /* the Broker process */
    uint32_t closed;            /* set by Broker.close before unlinking */
    uint64_t owner_start;       /* its start time, ms since the epoch */
    uint64_t owner_token;       /* its liveness token (pymq/segments.py) */
    int32_t supervisor_pid;     /* 0 while none runs */
    uint32_t supervisor_restarts;
    uint64_t supervisor_start;
    int64_t supervisor_beat_ns; /* CLOCK_REALTIME of the last sweep */
    int64_t created_ns;
    uint64_t reaped_processes;  /* dead processes whose subscriptions were removed (each
                                   topic counts the subscriptions: pmq_member_reap) */
    int32_t admin_port;         /* port the admin server listens on, -1 none: stored by the
                                   supervisor, so that a restarted one serves it again */
    uint32_t config_len;        /* bytes of config used, <= PMQ_NS_CONFIG_MAX */
    char config[PMQ_NS_CONFIG_MAX];
} pmq_ns_t;

_Static_assert(sizeof(pmq_ns_t) == 96 + PMQ_NS_CONFIG_MAX, "namespace header size");

/* Bytes of a namespace segment. */
uint64_t pmq_ns_size(void);

/* Format a fresh namespace segment. Returns 0 or PMQ_EINVAL (config too long). */
int pmq_ns_init(void *base, uint64_t len, int32_t owner_pid, uint64_t owner_start,
                uint64_t owner_token, const char *config, uint32_t config_len);

/* Validate a mapped namespace segment: 0, PMQ_NOTREADY, PMQ_EVERSION or PMQ_ECORRUPT. */
int pmq_ns_attach(void *base, uint64_t len);

#endif
