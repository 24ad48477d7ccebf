/* pymq._fast: the client's hot calls as a CPython extension.
 *
 * pymq._native (cffi) is the binding of the ring; a cffi call costs about
 * 130 ns with publish1's four arguments, more than the ring's own work, and the
 * received payload was copied twice (ring -> read buffer -> bytes slice made in
 * Python). These few calls take their Python arguments directly
 * (METH_FASTCALL), build the received bytes (and lists of them) in C, straight
 * from the ring for a plain group (peek, copy, claim: see read_common), and
 * call the very functions of pymq._native through pointers that pymq/_core.py
 * hands over once (bind), so the ring's code exists once. Only _core uses it.
 *
 * Every call releases the GIL around the native call that may wait (the
 * claim, a CAS, keeps it). Errors of the ring come back as its negative codes,
 * for _core.check to raise; an argument of the wrong type is a TypeError. The
 * native calls read shared memory, bounds-checked, and fill the caller's
 * pmq_batch_t; the only shared memory read here is a payload copied from the
 * offset and length a read returned, checked again against the data area.
 *
 * An ack subscription's reads build pymq.Message objects here: bind_message()
 * finds, once, where each of Message's __slots__ lives in the object (its
 * member descriptor's offset, checked to be a plain object slot of exactly
 * that class), so a message is one allocation and eleven stores, as in C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#include "pmq_ring.h"

typedef int64_t (*publish1_fn)(pmq_ring_t *, const char *, uint32_t, int64_t);
typedef int64_t (*publish_fn)(pmq_ring_t *, const char *const *, const uint32_t *, uint32_t, int64_t);
typedef int (*read_fn)(pmq_ring_t *, uint32_t, uint32_t, pmq_batch_t *, uint32_t, int64_t);
typedef int (*ack_fn)(pmq_ring_t *, uint32_t, uint32_t, const uint32_t *, const uint64_t *,
                      uint32_t);
typedef int (*ack1_fn)(pmq_ring_t *, uint32_t, uint32_t, uint32_t, uint64_t);
typedef int (*claim_fn)(pmq_ring_t *, uint32_t, uint32_t, const pmq_batch_t *);

static publish1_fn f_publish1;
static publish_fn f_publish;
static read_fn f_read;
static ack_fn f_ack;
static ack1_fn f_ack1;
static claim_fn f_claim;

/* pymq.Message's slots, in this order (bind_message checks every name). */
enum { M_PAYLOAD, M_ACK, M_TOPIC, M_SEQ, M_ATTEMPT, M_TIME, M_SUB, M_SLOT, M_POS, M_VIEWS,
       M_SETTLED, M_COUNT };
static const char *const msg_names[M_COUNT] = {
    "payload", "_ack", "topic", "seq", "delivery_attempt", "publish_time",
    "_sub", "_slot", "_pos", "_views", "_settled"};
static PyTypeObject *msg_type;
static Py_ssize_t msg_off[M_COUNT];
static PyObject *msg_ack_general; /* the class's own ack (Python): every case but the common one */
static PyObject *msg_check;       /* _core.check(rc, what): raises for a negative code */
static PyObject *msg_ack_descr;   /* the ack that bind_message returns */
static PyObject *str_ack1;        /* "_ack1": a subscription's bound ack1 */

#define SLOT(obj, k) (*(PyObject **)((char *)(obj) + msg_off[k]))

static int as_ptr(PyObject *o, void **out)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "NULL handle");
        return -1;
    }
    *out = p;
    return 0;
}

static int as_u32(PyObject *o, uint32_t *out)
{
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value above 2**32 - 1");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int as_i64(PyObject *o, int64_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int nargs_ok(Py_ssize_t n, Py_ssize_t want, const char *name)
{
    if (n == want)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, n);
    return 0;
}

static int bound(void)
{
    if (f_publish1 && f_publish && f_read && f_ack && f_ack1 && f_claim)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "pymq._fast is not bound to pymq._native");
    return 0;
}

/* bind(publish1, publish, read, group_ack, group_ack1, claim): the addresses
 * of pymq._native's functions. */
