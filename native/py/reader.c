/*
 * reader.c - pymq._fast.Reader: one subscription's reads, acks and nacks.
 *
 * A read is one call of the ring's read (pmq_member_read) with a sink that
 * copies each payload once, from the ring straight into its bytes object; a
 * plain group's copies are dropped if another member took the records first
 * (the ring then reads again), an ack group's are made under its lock. An
 * ack subscription's records become Messages. Errors are raised here, with
 * the ring's code made an exception by pymq._core.error_from_c.
 */
#include "pmq_py.h"

#include <string.h>

/* ---- the sink: payloads into bytes ---------------------------------------------------- */

typedef struct sink_ctx {
    py_gil_t gil;        /* the hooks' */
    const pmq_ring_t *ring;
    int one;             /* one record wanted: got is that bytes object, not a list */
    int bulk;            /* a batch: got is (data, offsets, seqs, times[, slots, attempts]) */
    int ack;             /* of an ack group (bulk: with slots and attempts) */
    PyObject *got;       /* what the last copy made */
} sink_ctx_t;

static PyObject *payload_of(const sink_ctx_t *c, const pmq_batch_t *b, const uint8_t *data,
                            uint32_t i)
{
    uint64_t cap = c->ring->capacity;
    if (b->offs[i] > cap || b->lens[i] > cap - b->offs[i]) { /* checked by the ring; again here */
        PyErr_SetString(PyExc_ValueError, "a record lies outside the data area");
        return NULL;
    }
    PyObject *o = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)b->lens[i]);
    if (o)
        pmq_payload_copy(PyBytes_AS_STRING(o), data + b->offs[i], b->lens[i]);
    return o;
}

/* The bytes of an array of n items of size bytes each. */
static PyObject *array_bytes(const void *src, uint32_t n, size_t size)
{
    return PyBytes_FromStringAndSize(src, (Py_ssize_t)((size_t)n * size));
}

/* A batch: every payload back to back in one bytes object (one copy out of
 * the ring each), their offsets (n + 1), seqs, publish times (epoch seconds,
 * float64) and, of an ack group, pending slots and delivery attempts: a few
 * objects for the whole batch, none per message. */
static int sink_bulk(sink_ctx_t *c, const pmq_batch_t *b, const uint8_t *data)
{
    uint64_t cap = c->ring->capacity, total = 0;
    for (uint32_t i = 0; i < b->n; i++) { /* checked by the ring; again here */
        if (b->offs[i] > cap || b->lens[i] > cap - b->offs[i]) {
            PyErr_SetString(PyExc_ValueError, "a record lies outside the data area");
            return PY_ERR;
        }
        total += b->lens[i];
    }
    PyObject *payloads = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    PyObject *offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(((size_t)b->n + 1) * 8));
    PyObject *times = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((size_t)b->n * 8));
    PyObject *seqs = array_bytes(b->seqs, b->n, sizeof *b->seqs);
    PyObject *slots = c->ack ? array_bytes(b->slots, b->n, sizeof *b->slots) : Py_NewRef(Py_None);
    PyObject *attempts = c->ack ? array_bytes(b->attempts, b->n, sizeof *b->attempts)
                                : Py_NewRef(Py_None);
    if (payloads && offsets && times && seqs && slots && attempts) {
        char *out = PyBytes_AS_STRING(payloads);
        uint64_t *o = (uint64_t *)(void *)PyBytes_AS_STRING(offsets), at = 0;
        double *t = (double *)(void *)PyBytes_AS_STRING(times);
        for (uint32_t i = 0; i < b->n; i++) {
            pmq_payload_copy(out + at, data + b->offs[i], b->lens[i]);
            o[i] = at;
            at += b->lens[i];
            t[i] = (double)b->ts[i] / 1e9;
        }
        o[b->n] = at;
        int same = 1;
        for (uint32_t i = 1; i < b->n && same; i++)
            same = b->lens[i] == b->lens[0];
        PyObject *size = same && b->n ? PyLong_FromUnsignedLong(b->lens[0]) : Py_NewRef(Py_None);
        if (size)
            c->got = PyTuple_Pack(7, payloads, offsets, seqs, times, slots, attempts, size);
        Py_XDECREF(size);
    }
    Py_XDECREF(payloads);
    Py_XDECREF(offsets);
    Py_XDECREF(times);
    Py_XDECREF(seqs);
    Py_XDECREF(slots);
    Py_XDECREF(attempts);
    return c->got ? 0 : PY_ERR;
}

