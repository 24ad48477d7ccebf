/*
 * message.c - pymq.Message (pymq._fast.Message): a message's fields,
 * read-only, its ack and nack, each one call into the ring, and its view.
 * A message received from an ack subscription names its delivery (its
 * reader, pending slot, seq, attempt); one made by the user may carry an ack
 * callable, as the seed's Message did. It is all C, with no Python subclass:
 * a heap subclass's allocation and dealloc cost 40 ns more a message.
 */
#include "pmq_py.h"

PyObject *py_message(ReaderObject *rd, uint32_t i, PyObject *p)
{
    MessageObject *m = PyObject_GC_New(MessageObject, &PyMessage_Type);
    if (!m)
        return NULL;
    m->payload = Py_NewRef(p);
    m->topic = Py_NewRef(rd->topic);
    m->reader = Py_NewRef((PyObject *)rd);
    m->seq = rd->seqs[i];
    m->pos = rd->pos[i];
    m->publish_time = (double)rd->ts[i] / 1e9;
    m->slot = rd->slots[i];
    m->attempt = rd->attempts[i];
    m->has_seq = m->has_time = 1;
    m->settled = 0;
    m->ack_fn = m->views = NULL;
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

void py_release_views(MessageObject *m)
{
    PyObject *views = m->views;
    m->views = NULL;
    if (!views)
        return;
    for (Py_ssize_t i = 0; PyList_Check(views) && i < PyList_GET_SIZE(views); i++) {
        PyObject *rc = PyObject_CallMethod(PyList_GET_ITEM(views, i), "release", NULL);
        if (!rc)
            PyErr_Clear(); /* exported (numpy, say): it stays readable, stale */
        Py_XDECREF(rc);
    }
    Py_DECREF(views);
}

/* Message(payload, ack=None, *, topic=None, seq=None, delivery_attempt=1,
 * publish_time=None): a user's message. */
static int message_init(MessageObject *m, PyObject *args, PyObject *kw)
{
    static char *names[] = {"payload", "ack", "topic", "seq", "delivery_attempt", "publish_time",
                            NULL};
    PyObject *payload, *ack = Py_None, *topic = Py_None, *seq = Py_None, *time = Py_None;
    unsigned int attempt = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$OOIO:Message", names, &payload, &ack, &topic,
                                     &seq, &attempt, &time))
        return -1;
    if (ack != Py_None && !PyCallable_Check(ack)) {
        PyErr_SetString(PyExc_TypeError, "ack must be callable or None");
        return -1;
    }
    uint64_t seq_v = 0;
    double time_v = 0;
    if (seq != Py_None && (seq_v = PyLong_AsUnsignedLongLong(seq), PyErr_Occurred()))
        return -1;
    if (time != Py_None && (time_v = PyFloat_AsDouble(time), PyErr_Occurred()))
        return -1;
    Py_XSETREF(m->payload, Py_NewRef(payload));
    Py_XSETREF(m->topic, Py_NewRef(topic));
    Py_XSETREF(m->ack_fn, ack == Py_None ? NULL : Py_NewRef(ack));
    Py_CLEAR(m->reader);
    m->seq = seq_v;
    m->has_seq = seq != Py_None;
    m->publish_time = time_v;
    m->has_time = time != Py_None;
    m->attempt = attempt;
    m->settled = 0;
    return 0;
}

/* A static type: a Python subclass's own traverse and dealloc see to its
 * (heap) type, should a user make one, so these do not. */
static int message_traverse(MessageObject *m, visitproc visit, void *arg)
{
    Py_VISIT(m->payload);
    Py_VISIT(m->topic);
    Py_VISIT(m->reader);
    Py_VISIT(m->ack_fn);
    Py_VISIT(m->views);
    return 0;
}

static int message_clear(MessageObject *m)
{
    Py_CLEAR(m->payload);
    Py_CLEAR(m->topic);
    Py_CLEAR(m->reader);
    Py_CLEAR(m->ack_fn);
    Py_CLEAR(m->views);
    return 0;
}

