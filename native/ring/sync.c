/*
 * sync.c - clocks, deadlines, futexes and robust locks (see pmq_sync.h).
 */
#define _GNU_SOURCE
#include "pmq_sync.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on x86_64 and aarch64 */
#endif
#ifndef FUTEX_32
#define FUTEX_32 2 /* FUTEX2_SIZE_U32; without FUTEX2_PRIVATE: shared across processes */
struct futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t __reserved;
};
#endif

#define NS 1000000000LL

static int64_t now_of(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

int64_t pmq_sync_now(void) { return now_of(CLOCK_MONOTONIC); }
int64_t pmq_sync_now_real(void) { return now_of(CLOCK_REALTIME); }

int64_t pmq_sync_now_late(void)
{
    static int64_t tick_once; /* CLOCK_MONOTONIC_COARSE's resolution (4 ms here), or -1 */
    int64_t tick = __atomic_load_n(&tick_once, __ATOMIC_RELAXED);
    if (!tick) {
        struct timespec res;
        tick = clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0 && res.tv_sec == 0 &&
                       res.tv_nsec > 0 && res.tv_nsec <= 100000000
                   ? res.tv_nsec
                   : -1;
        __atomic_store_n(&tick_once, tick, __ATOMIC_RELAXED);
    }
    /* 6.5 ns against 30 for CLOCK_MONOTONIC on this machine */
    return tick > 0 ? now_of(CLOCK_MONOTONIC_COARSE) + tick : pmq_sync_now();
}

/* ---- test points -------------------------------------------------------------- */

int pmq_test_armed;
static const char *test_points;

__attribute__((constructor)) static void test_points_init(void)
{
    test_points = getenv("PYMQ_TEST_PAUSE");
    pmq_test_armed = test_points != NULL && test_points[0] != '\0';
}

void pmq_test_reached(const char *point)
{
    size_t n = strlen(point);
    for (const char *p = test_points; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        if ((p[0] == '*' && (p[1] == ',' || !p[1])) ||
            (strncmp(p, point, n) == 0 && (p[n] == ',' || !p[n]))) {
            raise(SIGSTOP);
            return;
        }
    }
}

/* ---- deadlines -------------------------------------------------------------- */

int64_t pmq_deadline_start(pmq_deadline_t *d, int64_t start_ns)
{
    if (d->timeout_ns < 0)
        return INT64_MAX;
    if (d->at_ns < 0) {
        int64_t start = start_ns < 0 ? pmq_sync_now() : start_ns;
        d->at_ns = d->timeout_ns > INT64_MAX - start ? INT64_MAX : start + d->timeout_ns;
    }
    return d->at_ns;
}

int64_t pmq_deadline_left(pmq_deadline_t *d)
{
    if (d->timeout_ns < 0)
        return -1;
    int64_t at = pmq_deadline_start(d, -1), now = pmq_sync_now();
    return at > now ? at - now : 0;
}

static struct timespec timespec_of(int64_t ns)
{
    return (struct timespec){.tv_sec = ns / NS, .tv_nsec = ns % NS};
}

/* ---- futexes ---------------------------------------------------------------- */

int pmq_sync_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts = timespec_of(timeout_ns < 0 ? 0 : timeout_ns);
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_ns < 0 ? NULL : &ts, NULL, 0);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return errno == EINTR ? PMQ_EINTR : -errno;
}

int pmq_sync_wait_any(uint32_t *const *words, const uint32_t *expected, uint32_t n,
                      int64_t timeout_ns)
{
    if (n == 0 || n > 128)
        return -EINVAL;
    struct futex_waitv w[128];
    for (uint32_t i = 0; i < n; i++)
        w[i] = (struct futex_waitv){.val = expected[i], .uaddr = (uintptr_t)words[i],
                                    .flags = FUTEX_32};
    /* futex_waitv takes an absolute time on the clock it is told (monotonic here) */
    struct timespec ts = timespec_of(timeout_ns < 0 ? 0 : pmq_sync_now() + timeout_ns);
    long rc = syscall(SYS_futex_waitv, w, n, 0, timeout_ns < 0 ? NULL : &ts, CLOCK_MONOTONIC);
    if (rc >= 0)
        return (int)rc;
    if (errno == EAGAIN) /* a word differed already: which one */
        for (uint32_t i = 0; i < n; i++)
            if (__atomic_load_n(words[i], __ATOMIC_ACQUIRE) != expected[i])
                return (int)i;
    return errno == EINTR ? PMQ_EINTR : -errno;
}