static int sink_copy(void *ctx, const pmq_batch_t *b, const uint8_t *data)
{
    sink_ctx_t *c = ctx;
    Py_CLEAR(c->got);
    if (c->bulk)
        return sink_bulk(c, b, data);
    if (c->one) {
        c->got = payload_of(c, b, data, 0);
        return c->got ? 0 : PY_ERR;
    }
    PyObject *list = PyList_New(b->n);
    if (!list)
        return PY_ERR;
    for (uint32_t i = 0; i < b->n; i++) {
        PyObject *p = payload_of(c, b, data, i);
        if (!p) {
            Py_DECREF(list);
            return PY_ERR;
        }
        PyList_SET_ITEM(list, i, p);
    }
    c->got = list;
    return 0;
}

static void sink_drop(void *ctx) { Py_CLEAR(((sink_ctx_t *)ctx)->got); }

/* ---- reading ---------------------------------------------------------------------------- */

/* One read: rc > 0 with *got the payload (max 1) or their list; else the
 * ring's code (PMQ_EMPTY, PMQ_BUSY, ...) with nothing made, or PY_ERR with a
 * Python error set (a signal's handler raised, a copy failed, a misuse). */
static int read_rc(ReaderObject *rd, uint32_t max, int64_t timeout, int bulk, PyObject **got)
{
    *got = NULL;
    if (!py_bound())
        return PY_ERR;
    if (rd->busy) {
        PyErr_Format(PyExc_RuntimeError, "a subscription of %R is being read by another "
                     "thread: give each thread its own subscription", rd->topic);
        return PY_ERR;
    }
    if (rd->closed)
        return PMQ_GONE;
    sink_ctx_t c = {.ring = rd->ring, .one = max == 1 && !bulk, .bulk = bulk, .ack = rd->ack};
    pmq_sink_t sink = {sink_copy, sink_drop, &c};
    pmq_hooks_t hooks = {py_block, py_unblock, &c.gil};
    pmq_deadline_t d = PMQ_DEADLINE(timeout);
    int rc;
    rd->busy = 1;
    while ((rc = py_api->read(rd->ring, rd->member, rd->gen, &rd->b, max, &d, &sink, &hooks)) ==
           PMQ_EINTR) { /* a signal: its handler runs now, then the rest of the deadline */
        if (PyErr_CheckSignals() < 0)
            break;
    }
    rd->busy = 0;
    if (rc > 0 && c.got) {
        *got = c.got;
        return rc;
    }
    Py_XDECREF(c.got);
    if (rc == PMQ_EINTR || (rc > 0 && PyErr_Occurred()))
        return PY_ERR;
    return rc > 0 ? PMQ_ECORRUPT : rc;
}

static PyObject *read_into(ReaderObject *rd, uint32_t max, int64_t timeout)
{
    PyObject *got;
    int rc = read_rc(rd, max, timeout, 0, &got);
    if (rc > 0)
        return got;
    if (rc == PY_ERR)
        return NULL;
    /* a lock held by another member, and no time to wait for it: nothing arrived */
    return py_raise(rc == PMQ_BUSY ? PMQ_EMPTY : rc, rd->topic, timeout, 0, 0, rd->ring);
}

/* The payloads as Messages of this (ack) subscription. */
static PyObject *as_messages(ReaderObject *rd, PyObject *got, int one)
{
    if (one) {
        PyObject *m = py_message(rd, 0, got);
        Py_DECREF(got);
        return m;
    }
    Py_ssize_t n = PyList_GET_SIZE(got);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = py_message(rd, (uint32_t)i, PyList_GET_ITEM(got, i));
        if (!m) {
            Py_DECREF(got);
            return NULL;
        }
        PyList_SetItem(got, i, m); /* the list's reference to the bytes goes to the message */
    }
    return got;
}

/* get1(timeout=None) -> bytes, or a Message for an ack subscription; the
 * timeout in seconds, as every read of the Reader takes it, and keywords
 * too, so that Subscription.get can be this method itself. */
