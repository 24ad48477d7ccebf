/*
 * sync.c - futex waits and robust process-shared mutexes.
 */
#define _GNU_SOURCE
#include "pmq_sync.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t pmq_now_mono(void) { return now_ns(CLOCK_MONOTONIC); }
int64_t pmq_now_real(void) { return now_ns(CLOCK_REALTIME); }

int pmq_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    /* Shared (not PRIVATE) futex: the word is in memory mapped by many processes. */
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return -errno;
}

void pmq_futex_wake_all(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

int pmq_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc == 0)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -rc;
}

/* Tries of pthread_mutex_trylock before sleeping in the kernel. The ring's
 * lock is held for a publish's copy and commit, well under a microsecond, so
 * when several publishers contend, a short spin gets it sooner and cheaper than
 * a futex sleep and wake-up (about 1 us of system calls on each side). */
#define PMQ_LOCK_SPINS 64

int pmq_mutex_lock(pthread_mutex_t *m, int64_t timeout_ns, int64_t *blocked_since)
{
    int rc;
    for (int i = 0; i < PMQ_LOCK_SPINS; i++) {
        rc = pthread_mutex_trylock(m);
        if (rc == 0 || rc == EOWNERDEAD)
            return rc;
        if (rc != EBUSY)
            break; /* ENOTRECOVERABLE, say: the blocking call reports it */
        pmq_cpu_relax();
    }
    if (blocked_since)
        *blocked_since = pmq_now_mono();
    if (timeout_ns < 0) {
        rc = pthread_mutex_lock(m);
    } else { /* the clock is read only now: a lock got by spinning reads none */
        int64_t now = pmq_now_real();
        int64_t deadline = timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
        struct timespec ts = {
            .tv_sec = deadline / 1000000000LL,
            .tv_nsec = deadline % 1000000000LL,
        };
        rc = pthread_mutex_timedlock(m, &ts);
    }
    if (rc == 0 || rc == EOWNERDEAD)
        return rc;
    return -rc;
}
