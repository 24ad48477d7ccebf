/*
 * pmq_sync.h - clocks, deadlines, futexes and robust process-shared locks:
 * everything the ring waits with. Depends on nothing of pymq's.
 *
 * Waiting is a futex on a 32-bit word in shared memory (shared, not
 * FUTEX_PRIVATE: waiters and wakers are different processes). Locks are
 * robust process-shared mutexes; every lock goes through pmq_sync_lock, whose
 * EOWNERDEAD path calls the caller's repair function once before
 * pthread_mutex_consistent (LMDB's mdb_mutex_failed). Every wait takes a
 * pmq_deadline_t, whose arithmetic lives here and nowhere else.
 */
#ifndef PMQ_SYNC_H
#define PMQ_SYNC_H

#include <pthread.h>
#include <stdint.h>

/* Return codes shared by every layer: 0 or a count on success; named
 * negatives for expected outcomes; -errno for system failures. */
#define PMQ_OK          0
#define PMQ_EMPTY     (-1001) /* nothing to read before the deadline */
#define PMQ_FULL      (-1002) /* no ring space before the deadline */
#define PMQ_CLOSED    (-1003) /* the broker closed the segment */
#define PMQ_GONE      (-1004) /* this member was removed (unsubscribed, reaped, group deleted) */
#define PMQ_ETOOBIG   (-1005) /* a payload above max_msg, or a batch above capacity */
#define PMQ_ECORRUPT  (-1006) /* a length, offset or count out of bounds */
#define PMQ_EVERSION  (-1007) /* another magic or layout version */
#define PMQ_NOTREADY  (-1008) /* segment still being initialised */
#define PMQ_ENOSLOT   (-1009) /* no free group, member or pending table */
#define PMQ_EINTR     (-1010) /* a signal interrupted a wait; call again with the same deadline */
#define PMQ_EINVAL    (-1011) /* bad argument */
#define PMQ_EBUFSMALL (-1012) /* the next record does not fit the caller's buffer */
#define PMQ_DELETED   (-1013) /* the topic was deleted (its segment goes once unmapped) */
#define PMQ_NOTFOUND  (-1014) /* no such group */
#define PMQ_BUSY      (-1015) /* a lock is held by another process: try again later */

/* Test points: with PYMQ_TEST_PAUSE set (names separated by commas, or "*"),
 * a process that reaches a point of that name stops itself (SIGSTOP) there,
 * holding whatever it holds, so that a test can kill it or keep it frozen
 * inside a critical section (tests/chaos). Unset (always, outside tests), a
 * point costs one load and a branch. */
extern int pmq_test_armed;
void pmq_test_reached(const char *point);
#define PMQ_TEST_POINT(point)                       \
    do {                                            \
        if (__builtin_expect(pmq_test_armed, 0))    \
            pmq_test_reached(point);                \
    } while (0)

/* A spinning wait's pause between polls (kinder to the sibling hyperthread). */
static inline void pmq_sync_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* CLOCK_MONOTONIC nanoseconds (one clock for every process of the machine). */
int64_t pmq_sync_now(void);
/* A CLOCK_MONOTONIC time no earlier than now, at a coarse clock's cost (the
 * coarse clock plus its resolution): for deadlines that must not come early
 * and may come a tick late (an ack's). */
int64_t pmq_sync_now_late(void);
/* CLOCK_REALTIME nanoseconds since the epoch. */
int64_t pmq_sync_now_real(void);

/* A timeout that becomes a deadline only when a wait begins, so that a call
 * that never waits reads no clock. timeout_ns < 0: for ever; 0: never wait.
 * A call interrupted by a signal (PMQ_EINTR) is called again with the same
 * deadline, and waits only for what is left of it. */
typedef struct pmq_deadline {
    int64_t timeout_ns;
    int64_t at_ns; /* CLOCK_MONOTONIC, or -1 until the first wait starts it */
} pmq_deadline_t;

#define PMQ_DEADLINE(timeout) ((pmq_deadline_t){.timeout_ns = (timeout), .at_ns = -1})

/* Start the clock at start_ns (< 0: now) unless it started already; returns
 * the deadline (INT64_MAX for ever). */
int64_t pmq_deadline_start(pmq_deadline_t *d, int64_t start_ns);
/* Nanoseconds left (starting the clock now if it has not started): -1 for
 * ever, 0 once past. */
int64_t pmq_deadline_left(pmq_deadline_t *d);

/* What a caller does around a wait: the CPython fast path lets the GIL go in
 * block and takes it back in unblock. NULL, or either function NULL: nothing. */
typedef struct pmq_hooks {
    void (*block)(void *ctx);
    void (*unblock)(void *ctx);
    void *ctx;
} pmq_hooks_t;

static inline void pmq_sync_block(const pmq_hooks_t *h)
{
    if (h && h->block)
        h->block(h->ctx);
}

static inline void pmq_sync_unblock(const pmq_hooks_t *h)
{
    if (h && h->unblock)
        h->unblock(h->ctx);
}

/* Sleep while *word == expected, at most timeout_ns (< 0: no limit).
 * 0 when woken or the word differed, -ETIMEDOUT, or PMQ_EINTR. */
int pmq_sync_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
/* Sleep until any of n words (n <= 128) differs from its expected value, at
 * most timeout_ns (futex_waitv, Linux 5.16+). The index of the word that woke
 * it (or of one that differed), -ETIMEDOUT, PMQ_EINTR, or -errno (-ENOSYS
 * before 5.16). */
int pmq_sync_wait_any(uint32_t *const *words, const uint32_t *expected, uint32_t n,
                      int64_t timeout_ns);
/* Wake every waiter on word. */
void pmq_sync_wake(uint32_t *word);

/* Initialise a robust, process-shared mutex. 0 or -errno. */
int pmq_sync_lock_init(pthread_mutex_t *m);

/* Repair what a lock holder that died left (EOWNERDEAD), with the lock held:
 * 0, or a negative code (the lock is then released and the code returned). */
typedef int (*pmq_repair_fn)(void *ctx);

/* Lock m: a short spin of trylocks, then (hooks->block first) a blocking
 * wait until d's deadline, which starts when the wait does (so a caller's own
 * wait that follows counts from there too), but at least min_ns (so that a
 * short timeout does not fail on mere contention); d NULL: no limit. On
 * EOWNERDEAD it calls repair(ctx), then pthread_mutex_consistent. Returns 0
 * (locked); -ETIMEDOUT; repair's code; PMQ_ECORRUPT for a lock that cannot
 * be recovered; -errno. */
int pmq_sync_lock(pthread_mutex_t *m, pmq_deadline_t *d, int64_t min_ns,
                  const pmq_hooks_t *hooks, pmq_repair_fn repair, void *ctx);

/* Unlock m (unless its kind was scribbled on: then it is left, corrupt). */
void pmq_sync_unlock(pthread_mutex_t *m);

/* Lock m only if it is free now (a repair included): 0, PMQ_BUSY, or as
 * pmq_sync_lock. Never waits: a caller holding another lock uses this. */
int pmq_sync_trylock(pthread_mutex_t *m, pmq_repair_fn repair, void *ctx);

#endif