static PyObject *reader_get1(ReaderObject *rd, PyObject *const *args, Py_ssize_t n,
                             PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (n + nkw > 1 ||
        (nkw && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout"))) {
        PyErr_SetString(PyExc_TypeError, "get(timeout=None) takes one argument, timeout");
        return NULL;
    }
    int64_t timeout;
    if (py_timeout_ns(n + nkw ? args[0] : Py_None, &timeout) < 0)
        return NULL;
    PyObject *got = read_into(rd, 1, timeout);
    return got && rd->ack ? as_messages(rd, got, 1) : got;
}

/* [obj], taking obj's reference (NULL, and obj released, if there is no memory). */
static PyObject *in_a_list(PyObject *obj)
{
    PyObject *list = PyList_New(1);
    if (!list) {
        Py_DECREF(obj);
        return NULL;
    }
    PyList_SET_ITEM(list, 0, obj);
    return list;
}

/* The (max, timeout) of get and get_batch: max 1..the reader's batch, the
 * timeout in seconds (None: for ever). */
static int args_max_timeout(ReaderObject *rd, PyObject *const *args, Py_ssize_t n,
                            const char *signature, uint32_t *max, int64_t *timeout)
{
    if (n != 2) {
        PyErr_Format(PyExc_TypeError, "%s", signature);
        return -1;
    }
    unsigned long m = PyLong_AsUnsignedLong(args[0]);
    if ((m == (unsigned long)-1 && PyErr_Occurred()) || py_timeout_ns(args[1], timeout) < 0)
        return -1;
    if (m == 0 || m > rd->b.max) {
        PyErr_Format(PyExc_ValueError, "max must be 1..%u", rd->b.max);
        return -1;
    }
    *max = (uint32_t)m;
    return 0;
}

/* get(max, timeout) -> [bytes, ...], or [Message, ...] for an ack subscription */
static PyObject *reader_get(ReaderObject *rd, PyObject *const *args, Py_ssize_t n)
{
    int64_t timeout;
    uint32_t max;
    if (args_max_timeout(rd, args, n, "get(max, timeout)", &max, &timeout) < 0)
        return NULL;
    PyObject *got = read_into(rd, max, timeout);
    if (got && max == 1) /* read_into made one object: get() wants a list */
        got = in_a_list(got);
    return got && rd->ack ? as_messages(rd, got, 0) : got;
}

/* A read that does not wait, as poll returns it: the payloads (a list;
 * Messages for an ack subscription), None (an ack group's lock is busy), or
 * NULL: an error set, or, with *empty, nothing there. */
static PyObject *poll_once(ReaderObject *rd, uint32_t max, int *empty)
{
    PyObject *got;
    int rc = read_rc(rd, max, 0, 0, &got);
    *empty = rc == PMQ_EMPTY;
    if (rc > 0) {
        if (max == 1 && !(got = in_a_list(got))) /* read_rc made one object */
            return NULL;
        return rd->ack ? as_messages(rd, got, 0) : got;
    }
    if (rc == PMQ_BUSY)
        Py_RETURN_NONE;
    if (rc == PY_ERR || rc == PMQ_EMPTY)
        return NULL;
    return py_raise(rc, rd->topic, 0, 0, 0, rd->ring);
}

/* poll(max) -> 1..max payloads (a list); or, when there is nothing, (word
 * address, value): sleep while the word holds that value, then poll again; or
 * None when an ack group's lock is held by another member (poll again soon).
 * Never waits: for an event loop's subscriptions (pymq/aio.py). */
static PyObject *reader_poll(ReaderObject *rd, PyObject *arg)
{
    unsigned long max = PyLong_AsUnsignedLong(arg);
    if (max == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (max == 0 || max > rd->b.max)
        return PyErr_Format(PyExc_ValueError, "max must be 1..%u", rd->b.max);
    int empty;
    PyObject *got = poll_once(rd, (uint32_t)max, &empty);
    if (!empty)
        return got;
    uint32_t *word, value;
    int rc = py_api->wait_word(rd->ring, PMQ_WAIT_DATA, &word, &value);
    if (rc < 0)
        return py_raise(rc, rd->topic, 0, 0, 0, rd->ring);
    got = poll_once(rd, (uint32_t)max, &empty); /* announced: one more look */
    if (!empty)
        return got;
    return Py_BuildValue("(KI)", (unsigned long long)(uintptr_t)word, (unsigned int)value);
}

/* get_batch(max, timeout) -> (data, offsets, seqs, times, slots, attempts,
 * record_size): 1..max records in one read, as bytes objects (slots and
 * attempts None for a plain group; record_size the common payload size, or
 * None); waits and raises as get(). */
static PyObject *reader_get_batch(ReaderObject *rd, PyObject *const *args, Py_ssize_t n)
{
    int64_t timeout;
    uint32_t max;
    if (args_max_timeout(rd, args, n, "get_batch(max, timeout)", &max, &timeout) < 0)
        return NULL;
    PyObject *got;
    int rc = read_rc(rd, (uint32_t)max, timeout, 1, &got);
    if (rc > 0)
        return got;
    if (rc == PY_ERR)
        return NULL;
    return py_raise(rc == PMQ_BUSY ? PMQ_EMPTY : rc, rd->topic, timeout, 0, 0, rd->ring);
}

/* last_read() -> (seqs, times): the seqs (uint64) and publish times (float64,
 * epoch seconds) of what the last read returned, in its order, as bytes: for
 * what a loop reads ahead with get or poll and hands out later (pymq/client.py:
 * a get_batch that takes it gives them). */
static PyObject *reader_last_read(ReaderObject *rd, PyObject *unused)
{
    (void)unused;
    uint32_t n = rd->b.n <= rd->b.max ? rd->b.n : 0;
    PyObject *seqs = array_bytes(rd->b.seqs, n, sizeof *rd->b.seqs);
    PyObject *times = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((size_t)n * 8));
    if (!seqs || !times) {
        Py_XDECREF(seqs);
        Py_XDECREF(times);
        return NULL;
    }
    double *t = (double *)(void *)PyBytes_AS_STRING(times);
    for (uint32_t i = 0; i < n; i++)
        t[i] = (double)rd->b.ts[i] / 1e9;
    return Py_BuildValue("(NN)", seqs, times);
}

/* settle_batch(slots, seqs, attempts or None) -> how many took effect: ack
 * (attempts None) or nack a batch's deliveries, named by its arrays (bytes of
 * uint32, uint64, uint32), in one native call. It never waits. */
static PyObject *reader_settle_batch(ReaderObject *rd, PyObject *const *args, Py_ssize_t n)
{
    if (n != 3)
        return PyErr_Format(PyExc_TypeError, "settle_batch(slots, seqs, attempts)");
    if (!py_bound())
        return NULL;
    if (!rd->ack)
        return PyErr_Format(PyExc_TypeError, "not an ack subscription");
    Py_buffer slots, seqs, attempts = {0};
    if (PyObject_GetBuffer(args[0], &slots, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &seqs, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&slots);
        return NULL;
    }
    PyObject *result = NULL;
    int nack = args[2] != Py_None;
    if (nack && PyObject_GetBuffer(args[2], &attempts, PyBUF_SIMPLE) < 0)
        goto done;
    Py_ssize_t count = slots.len / 4;
    if (slots.len % 4 || seqs.len != count * 8 || (nack && attempts.len != count * 4) ||
        (uint64_t)count > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "slots, seqs and attempts of one batch");
        goto done;
    }
    py_gil_t gil;
    pmq_hooks_t hooks = {py_block, py_unblock, &gil};
    int rc = nack ? py_api->nack(rd->ring, rd->group, rd->group_gen, slots.buf, seqs.buf,
                                 attempts.buf, (uint32_t)count, &hooks)
                  : py_api->ack(rd->ring, rd->group, rd->group_gen, slots.buf, seqs.buf,
                                (uint32_t)count, NULL);
    result = rc < 0 ? py_raise(rc, rd->topic, -1, 0, 0, rd->ring) : PyLong_FromLong(rc);
done:
    if (attempts.obj)
        PyBuffer_Release(&attempts);
    PyBuffer_Release(&seqs);
    PyBuffer_Release(&slots);
    return result;
}