static PyObject *fast_bind(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    void *p[6];
    if (!nargs_ok(n, 6, "bind"))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (as_ptr(args[i], &p[i]))
            return NULL;
    f_publish1 = (publish1_fn)p[0];
    f_publish = (publish_fn)p[1];
    f_read = (read_fn)p[2];
    f_ack = (ack_fn)p[3];
    f_ack1 = (ack1_fn)p[4];
    f_claim = (claim_fn)p[5];
    Py_RETURN_NONE;
}

static PyObject *message_ack(PyObject *m, PyObject *unused);

static PyMethodDef message_ack_def = {
    "ack", message_ack, METH_NOARGS,
    "Acknowledge: the message will not be delivered to this group again.\n"
    "Idempotent; a no-op on a message that needs no ack."};

/* bind_message(Message, check): where each slot of the class lives; returns
 * the method to install as Message.ack (the class's own ack stays its general
 * path; check(rc, what) raises for a failed ack's code). */
static PyObject *fast_bind_message(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    if (!nargs_ok(n, 2, "bind_message"))
        return NULL;
    if (!PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "bind_message() takes a class");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    if (msg_type == type)
        return Py_NewRef(msg_ack_descr);
    if (msg_type) { /* one class for the process: a Message being built must keep its offsets */
        PyErr_Format(PyExc_TypeError, "pymq._fast is bound to %s already", msg_type->tp_name);
        return NULL;
    }
    Py_ssize_t off[M_COUNT];
    for (int k = 0; k < M_COUNT; k++) {
        PyObject *d = PyObject_GetAttrString(args[0], msg_names[k]);
        if (!d)
            PyErr_Clear();
        int ok = d && Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_common.d_type == type &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
                 !(((PyMemberDescrObject *)d)->d_member->flags & READONLY) &&
                 ((PyMemberDescrObject *)d)->d_member->offset >= (Py_ssize_t)sizeof(PyObject) &&
                 ((PyMemberDescrObject *)d)->d_member->offset + (Py_ssize_t)sizeof(PyObject *) <=
                     type->tp_basicsize;
        if (ok)
            off[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_XDECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a plain __slots__ member",
                         type->tp_name, msg_names[k]);
            return NULL;
        }
    }
    PyObject *general = PyObject_GetAttrString(args[0], "ack");
    if (!general)
        return NULL;
    if (!PyFunction_Check(general)) {
        Py_DECREF(general);
        PyErr_Format(PyExc_TypeError, "%s.ack is not a Python function", type->tp_name);
        return NULL;
    }
    PyObject *descr = PyDescr_NewMethod(type, &message_ack_def);
    str_ack1 = str_ack1 ? str_ack1 : PyUnicode_InternFromString("_ack1");
    if (!descr || !str_ack1) {
        Py_XDECREF(descr);
        Py_DECREF(general);
        return NULL;
    }
    memcpy(msg_off, off, sizeof off);
    msg_ack_general = general;
    msg_check = Py_NewRef(args[1]);
    msg_ack_descr = descr;
    msg_type = (PyTypeObject *)Py_NewRef(type);
    return Py_NewRef(descr);
}

/* Message.ack: a pending delivery of an ack subscription, not viewed, is
 * acked here, through its subscription's bound ack1 (one call, no Python
 * frame); everything else (a message made by the user, settled, viewed) goes
 * to the class's own ack. As that one: settled first, then acked; a negative
 * code raises through check. */
