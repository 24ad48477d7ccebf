/*
 * pmq_sync.h - process-shared waiting and locking primitives.
 *
 * Waiting is a futex on a 32-bit word in shared memory (not FUTEX_PRIVATE:
 * waiters and wakers are different processes). Locks are robust
 * process-shared mutexes; an owner's death surfaces as EOWNERDEAD, which the
 * caller repairs (see pmq_ring.c: ring_lock and ring_recover).
 */
#ifndef PMQ_SYNC_H
#define PMQ_SYNC_H

#include <pthread.h>
#include <stdint.h>

/* A spinning wait's pause between polls (kinder to the sibling hyperthread). */
static inline void pmq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Monotonic clock in nanoseconds. */
int64_t pmq_now_mono(void);
/* Wall clock in nanoseconds since the epoch. */
int64_t pmq_now_real(void);

/* Sleep while *word == expected, at most timeout_ns (< 0: no limit).
 * Returns 0 when woken or the word differed, -ETIMEDOUT, or -EINTR. */
int pmq_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/* Wake every waiter on word. */
void pmq_futex_wake_all(uint32_t *word);

/* Initialise a robust, process-shared mutex. Returns 0 or -errno. */
int pmq_mutex_init(pthread_mutex_t *m);

/* Lock, waiting at most timeout_ns (< 0: no limit; the deadline is taken on
 * CLOCK_REALTIME, for pthread_mutex_timedlock, only once the spin failed).
 * blocked_since (may be NULL): set, if the spin failed, to CLOCK_MONOTONIC
 * when the blocking wait began, so that a caller can count that wait against
 * a timeout of its own; untouched when the spin got the lock.
 * Returns 0, EOWNERDEAD (locked; the previous owner died; the caller must
 * repair and call pthread_mutex_consistent), -ETIMEDOUT, -ENOTRECOVERABLE,
 * or another -errno. */
int pmq_mutex_lock(pthread_mutex_t *m, int64_t timeout_ns, int64_t *blocked_since);

#endif