/* ---- acks and nacks of many ------------------------------------------------------------ */

#define SETTLE_STACK 64

/* ack(msgs) / nack(msgs): settle this subscription's pending Messages of the
 * list in one native call; None, having done nothing, when one of them is not
 * a received Message of this subscription (the caller then groups them by
 * their own). Returns how many took effect. */
static PyObject *settle(ReaderObject *rd, PyObject *list, int nack)
{
    if (!py_bound())
        return NULL;
    if (!PyList_Check(list))
        Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(list), todo = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* a look first: nothing is changed yet */
        PyObject *o = PyList_GET_ITEM(list, i);
        if (!PyObject_TypeCheck(o, &PyMessage_Type) || ((MessageObject *)o)->reader != (PyObject *)rd)
            Py_RETURN_NONE;
        todo += !((MessageObject *)o)->settled;
    }
    if (todo == 0)
        return PyLong_FromLong(0);
    if ((uint64_t)todo > UINT32_MAX)
        return PyErr_Format(PyExc_ValueError, "too many messages at once");
    uint32_t slots_stack[SETTLE_STACK], attempts_stack[SETTLE_STACK];
    uint64_t seqs_stack[SETTLE_STACK];
    uint32_t *slots = slots_stack, *attempts = attempts_stack;
    uint64_t *seqs = seqs_stack;
    if (todo > SETTLE_STACK) {
        slots = PyMem_Malloc((size_t)todo * sizeof *slots);
        attempts = PyMem_Malloc((size_t)todo * sizeof *attempts);
        seqs = PyMem_Malloc((size_t)todo * sizeof *seqs);
        if (!slots || !attempts || !seqs) {
            PyMem_Free(slots);
            PyMem_Free(attempts);
            PyMem_Free(seqs);
            return PyErr_NoMemory();
        }
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* settled before the call: views go first */
        MessageObject *m = (MessageObject *)PyList_GET_ITEM(list, i);
        if (m->settled)
            continue;
        m->settled = 1;
        if (m->views)
            py_release_views(m);
        slots[k] = m->slot;
        seqs[k] = m->seq;
        attempts[k++] = m->attempt;
    }
    py_gil_t gil;
    pmq_hooks_t hooks = {py_block, py_unblock, &gil};
    int rc = nack ? py_api->nack(rd->ring, rd->group, rd->group_gen, slots, seqs, attempts,
                                 (uint32_t)k, &hooks)
                  : py_api->ack(rd->ring, rd->group, rd->group_gen, slots, seqs, (uint32_t)k, NULL);
    if (slots != slots_stack) {
        PyMem_Free(slots);
        PyMem_Free(attempts);
        PyMem_Free(seqs);
    }
    return rc < 0 ? py_raise(rc, rd->topic, -1, 0, 0, rd->ring) : PyLong_FromLong(rc);
}

