/* Declarations for cffi's cdef (build.py): what Python may call and read of
 * pymq._native. Plain C only: no #include, no _Static_assert, no pthread
 * types. "..." lets cffi take the real sizes, offsets and values from the
 * headers at build time, so Python never hard-codes an offset or a constant. */

#define PMQ_LAYOUT_VERSION ...
#define PMQ_API_VERSION ...
#define PMQ_NAME_MAX ...
#define PMQ_MAX_GROUPS ...
#define PMQ_MAX_MEMBERS ...
#define PMQ_MAX_ACK_GROUPS ...
#define PMQ_DEFAULT_ACK_GROUPS ...
#define PMQ_DEFAULT_PENDING_CAP ...
#define PMQ_MAX_RETRIES ...
#define PMQ_PERSIST_RETRIES ...
#define PMQ_PERSIST_ACK_TIMEOUT_NS ...
#define PMQ_NS_CONFIG_MAX ...
#define PMQ_REC_HDR ...
#define PMQ_JSONL_FRAME ...
static const char *const PMQ_PERSIST_GROUP;

#define PMQ_OK ...
#define PMQ_EMPTY ...
#define PMQ_FULL ...
#define PMQ_CLOSED ...
#define PMQ_GONE ...
#define PMQ_ETOOBIG ...
#define PMQ_ECORRUPT ...
#define PMQ_EVERSION ...
#define PMQ_NOTREADY ...
#define PMQ_ENOSLOT ...
#define PMQ_EINTR ...
#define PMQ_EINVAL ...
#define PMQ_EBUFSMALL ...
#define PMQ_DELETED ...
#define PMQ_NOTFOUND ...
#define PMQ_BUSY ...

#define PMQ_CLOSED_BROKER ...
#define PMQ_CLOSED_DELETED ...
#define PMQ_START_LATEST ...
#define PMQ_START_EARLIEST ...
#define PMQ_START_SEQ ...
#define PMQ_GROUP_ANON ...
#define PMQ_GROUP_ACK ...

/* Header fields Python reads or (tests only) scribbles on. */
typedef struct {
    uint64_t magic;
    uint64_t seg_len, capacity, data_off;
    uint32_t max_groups;
    uint64_t head, tail, gate, next_seq, restore_end;
    uint32_t closed;
    int32_t lock_pid;
    ...;
} pmq_ring_hdr_t;

/* Group fields tests scribble on. */
typedef struct {
    uint32_t state, flags, gen, members;
    uint64_t floor, pend_head, pend_tail, from_seq;
    ...;
} pmq_group_t;

typedef struct {
    pmq_ring_hdr_t *hdr;
    pmq_group_t *groups;
    uint64_t data_off;
    uint64_t capacity;
    uint64_t mask;
    uint32_t max_msg, pending_cap;
    ...;
} pmq_ring_t;

typedef struct {
    int64_t timeout_ns;
    int64_t at_ns;
    ...;
} pmq_deadline_t;

typedef struct {
    char *buf;
    uint64_t buflen;
    uint32_t max;
    uint32_t n;
    uint64_t used, bytes;
    uint64_t *offs, *seqs, *pos;
    uint32_t *lens, *slots, *attempts;
    int64_t *ts;
    uint32_t kind;
    ...;
} pmq_batch_t;
#define PMQ_KIND_PLAIN ...
#define PMQ_KIND_ACK ...

typedef struct pmq_sink {
    int (*copy)(void *ctx, const pmq_batch_t *b, const uint8_t *data);
    void (*drop)(void *ctx);
    void *ctx;
} pmq_sink_t;
typedef struct pmq_hooks pmq_hooks_t;
typedef struct pmq_api {
    uint32_t version, size, layout;
    const char *build_id;
    ...;
} pmq_api_t;

typedef struct {
    uint32_t member, member_gen, group, group_gen;
    uint32_t created;
    ...;
} pmq_join_t;

typedef struct {
    uint64_t capacity;
    uint32_t max_msg, max_groups, max_members, max_ack_groups, pending_cap;
    uint64_t first_seq;
    int32_t creator_pid;
    uint64_t creator_start;
    ...;
} pmq_ring_params_t;

typedef struct {
    uint64_t capacity, head, tail, gate_min, next_seq;
    uint64_t published, published_bytes, publish_waits, publish_full;
    uint64_t expired, recoveries, wakeups, corrupt;
    uint64_t anon_delivered, anon_delivered_bytes;
    uint64_t reaped_members;
    uint32_t groups, members, closed, max_msg;
    int32_t lock_pid;
    uint32_t locked;
    uint64_t restore_end;
    ...;
} pmq_ring_stats_t;

typedef struct {
    char name[...];
    uint32_t index, flags, members, gen, state;
    uint64_t cursor, delivered, delivered_bytes, lag, cursor_seq;
    int64_t idle_since_ns;
    uint64_t acked, nacked, redelivered, dead_lettered, timeouts;
    uint32_t pending, ready, dead, max_retries;
    int32_t lock_pid;
    ...;
} pmq_group_stats_t;