static void message_dealloc(MessageObject *m)
{
    PyObject_GC_UnTrack(m);
    message_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* Acknowledge: the message will not be delivered to this group again.
 * Idempotent; a no-op on a message that needs no ack; it never waits. */
static PyObject *message_ack(MessageObject *m, PyObject *unused)
{
    (void)unused;
    if (!m->reader) {
        if (m->ack_fn && !m->settled) {
            PyObject *rc = PyObject_CallNoArgs(m->ack_fn);
            if (!rc)
                return NULL;
            Py_DECREF(rc);
        }
        Py_RETURN_NONE;
    }
    if (m->settled)
        Py_RETURN_NONE;
    m->settled = 1;
    if (m->views)
        py_release_views(m);
    ReaderObject *rd = (ReaderObject *)m->reader;
    int rc = py_api->ack(rd->ring, rd->group, rd->group_gen, &m->slot, &m->seq, 1, NULL);
    if (rc < 0)
        return py_raise(rc, rd->topic, -1, 0, 0, rd->ring);
    Py_RETURN_NONE;
}

/* Ask for redelivery now (to any live member of the group) instead of after
 * the ack timeout; dead-lettered when out of retries. */
static PyObject *message_nack(MessageObject *m, PyObject *unused)
{
    (void)unused;
    if (!m->reader || m->settled)
        Py_RETURN_NONE;
    m->settled = 1;
    if (m->views)
        py_release_views(m);
    ReaderObject *rd = (ReaderObject *)m->reader;
    py_gil_t gil;
    pmq_hooks_t hooks = {py_block, py_unblock, &gil};
    int rc = py_api->nack(rd->ring, rd->group, rd->group_gen, &m->slot, &m->seq, &m->attempt, 1,
                          &hooks);
    if (rc < 0)
        return py_raise(rc, rd->topic, -1, 0, 0, rd->ring);
    Py_RETURN_NONE;
}

/* A read-only memoryview of the payload: of the ring itself for a received
 * ack delivery (valid while it is pending), else of the payload. */
static PyObject *message_view(MessageObject *m, PyObject *unused)
{
    (void)unused;
    if (!m->reader) {
        PyObject *mv = PyMemoryView_FromObject(m->payload);
        if (!mv)
            return NULL;
        PyObject *ro = PyObject_CallMethod(mv, "toreadonly", NULL);
        Py_DECREF(mv);
        return ro;
    }
    if (m->settled)
        return PyErr_Format(PyExc_ValueError, "the message was acked: its view is no longer valid");
    ReaderObject *rd = (ReaderObject *)m->reader;
    if (rd->closed)
        return PyErr_Format(PyExc_ValueError,
                            "the subscription is closed: the message may be redelivered elsewhere");
    Py_ssize_t len = PyBytes_Check(m->payload) ? PyBytes_GET_SIZE(m->payload) : 0;
    PyObject *mv = PyObject_CallMethod(rd->owner, "view", "Kn", (unsigned long long)m->pos, len);
    if (!mv)
        return NULL;
    if (!m->views && !(m->views = PyList_New(0))) {
        Py_DECREF(mv);
        return NULL;
    }
    if (PyList_Append(m->views, mv) < 0) {
        Py_DECREF(mv);
        return NULL;
    }
    return mv;
}

static PyObject *message_repr(MessageObject *m)
{
    PyObject *seq = m->has_seq ? PyLong_FromUnsignedLongLong(m->seq) : Py_NewRef(Py_None);
    Py_ssize_t len = PyObject_Length(m->payload);
    PyObject *head = len < 0 ? NULL : PySequence_GetSlice(m->payload, 0, 32);
    PyObject *s = NULL;
    if (seq && head)
        s = PyUnicode_FromFormat("Message(topic=%R, seq=%R, delivery_attempt=%u, payload=%R%s)",
                                 m->topic ? m->topic : Py_None, seq, m->attempt, head,
                                 len > 32 ? "..." : "");
    Py_XDECREF(seq);
    Py_XDECREF(head);
    return s;
}

static PyObject *get_seq(MessageObject *m, void *unused)
{
    (void)unused;
    return m->has_seq ? PyLong_FromUnsignedLongLong(m->seq) : Py_NewRef(Py_None);
}

static PyObject *get_time(MessageObject *m, void *unused)
{
    (void)unused;
    return m->has_time ? PyFloat_FromDouble(m->publish_time) : Py_NewRef(Py_None);
}

static PyObject *get_views(MessageObject *m, void *unused)
{
    (void)unused;
    return Py_NewRef(m->views ? m->views : Py_None);
}

static PyMethodDef message_methods[] = {
    {"ack", (PyCFunction)message_ack, METH_NOARGS,
     "Acknowledge: the message will not be delivered to this group again. Idempotent; a no-op "
     "on a message that needs no ack; it never waits. Raises SegmentMismatch for a corrupt "
     "segment."},
    {"view", (PyCFunction)message_view, METH_NOARGS,
     "view() -> a read-only memoryview of the payload in shared memory (zero-copy). It is "
     "valid while this delivery is pending: until it is acked or nacked (then the view is "
     "released), and not after its ack timeout passed and another member got and acked it, "
     "nor after the subscription closed. Raises ValueError once it was acked or the "
     "subscription closed."},
    {"nack", (PyCFunction)message_nack, METH_NOARGS,
     "Ask for redelivery now (to any live member of the group) instead of after the ack "
     "timeout; dead-lettered when out of retries. Raises SegmentMismatch for a corrupt segment."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef message_members[] = {
    {"payload", T_OBJECT, offsetof(MessageObject, payload), READONLY, "the payload (bytes)"},
    {"topic", T_OBJECT, offsetof(MessageObject, topic), READONLY, "the topic, or None"},
    {"delivery_attempt", T_UINT, offsetof(MessageObject, attempt), READONLY,
     "1 on the first delivery, + 1 on each redelivery"},
    {"_reader", T_OBJECT, offsetof(MessageObject, reader), READONLY,
     "the pymq._fast.Reader of its subscription, or None"},
    {"_pos", T_ULONGLONG, offsetof(MessageObject, pos), READONLY, "its record's position"},
    {"_slot", T_UINT, offsetof(MessageObject, slot), READONLY, "its pending slot"},
    {"_settled", T_BOOL, offsetof(MessageObject, settled), READONLY, "acked or nacked"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef message_getset[] = {
    {"seq", (getter)get_seq, NULL, "the topic's sequence number, or None", NULL},
    {"publish_time", (getter)get_time, NULL, "when it was published (epoch seconds), or None",
     NULL},
    {"_views", (getter)get_views, NULL, "views given out (Message.view)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PyMessage_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pymq.Message",
    .tp_basicsize = sizeof(MessageObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc =
        "A message: payload plus, when received, where it came from.\n\n"
        "Message(payload, ack=None, *, topic=None, seq=None, delivery_attempt=1, "
        "publish_time=None) mirrors the seed's Message{Payload, Ack}. Its fields (payload, "
        "topic, seq, delivery_attempt, publish_time) are read-only. ack() and nack() are one "
        "call into the ring each; ack() is a no-op on a message that needs no "
        "acknowledgement, calls the ack it was given, if any, and never waits. A message "
        "received from subscribe_with_ack() is acked, nacked and viewed through its "
        "subscription's segment, without a word to the supervisor.",
    .tp_repr = (reprfunc)message_repr,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)message_init,
    .tp_traverse = (traverseproc)message_traverse,
    .tp_clear = (inquiry)message_clear,
    .tp_dealloc = (destructor)message_dealloc,
    .tp_methods = message_methods,
    .tp_members = message_members,
    .tp_getset = message_getset,
};
