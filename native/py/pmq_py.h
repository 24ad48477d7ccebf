/*
 * pmq_py.h - what the files of pymq._fast, the CPython fast path, share.
 *
 * pymq._fast is the per-message edge between Python and the ring: publish
 * (and the Publisher, Client.publish's usual case), the Reader (a
 * subscription's reads, acks and nacks) and the Message type they make. It has no ring logic of its own: it calls pymq._native's
 * functions through the versioned table pmq_api.h describes, handed over
 * once by bind(). Only pymq/_core.py imports it.
 *
 * The GIL: a call keeps it while it does not wait, and lets it go around
 * every wait (the ring's hooks: py_block / py_unblock), so a read that finds
 * records, a publish that finds room and an ack cost no GIL hand-over.
 * Errors: the ring's negative codes become exceptions through one Python
 * function, pymq._core.error_from_c, which names the topic, time and sizes.
 */
#ifndef PMQ_PY_H
#define PMQ_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "pmq_api.h"

/* A sink's code for "a Python exception is set" (MemoryError, say). */
#define PY_ERR (-1900)

extern const pmq_api_t *py_api;       /* bound by bind(); NULL before */
extern PyTypeObject PyMessage_Type;   /* pymq._fast.Message: pymq.Message */
extern PyTypeObject PyReader_Type;    /* pymq._fast.Reader */
extern PyTypeObject PyPublisher_Type; /* pymq._fast.Publisher: Client.publish's usual case */
int py_publisher_init(void);          /* its type made ready: 0, or -1 with an error set */

/* 1 if bind() ran, else 0 with RuntimeError set. */
int py_bound(void);

/* A timeout in seconds (None: for ever, -1; an int or float >= 0, past
 * 2**63 ns: INT64_MAX) as ns: pymq's one conversion. 0, or -1 with
 * ValueError set. */
int py_timeout_ns(PyObject *seconds, int64_t *ns);

/* Set the exception for the ring's code rc (rc < 0) and return NULL. */
PyObject *py_raise(int64_t rc, PyObject *topic, int64_t timeout_ns, int64_t size, int64_t largest,
                   const pmq_ring_t *r);

/* Publish count parts with the GIL's hooks: the ring's code (the first seq,
 * or a negative code), or PY_ERR with the exception of a signal's handler
 * set. Signals are seen to while it waits, and it then goes on with what is
 * left of its deadline. */
int64_t py_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens, uint32_t count,
                   int64_t timeout);
/* py_publish's code as the call's result: the last seq, or NULL with the
 * exception set. */
PyObject *py_published(int64_t rc, pmq_ring_t *r, PyObject *topic, const uint32_t *lens,
                       uint32_t count, int64_t timeout);

/* The hooks' context: the thread state while the GIL is let go. */
typedef struct py_gil {
    PyThreadState *ts;
} py_gil_t;

void py_block(void *ctx);
void py_unblock(void *ctx);

/* A subscription's reads. */
typedef struct {
    PyObject_HEAD
    pmq_ring_t *ring;
    uint32_t member, gen, group, group_gen;
    int ack;              /* a member of an ack group */
    int busy;             /* a call is under way (a subscription is not for several threads) */
    int closed;           /* left its group: reads give SubscriptionClosed */
    pmq_batch_t b;        /* over the arrays below; no buffer: sinks copy into bytes */
    uint64_t *offs, *seqs, *pos;
    uint32_t *lens, *slots, *attempts;
    int64_t *ts;
    PyObject *owner;      /* what keeps the mapping alive (pymq._core.Ring) */
    PyObject *topic;      /* str */
} ReaderObject;

/* A message. Received from an ack subscription, it names its delivery. */
typedef struct {
    PyObject_HEAD
    PyObject *payload;    /* bytes (a user's message: what it was given) */
    PyObject *topic;      /* str or None */
    PyObject *reader;     /* ReaderObject of its subscription, or NULL: a user's message */
    PyObject *ack_fn;     /* a user's message: its ack callable, or NULL */
    PyObject *views;      /* memoryviews given out by Message.view(), or NULL */
    uint64_t seq;
    uint64_t pos;         /* the record's position in the ring */
    double publish_time;
    uint32_t slot;        /* its pending slot */
    uint32_t attempt;     /* delivery_attempt */
    char has_seq, has_time;
    char settled;         /* acked or nacked (by this object) */
} MessageObject;

/* A received message of reader rd: record i of rd's batch, payload p (a
 * reference is taken). NULL on error. */
PyObject *py_message(ReaderObject *rd, uint32_t i, PyObject *p);

/* Release the views a message gave out (its place in the ring may be reused). */
void py_release_views(MessageObject *m);

#endif