static PyObject *reader_ack(ReaderObject *rd, PyObject *list) { return settle(rd, list, 0); }
static PyObject *reader_nack(ReaderObject *rd, PyObject *list) { return settle(rd, list, 1); }

static PyObject *reader_close(ReaderObject *rd, PyObject *unused)
{
    (void)unused;
    rd->closed = 1;
    Py_RETURN_NONE;
}

/* ---- the type --------------------------------------------------------------------------- */

/* Reader(ring, member, gen, group, group_gen, ack, max_batch, budget, owner, topic):
 * ring is the address of a pmq_ring_t that owner keeps mapped; budget is the
 * most payload bytes one read takes. */
static int reader_init(ReaderObject *rd, PyObject *args, PyObject *kw)
{
    static char *names[] = {"ring", "member", "gen", "group", "group_gen", "ack", "max_batch",
                            "budget", "owner", "topic", NULL};
    unsigned long long ring, budget, member, gen, group, group_gen, max_batch;
    int ack;
    PyObject *owner, *topic;
    if (rd->offs) {
        PyErr_SetString(PyExc_RuntimeError, "a Reader is made once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKKKKpKKOU:Reader", names, &ring, &member, &gen,
                                     &group, &group_gen, &ack, &max_batch, &budget, &owner, &topic))
        return -1;
    if (member > UINT32_MAX || gen > UINT32_MAX || group > UINT32_MAX || group_gen > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Reader: a slot or gen above 2**32 - 1");
        return -1;
    }
    if (!ring || max_batch == 0 || max_batch > (1u << 20) || budget == 0) {
        PyErr_SetString(PyExc_ValueError, "Reader: a ring, 1..2**20 records, a budget > 0");
        return -1;
    }
    size_t n = max_batch;
    rd->offs = PyMem_Calloc(n, sizeof *rd->offs);
    rd->seqs = PyMem_Calloc(n, sizeof *rd->seqs);
    rd->pos = PyMem_Calloc(n, sizeof *rd->pos);
    rd->lens = PyMem_Calloc(n, sizeof *rd->lens);
    rd->slots = PyMem_Calloc(n, sizeof *rd->slots);
    rd->attempts = PyMem_Calloc(n, sizeof *rd->attempts);
    rd->ts = PyMem_Calloc(n, sizeof *rd->ts);
    if (!rd->offs || !rd->seqs || !rd->pos || !rd->lens || !rd->slots || !rd->attempts || !rd->ts) {
        PyErr_NoMemory();
        return -1;
    }
    rd->ring = (pmq_ring_t *)(uintptr_t)ring;
    rd->member = (uint32_t)member;
    rd->gen = (uint32_t)gen;
    rd->group = (uint32_t)group;
    rd->group_gen = (uint32_t)group_gen;
    rd->ack = ack;
    rd->b = (pmq_batch_t){.buf = NULL, .buflen = budget, .max = (uint32_t)max_batch, .offs = rd->offs,
                          .seqs = rd->seqs, .pos = rd->pos, .lens = rd->lens,
                          .slots = rd->slots, .attempts = rd->attempts, .ts = rd->ts,
                          .kind = ack ? PMQ_KIND_ACK : PMQ_KIND_PLAIN};
    rd->owner = Py_NewRef(owner);
    rd->topic = Py_NewRef(topic);
    return 0;
}

