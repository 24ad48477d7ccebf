/*
 * c2c.c - how long a cache line takes to move from one CPU to another on this
 * host, right now: two threads, pinned to CPUs 0 and 1, take turns to write
 * one shared line (each waits to see the other's write, then writes). Prints
 * the one-way time in ns, the median of 5 rounds of 100,000 handoffs.
 *
 * On the 2-vCPU KVM machine of docs/benchmarks.md it reads either about
 * 50 ns or about 230 ns, for minutes at a time: the host places the two vCPUs
 * near each other or far apart. Cross-process rates that move lines between
 * CPUs (fan-in above all) follow it, so compare.py measures it before every
 * run (harness.cross_cpu_ns) and reports it beside the run.
 *
 * Built and run by benchmarks/harness.py: cc -O2 -pthread c2c.c.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define HANDOFFS 100000
#define ROUNDS 5

static _Alignas(64) volatile uint64_t line;

static int pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return sched_setaffinity(0, sizeof s, &s);
}

/* Write odd (the other thread) or even (main) turns of round r. */
static void turns(uint64_t first, uint64_t base)
{
    for (uint64_t i = first; i < HANDOFFS; i += 2) {
        while (line != base + i)
            ;
        line = base + i + 1;
    }
}

static void *other(void *arg)
{
    (void)arg;
    if (pin(1) != 0)
        exit(2);
    for (uint64_t r = 0; r < ROUNDS; r++)
        turns(1, r * (HANDOFFS + 1));
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    if (pin(0) != 0)
        return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, other, NULL) != 0)
        return 2;
    double ns[ROUNDS];
    for (uint64_t r = 0; r < ROUNDS; r++) {
        uint64_t base = r * (HANDOFFS + 1);
        struct timespec a, b;
        while (line != base) /* the other thread ended the last round */
            ;
        clock_gettime(CLOCK_MONOTONIC, &a);
        turns(0, base);
        while (line != base + HANDOFFS)
            ;
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[r] = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / HANDOFFS;
        line = base + HANDOFFS + 1; /* the next round's base */
    }
    pthread_join(t, NULL);
    qsort(ns, ROUNDS, sizeof ns[0], cmp);
    printf("%.1f\n", ns[ROUNDS / 2]);
    return 0;
}