typedef struct {
    int32_t owner_pid;
    uint32_t closed;
    uint64_t owner_start;
    uint64_t owner_token;
    int32_t supervisor_pid;
    uint32_t supervisor_restarts;
    uint64_t supervisor_start;
    int64_t supervisor_beat_ns;
    int64_t created_ns;
    uint64_t reaped_processes;
    int32_t admin_port;
    uint32_t config_len;
    char config[...];
    ...;
} pmq_ns_t;

/* sync.c: an event loop's waiter sleeps on many words at once (futex_waitv) */
int pmq_sync_wait_any(uint32_t *const *words, const uint32_t *expected, uint32_t n,
                      int64_t timeout_ns);
void pmq_sync_wake(uint32_t *word);

/* ring.c */
uint32_t pmq_ring_layout_version(void);
uint64_t pmq_ring_size(const pmq_ring_params_t *p);
int pmq_ring_init(void *base, uint64_t len, const pmq_ring_params_t *p);
void pmq_ring_ready(void *base);
int pmq_ring_attach(pmq_ring_t *r, void *base, uint64_t len);
int pmq_ring_attach_unready(pmq_ring_t *r, void *base, uint64_t len);
int64_t pmq_ring_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                         uint32_t count, pmq_deadline_t *d, const pmq_hooks_t *hooks);
int pmq_ring_restore(pmq_ring_t *r, const char *const *parts, const uint32_t *lens,
                     const uint64_t *seqs, const int64_t *ts, uint32_t count,
                     pmq_deadline_t *d, const pmq_hooks_t *hooks);
int pmq_ring_restoring(pmq_ring_t *r, uint64_t end_seq);
#define PMQ_WAIT_DATA ...
#define PMQ_WAIT_SPACE ...
int pmq_ring_wait_word(pmq_ring_t *r, int which, uint32_t **word, uint32_t *value);
int pmq_ring_close(pmq_ring_t *r, uint32_t why);

/* group.c */
int pmq_group_create(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                     uint64_t start_seq, int64_t ack_timeout_ns, uint32_t max_retries);
int pmq_group_delete(pmq_ring_t *r, const char *name);
int pmq_group_stats(pmq_ring_t *r, pmq_ring_stats_t *out, pmq_group_stats_t *groups,
                    uint32_t max_groups, pmq_deadline_t *d);

/* ack.c */
int pmq_ack_ack(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                const uint64_t *seqs, uint32_t n, const pmq_hooks_t *hooks);
int pmq_ack_nack(pmq_ring_t *r, uint32_t group, uint32_t group_gen, const uint32_t *slots,
                 const uint64_t *seqs, const uint32_t *attempts, uint32_t n,
                 const pmq_hooks_t *hooks);
int pmq_ack_sweep(pmq_ring_t *r, int64_t now_ns, uint64_t *dead_groups, uint32_t *busy);
int pmq_ack_tidy(pmq_ring_t *r, uint32_t group);
int pmq_ack_take_dead(pmq_ring_t *r, uint32_t group, pmq_batch_t *b, uint32_t max_count,
                      uint32_t *group_gen);
int pmq_ack_dead_lettered(pmq_ring_t *r, uint32_t group, uint32_t group_gen,
                          const uint32_t *slots, const uint64_t *seqs, uint32_t n);

/* durable.c */
int pmq_durable_position(pmq_ring_t *r, uint32_t group, uint64_t *position, uint64_t *acked,
                         uint32_t max);
int pmq_durable_restore(pmq_ring_t *r, const char *name, uint32_t flags, uint64_t position_seq,
                        const uint64_t *acked, uint32_t n_acked, int64_t ack_timeout_ns,
                        uint32_t max_retries);

/* member.c */
int pmq_member_join(pmq_ring_t *r, const char *name, uint32_t flags, int start,
                    uint64_t start_seq, uint64_t owner, int32_t pid, int64_t ack_timeout_ns,
                    uint32_t max_retries, pmq_join_t *out);
int pmq_member_read(pmq_ring_t *r, uint32_t member, uint32_t gen, pmq_batch_t *b,
                    uint32_t max_count, pmq_deadline_t *d, const pmq_sink_t *sink,
                    const pmq_hooks_t *hooks);
int pmq_member_leave(pmq_ring_t *r, uint32_t member, uint32_t gen, int64_t timeout_ns);
int pmq_member_reap(pmq_ring_t *r, uint64_t owner);
int pmq_member_info(pmq_ring_t *r, uint32_t i, uint64_t *owner, uint32_t *group, int32_t *pid);

/* api.c */
const pmq_api_t *pmq_api(void);

/* ns.c */
uint64_t pmq_ns_size(void);
int pmq_ns_init(void *base, uint64_t len, int32_t owner_pid, uint64_t owner_start,
                uint64_t owner_token, const char *config, uint32_t config_len);
int pmq_ns_attach(void *base, uint64_t len);

/* codec: jsonl.c */
uint64_t pmq_jsonl_line_max(uint32_t len);
int64_t pmq_jsonl_encode(const char *buf, uint64_t buflen, const uint64_t *offs,
                         const uint32_t *lens, const uint64_t *seqs, const int64_t *ts_ns,
                         uint32_t n, char *out, uint64_t out_cap, uint64_t *ends);

/* pmq_record.h */
uint64_t pmq_record_size(uint64_t len);