static int reader_traverse(ReaderObject *rd, visitproc visit, void *arg)
{
    Py_VISIT(rd->owner);
    Py_VISIT(rd->topic);
    return 0;
}

static int reader_clear(ReaderObject *rd)
{
    Py_CLEAR(rd->owner);
    Py_CLEAR(rd->topic);
    return 0;
}

static void reader_dealloc(ReaderObject *rd)
{
    PyObject_GC_UnTrack(rd);
    reader_clear(rd);
    PyMem_Free(rd->offs);
    PyMem_Free(rd->seqs);
    PyMem_Free(rd->pos);
    PyMem_Free(rd->lens);
    PyMem_Free(rd->slots);
    PyMem_Free(rd->attempts);
    PyMem_Free(rd->ts);
    Py_TYPE(rd)->tp_free((PyObject *)rd);
}

static PyMethodDef reader_methods[] = {
    {"get1", (PyCFunction)(void (*)(void))reader_get1, METH_FASTCALL | METH_KEYWORDS,
     "get1(timeout=None) -> the next payload (a Message for an ack subscription); timeout in "
     "seconds, None: for ever"},
    {"get", (PyCFunction)(void (*)(void))reader_get, METH_FASTCALL,
     "get(max, timeout) -> 1..max payloads (Messages for an ack subscription); timeout in "
     "seconds, None: for ever"},
    {"ack", (PyCFunction)reader_ack, METH_O,
     "ack(messages) -> how many were still pending, or None if one is not this "
     "subscription's"},
    {"nack", (PyCFunction)reader_nack, METH_O,
     "nack(messages) -> how many were requeued, or None if one is not this subscription's"},
    {"get_batch", (PyCFunction)(void (*)(void))reader_get_batch, METH_FASTCALL,
     "get_batch(max, timeout) -> (data, offsets, seqs, times, slots, attempts, size); "
     "timeout in seconds, None: for ever"},
    {"settle_batch", (PyCFunction)(void (*)(void))reader_settle_batch, METH_FASTCALL,
     "settle_batch(slots, seqs, attempts or None) -> acked (or, with attempts, nacked)"},
    {"last_read", (PyCFunction)reader_last_read, METH_NOARGS,
     "last_read() -> (seqs, times): of what the last read returned (bytes of uint64, float64)"},
    {"poll", (PyCFunction)reader_poll, METH_O,
     "poll(max) -> 1..max payloads, or (word, value) to sleep on, or None (a lock is busy)"},
    {"close", (PyCFunction)reader_close, METH_NOARGS, "no more reads (the subscription left)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef reader_members[] = {
    {"owner", T_OBJECT, offsetof(ReaderObject, owner), READONLY, "what keeps the ring mapped"},
    {"topic", T_OBJECT, offsetof(ReaderObject, topic), READONLY, "the topic"},
    {"member", T_UINT, offsetof(ReaderObject, member), READONLY, "its member slot"},
    {"gen", T_UINT, offsetof(ReaderObject, gen), READONLY, "its member slot's gen"},
    {"group", T_UINT, offsetof(ReaderObject, group), READONLY, "its group's slot"},
    {"group_gen", T_UINT, offsetof(ReaderObject, group_gen), READONLY, "its group's gen"},
    {"closed", T_BOOL, offsetof(ReaderObject, closed), READONLY, "left its group"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject PyReader_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pymq._fast.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One subscription's reads, acks and nacks (native/py/reader.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_traverse = (traverseproc)reader_traverse,
    .tp_clear = (inquiry)reader_clear,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_members = reader_members,
};