static PyObject *message_ack(PyObject *m, PyObject *unused)
{
    (void)unused;
    PyObject *sub = SLOT(m, M_SUB), *slot = SLOT(m, M_SLOT), *seq = SLOT(m, M_SEQ);
    if (!sub || sub == Py_None || SLOT(m, M_SETTLED) != Py_False || SLOT(m, M_VIEWS) != Py_None ||
        !slot || !seq)
        return PyObject_CallOneArg(msg_ack_general, m);
    /* held: the attribute look-up may run code that rebinds the message's slots */
    PyObject *argv[2] = {Py_NewRef(slot), Py_NewRef(seq)};
    Py_INCREF(sub);
    PyObject *ack1 = PyObject_GetAttr(sub, str_ack1);
    Py_DECREF(sub);
    PyObject *rc = NULL;
    if (ack1) {
        Py_SETREF(SLOT(m, M_SETTLED), Py_NewRef(Py_True));
        rc = PyObject_Vectorcall(ack1, argv, 2, NULL);
        Py_DECREF(ack1);
    }
    Py_DECREF(argv[0]);
    Py_DECREF(argv[1]);
    if (!rc)
        return NULL;
    long v = PyLong_Check(rc) ? PyLong_AsLong(rc) : 0;
    if (v >= 0 || PyErr_Occurred()) {
        Py_DECREF(rc);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *topic = Py_NewRef(SLOT(m, M_TOPIC) ? SLOT(m, M_TOPIC) : Py_None);
    PyObject *what = PyUnicode_FromFormat("topic %R", topic);
    Py_DECREF(topic);
    PyObject *out = what ? PyObject_CallFunctionObjArgs(msg_check, rc, what, NULL) : NULL;
    Py_XDECREF(what);
    Py_DECREF(rc);
    if (!out)
        return NULL;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* publish1(ring, payload: bytes, timeout_ns) -> seq or a negative code */
static PyObject *fast_publish1(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    void *ring;
    int64_t timeout;
    if (!nargs_ok(n, 3, "publish1") || !bound() || as_ptr(args[0], &ring) ||
        as_i64(args[2], &timeout))
        return NULL;
    PyObject *payload = args[1];
    if (!PyBytes_Check(payload)) {
        PyErr_Format(PyExc_TypeError, "payload must be bytes, not %.100s", Py_TYPE(payload)->tp_name);
        return NULL;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(payload);
    if ((uint64_t)len > UINT32_MAX)
        return PyLong_FromLong(PMQ_ETOOBIG);
    const char *data = PyBytes_AS_STRING(payload);
    int64_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = f_publish1((pmq_ring_t *)ring, data, (uint32_t)len, timeout);
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(rc);
}

/* publish(ring, payloads: list or tuple of bytes, timeout_ns) -> seq of the
 * last or a negative code; None if an item is not bytes (the caller then
 * converts them). One native call, all or none. The payloads are not copied
 * here: the ring copies each from its bytes object, which cannot change, and
 * a tuple of them (the list itself may change in another thread while the
 * GIL is released) keeps them alive until it returns. */
#define PUBLISH_STACK 64 /* parts and lengths of a batch this size live on the stack */
static PyObject *fast_publish(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    void *ring;
    int64_t timeout;
    if (!nargs_ok(n, 3, "publish") || !bound() || as_ptr(args[0], &ring) ||
        as_i64(args[2], &timeout))
        return NULL;
    if (!PyList_Check(args[1]) && !PyTuple_Check(args[1]))
        Py_RETURN_NONE;
    PyObject *held = PySequence_Tuple(args[1]); /* a tuple: the same one, referenced */
    if (!held)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(held);
    PyObject *result = NULL;
    const char *parts_stack[PUBLISH_STACK], **parts = parts_stack;
    uint32_t lens_stack[PUBLISH_STACK], *lens = lens_stack;
    int too_big = (uint64_t)count > UINT32_MAX;
    for (Py_ssize_t i = 0; i < count; i++) { /* every type first, then sizes */
        PyObject *item = PyTuple_GET_ITEM(held, i);
        if (!PyBytes_Check(item)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        too_big |= (uint64_t)PyBytes_GET_SIZE(item) > UINT32_MAX;
    }
    if (count == 0 || too_big) {
        result = PyLong_FromLong(count == 0 ? PMQ_EINVAL : PMQ_ETOOBIG);
        goto done;
    }
    if (count > PUBLISH_STACK) {
        parts = PyMem_RawMalloc((size_t)count * sizeof *parts);
        lens = PyMem_RawMalloc((size_t)count * sizeof *lens);
        if (!parts || !lens) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(held, i);
        parts[i] = PyBytes_AS_STRING(item);
        lens[i] = (uint32_t)PyBytes_GET_SIZE(item);
    }
    int64_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = f_publish((pmq_ring_t *)ring, parts, lens, (uint32_t)count, timeout);
    Py_END_ALLOW_THREADS
    result = PyLong_FromLongLong(rc > 0 ? rc + (int64_t)count - 1 : rc); /* the last seq */
done:
    if (parts != parts_stack)
        PyMem_RawFree((void *)parts);
    if (lens != lens_stack)
        PyMem_RawFree(lens);
    Py_DECREF(held);
    return result;
}

/* Where a filled batch's offsets point: its buffer, or (zero-copy) the ring's data area. */
typedef struct {
    const char *base;
    uint64_t len;
} source_t;

/* Payload i of a filled batch as bytes (offset and length checked against the source). */
static PyObject *payload(source_t src, const pmq_batch_t *b, uint32_t i)
{
    if (b->offs[i] > src.len || b->lens[i] > src.len - b->offs[i]) {
        PyErr_SetString(PyExc_ValueError, "a record lies outside the read buffer");
        return NULL;
    }
    return PyBytes_FromStringAndSize(src.base + b->offs[i], (Py_ssize_t)b->lens[i]);
}

/* Record i of an ack group's read as a pymq.Message of subscription sub. */
static PyObject *message(source_t src, const pmq_batch_t *b, uint32_t i, PyObject *sub,
                         PyObject *topic)
{
    PyObject *p = payload(src, b, i);
    if (!p)
        return NULL;
    PyObject *m = msg_type->tp_alloc(msg_type, 0); /* bind_message is one-shot: msg_off fits it */
    if (!m) {
        Py_DECREF(p);
        return NULL;
    }
    PyObject *v[M_COUNT];
    v[M_PAYLOAD] = p;
    v[M_ACK] = Py_NewRef(Py_None);
    v[M_TOPIC] = Py_NewRef(topic);
    v[M_SEQ] = PyLong_FromUnsignedLongLong(b->seqs[i]);
    v[M_ATTEMPT] = PyLong_FromUnsignedLong(b->attempts ? b->attempts[i] : 1);
    v[M_TIME] = PyFloat_FromDouble((double)b->ts[i] / 1e9); /* as Python's ts / 1e9 */
    v[M_SUB] = Py_NewRef(sub);
    v[M_SLOT] = PyLong_FromUnsignedLong(b->slots ? b->slots[i] : 0);
    v[M_POS] = PyLong_FromUnsignedLongLong(b->pos ? b->pos[i] : 0);
    v[M_VIEWS] = Py_NewRef(Py_None);
    v[M_SETTLED] = Py_NewRef(Py_False);
    int failed = 0;
    for (int k = 0; k < M_COUNT; k++) {
        failed |= v[k] == NULL;
        SLOT(m, k) = v[k]; /* the new object's slots are NULL: nothing to release */
    }
    if (failed) {
        Py_DECREF(m); /* frees what was made; a NULL slot is fine */
        return NULL;
    }
    return m;
}

/* read(ring, member, gen, batch, max, timeout_ns) -> [payload bytes, ...] or a
 * negative code. read1(...) with max 1 -> the payload bytes or a code.
 * read_messages(ring, member, gen, batch, max, timeout_ns, sub, topic) ->
 * [Message, ...]; read1_message(...) -> a Message.
 *
 * With a zero-copy batch (buf NULL) a plain group's read is a peek: the
 * payloads are copied once, from the ring straight into their bytes objects,
 * and then claimed (pmq_ring_claim, with the GIL held: a CAS). A lost claim
 * means another member took them and the copies may be torn: they are
 * dropped and the read starts again, within what is left of the timeout (the
 * deadline the read took if it waited, else one taken now). */
static PyObject *read_common(PyObject *const *args, Py_ssize_t n, const char *name, int one,
                             int messages)
{
    PyObject *sub = NULL, *topic = NULL;
    if (messages) { /* two more arguments */
        if (n != 8) {
            PyErr_Format(PyExc_TypeError, "%s() takes 8 arguments (%zd given)", name, n);
            return NULL;
        }
        if (!msg_type) {
            PyErr_SetString(PyExc_RuntimeError, "pymq._fast: bind_message() first");
            return NULL;
        }
        sub = args[6];
        topic = args[7];
        n = 6;
    }
    void *ring, *batch;
    uint32_t member, gen, max;
    int64_t timeout, deadline = -1;
    if (!nargs_ok(n, 6, name) || !bound() || as_ptr(args[0], &ring) || as_u32(args[1], &member) ||
        as_u32(args[2], &gen) || as_ptr(args[3], &batch) || as_u32(args[4], &max) ||
        as_i64(args[5], &timeout))
        return NULL;
    pmq_ring_t *r = ring;
    pmq_batch_t *b = batch;
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = f_read(r, member, gen, b, max, timeout);
        Py_END_ALLOW_THREADS
        if (rc <= 0)
            return PyLong_FromLong(rc);
        if ((uint32_t)rc > b->n) { /* another thread read into the same batch */
            PyErr_SetString(PyExc_RuntimeError,
                            "the batch was read concurrently: a subscription is not for several threads");
            return NULL;
        }
        int peek = b->claim_to != 0;
        if (!b->buf && !peek) {
            PyErr_SetString(PyExc_ValueError, "a zero-copy read of an ack group has no payloads to return");
            return NULL;
        }
        source_t src = b->buf ? (source_t){b->buf, b->buflen}
                              : (source_t){(const char *)r->data, r->capacity};
        PyObject *out = one ? NULL : PyList_New(rc);
        if (!one && !out)
            return NULL;
        for (int i = 0; i < (one ? 1 : rc); i++) {
            PyObject *item = messages ? message(src, b, (uint32_t)i, sub, topic)
                                      : payload(src, b, (uint32_t)i);
            if (!item) {
                Py_XDECREF(out);
                return NULL;
            }
            if (one)
                out = item;
            else
                PyList_SET_ITEM(out, i, item);
        }
        if (!peek)
            return out;
        int taken = f_claim(r, member, gen, b);
        if (taken > 0)
            return out;
        Py_DECREF(out);
        if (taken < 0)
            return PyLong_FromLong(taken);
        if (timeout > 0) { /* lost to another member: read again, within the time left */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
            if (b->deadline >= 0)
                deadline = b->deadline; /* this read waited: its deadline stands */
            else if (deadline < 0)
                deadline = timeout > INT64_MAX - now ? INT64_MAX : now + timeout;
            timeout = deadline > now ? deadline - now : 0;
        }
    }
}

/* The four reads' entry points: which result, one record or a list. */
#define READ_ENTRY(fn, name, one, messages)                                   \
    static PyObject *fn(PyObject *self, PyObject *const *args, Py_ssize_t n) \
    {                                                                         \
        (void)self;                                                           \
        return read_common(args, n, name, one, messages);                     \
    }
READ_ENTRY(fast_read, "read", 0, 0)
READ_ENTRY(fast_read1, "read1", 1, 0)
READ_ENTRY(fast_read_messages, "read_messages", 0, 1)
READ_ENTRY(fast_read1_message, "read1_message", 1, 1)

/* ack1(ring, group, gen, slot, seq) -> 1 (acked), 0 (no longer pending) or a code */
static PyObject *fast_ack1(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    void *ring;
    uint32_t group, gen, slot;
    unsigned long long seq;
    if (!nargs_ok(n, 5, "ack1") || !bound() || as_ptr(args[0], &ring) || as_u32(args[1], &group) ||
        as_u32(args[2], &gen) || as_u32(args[3], &slot))
        return NULL;
    seq = PyLong_AsUnsignedLongLong(args[4]);
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = f_ack1((pmq_ring_t *)ring, group, gen, slot, seq);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(rc);
}

/* ack_messages(ring, group, gen, sub, msgs: list) -> how many the native ack
 * took, a negative code, or None when a message is not this subscription's
 * plain pending Message (settled ones are skipped): then nothing was done, and
 * the caller takes the general path. Marks each acked message settled. */
static PyObject *fast_ack_messages(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    void *ring;
    uint32_t group, gen;
    if (!nargs_ok(n, 5, "ack_messages") || !bound() || as_ptr(args[0], &ring) ||
        as_u32(args[1], &group) || as_u32(args[2], &gen))
        return NULL;
    PyObject *sub = args[3], *list = args[4];
    if (!msg_type || !PyList_Check(list))
        Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(list), todo = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* first look, change nothing */
        PyObject *m = PyList_GET_ITEM(list, i);
        if (!Py_IS_TYPE(m, msg_type) || SLOT(m, M_SUB) != sub || !SLOT(m, M_SETTLED) ||
            SLOT(m, M_VIEWS) != Py_None || !SLOT(m, M_SLOT) || !SLOT(m, M_SEQ))
            Py_RETURN_NONE;
        todo += SLOT(m, M_SETTLED) == Py_False;
    }
    if (todo == 0)
        return PyLong_FromLong(0);
    if ((uint64_t)todo > UINT32_MAX)
        Py_RETURN_NONE;
    uint32_t *slots = PyMem_RawMalloc((size_t)todo * sizeof *slots);
    uint64_t *seqs = PyMem_RawMalloc((size_t)todo * sizeof *seqs);
    if (!slots || !seqs) {
        PyMem_RawFree(slots);
        PyMem_RawFree(seqs);
        return PyErr_NoMemory();
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < count && k < todo; i++) {
        PyObject *m = PyList_GET_ITEM(list, i);
        if (SLOT(m, M_SETTLED) != Py_False)
            continue;
        unsigned long slot = PyLong_AsUnsignedLong(SLOT(m, M_SLOT));
        unsigned long long seq = PyErr_Occurred() ? 0 : PyLong_AsUnsignedLongLong(SLOT(m, M_SEQ));
        if (PyErr_Occurred() || slot > UINT32_MAX) { /* not ours: leave all to Python */
            PyErr_Clear();
            PyMem_RawFree(slots);
            PyMem_RawFree(seqs);
            Py_RETURN_NONE;
        }
        slots[k] = (uint32_t)slot;
        seqs[k++] = seq;
    }
    for (Py_ssize_t i = 0; i < count; i++) { /* settled before the call, as Python does */
        PyObject *m = PyList_GET_ITEM(list, i);
        if (SLOT(m, M_SETTLED) == Py_False)
            Py_SETREF(SLOT(m, M_SETTLED), Py_NewRef(Py_True));
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = f_ack((pmq_ring_t *)ring, group, gen, slots, seqs, (uint32_t)k);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(slots);
    PyMem_RawFree(seqs);
    return PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))fast_bind, METH_FASTCALL,
     "bind(publish1, publish, read, group_ack, group_ack1, claim): the addresses of "
     "pymq._native's functions"},
    {"bind_message", (PyCFunction)(void (*)(void))fast_bind_message, METH_FASTCALL,
     "bind_message(Message, check): the class whose objects read_messages makes; returns the "
     "method to install as its ack"},
    {"read_messages", (PyCFunction)(void (*)(void))fast_read_messages, METH_FASTCALL,
     "read_messages(ring, member, gen, batch, max, timeout_ns, sub, topic) -> [Message] or a "
     "negative code"},
    {"read1_message", (PyCFunction)(void (*)(void))fast_read1_message, METH_FASTCALL,
     "read1_message(ring, member, gen, batch, 1, timeout_ns, sub, topic) -> Message or a "
     "negative code"},
    {"ack1", (PyCFunction)(void (*)(void))fast_ack1, METH_FASTCALL,
     "ack1(ring, group, gen, slot, seq) -> 1, 0 or a negative code"},
    {"ack_messages", (PyCFunction)(void (*)(void))fast_ack_messages, METH_FASTCALL,
     "ack_messages(ring, group, gen, sub, msgs) -> count, a negative code, or None (general "
     "path)"},
    {"publish1", (PyCFunction)(void (*)(void))fast_publish1, METH_FASTCALL,
     "publish1(ring, payload, timeout_ns) -> seq or a negative code"},
    {"publish", (PyCFunction)(void (*)(void))fast_publish, METH_FASTCALL,
     "publish(ring, list of bytes, timeout_ns) -> last seq, a negative code, or None "
     "if an item is not bytes"},
    {"read", (PyCFunction)(void (*)(void))fast_read, METH_FASTCALL,
     "read(ring, member, gen, batch, max, timeout_ns) -> [bytes, ...] or a negative code"},
    {"read1", (PyCFunction)(void (*)(void))fast_read1, METH_FASTCALL,
     "read1(ring, member, gen, batch, 1, timeout_ns) -> bytes or a negative code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pymq._fast",
    "The client's hot calls (publish, read) as a CPython extension; see fastpath/pmq_fast.c.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    return PyModule_Create(&module);
}