void pmq_sync_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

/* ---- robust locks ------------------------------------------------------------- */

int pmq_sync_lock_init(pthread_mutex_t *m)
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

/* glibc keeps a mutex's type, robust and process-shared bits in its __kind
 * and trusts them: a scribbled kind can send it down a priority-protect path
 * that aborts the process. So every lock and unlock first compares the kind
 * with that of a mutex made as pmq_sync_lock_init makes them (one load; a
 * write between the check and glibc's own read is not covered). */
static int mutex_kind = -1;

__attribute__((constructor)) static void mutex_kind_init(void)
{
    pthread_mutex_t m;
    if (pmq_sync_lock_init(&m) == 0) {
#ifdef __GLIBC__
        mutex_kind = m.__data.__kind;
#else
        mutex_kind = 0;
#endif
        pthread_mutex_destroy(&m);
    }
}

static int kind_ok(pthread_mutex_t *m)
{
#ifdef __GLIBC__
    return __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED) == mutex_kind;
#else
    (void)m;
    return 1;
#endif
}

/* The tid of the mutex's owner, read with a load: 0 when it is free or its
 * owner died (glibc's lock word is the owner's tid and the futex bits). 0
 * elsewhere, so a spin tries the lock every time. */
static int lock_owner(pthread_mutex_t *m)
{
#ifdef __GLIBC__
    return __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) & FUTEX_TID_MASK;
#else
    (void)m;
    return 0;
#endif
}

void pmq_sync_unlock(pthread_mutex_t *m)
{
    if (kind_ok(m)) /* else corrupt: it was reported, and unlocking it could abort */
        pthread_mutex_unlock(m);
}

/* What pthread returned, as pmq_sync_lock returns it: the one place where a
 * dead owner is repaired. */
static int after_lock(pthread_mutex_t *m, int rc, pmq_repair_fn repair, void *ctx)
{
    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) {
        int fixed = repair ? repair(ctx) : 0;
        pthread_mutex_consistent(m);
        if (fixed < 0)
            pmq_sync_unlock(m);
        return fixed < 0 ? fixed : 0;
    }
    if (rc == ENOTRECOVERABLE)
        return PMQ_ECORRUPT;
    if (rc == EBUSY)
        return PMQ_BUSY;
    return -rc;
}

int pmq_sync_trylock(pthread_mutex_t *m, pmq_repair_fn repair, void *ctx)
{
    if (!kind_ok(m))
        return PMQ_ECORRUPT;
    return after_lock(m, pthread_mutex_trylock(m), repair, ctx);
}

/* Tries of pthread_mutex_trylock before sleeping in the kernel. The ring's
 * lock is held for a publish's copy and commit, well under a microsecond, so
 * when several publishers contend, a short spin gets it sooner and cheaper than
 * a futex sleep and wake-up (about 1 us of system calls on each side). */
#define PMQ_LOCK_SPINS 64

int pmq_sync_lock(pthread_mutex_t *m, pmq_deadline_t *d, int64_t min_ns,
                  const pmq_hooks_t *hooks, pmq_repair_fn repair, void *ctx)
{
    if (!kind_ok(m))
        return PMQ_ECORRUPT;
    int rc = EBUSY;
    for (int i = 0; i < PMQ_LOCK_SPINS && rc == EBUSY; i++) {
        /* test, then test-and-set: a trylock takes the lock's line for
         * writing even when it fails, so spinning with it would pull the line
         * away from the holder, who needs it to unlock; a load shares it */
        if (lock_owner(m) == 0)
            rc = pthread_mutex_trylock(m);
        if (rc == EBUSY)
            pmq_sync_relax();
    }
    if (rc != EBUSY)
        return after_lock(m, rc, repair, ctx);
    /* The clock is read only now: a lock got by spinning reads none. */
    int64_t now = pmq_sync_now(), at = d ? pmq_deadline_start(d, now) : INT64_MAX;
    if (at != INT64_MAX && min_ns > 0 && at - now < min_ns)
        at = now + min_ns;
    pmq_sync_block(hooks);
    if (at == INT64_MAX) {
        rc = pthread_mutex_lock(m);
    } else {
        struct timespec ts = timespec_of(at);
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
    }
    pmq_sync_unblock(hooks);
    return after_lock(m, rc, repair, ctx);
}
