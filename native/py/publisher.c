/*
 * publisher.c - pymq._fast.Publisher: Client.publish's usual case with no
 * Python frame.
 *
 * Client.publish is one (pymq/client.py): a method descriptor around the
 * Python function, which it binds as a function would (client.publish holds
 * the client). Called as publish(topic, payload) or publish(topic, payload,
 * None), with a str topic the client has mapped and a bytes payload, it
 * publishes there itself, with the client's default timeout (its
 * _publish_state: the topics dict and the timeout in ns); any other call,
 * and a topic deleted under it, goes to the Python function, which does
 * everything (conversions, mapping a topic, every error). So the C path is a
 * shortcut of that function, never a second implementation of its rules.
 */
#include "pmq_py.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *slow;    /* the Python function: slow(client, ...) for every other case */
} PublisherObject;

static PyObject *str_addr;  /* "addr": a Ring's pmq_ring_t *, as an int */
static PyObject *str_state; /* "_publish_state": a client's (topics, timeout_ns) */

/* The ring mapped for topic, or NULL (none: no error set). The caller holds
 * *owner, which keeps the mapping, until it is done with the ring. */
static pmq_ring_t *ring_of(PyObject *topics, PyObject *topic, PyObject **owner)
{
    *owner = PyDict_GetItemWithError(topics, topic);
    if (!*owner)
        return NULL;
    Py_INCREF(*owner);
    PyObject *addr = PyObject_GetAttr(*owner, str_addr);
    pmq_ring_t *r = addr ? PyLong_AsVoidPtr(addr) : NULL;
    Py_XDECREF(addr);
    if (!r)
        Py_CLEAR(*owner);
    return r;
}

/* publish(client, topic, payload[, None]) in C, or NULL with *done 0 (no
 * error set: the slow path's case) or 1 (an error set). */
static PyObject *fast_path(PyObject *const *args, Py_ssize_t n, int *done)
{
    *done = 0;
    if (!(n == 3 || (n == 4 && args[3] == Py_None)) || !py_api ||
        !PyUnicode_CheckExact(args[1]) || !PyBytes_CheckExact(args[2]) ||
        (uint64_t)PyBytes_GET_SIZE(args[2]) > UINT32_MAX)
        return NULL;
    PyObject *state = PyObject_GetAttr(args[0], str_state);
    if (!state || !PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != 2 ||
        !PyDict_CheckExact(PyTuple_GET_ITEM(state, 0))) {
        Py_XDECREF(state);
        PyErr_Clear(); /* not a client's: the method says what is wrong */
        return NULL;
    }
    int64_t timeout = PyLong_AsLongLong(PyTuple_GET_ITEM(state, 1));
    PyObject *owner = NULL, *got = NULL;
    pmq_ring_t *r = timeout == -1 && PyErr_Occurred()
                        ? NULL
                        : ring_of(PyTuple_GET_ITEM(state, 0), args[1], &owner);
    if (r) {
        const char *data = PyBytes_AS_STRING(args[2]);
        uint32_t len = (uint32_t)PyBytes_GET_SIZE(args[2]);
        int64_t rc = py_publish(r, &data, &len, 1, timeout);
        if (rc != PMQ_DELETED) { /* deleted: the method publishes to it anew */
            got = py_published(rc, r, args[1], &len, 1, timeout);
            *done = 1;
        }
        Py_DECREF(owner);
    } else {
        *done = PyErr_Occurred() != NULL;
    }
    Py_DECREF(state);
    return got;
}

static PyObject *publisher_call(PyObject *self, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    int done = 0;
    PyObject *got = kwnames ? NULL : fast_path(args, n, &done);
    if (got || done)
        return got;
    return PyObject_Vectorcall(((PublisherObject *)self)->slow, args, nargsf, kwnames);
}

/* A method: client.publish binds the client, as a function would. */
static PyObject *publisher_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    (void)type;
    if (!obj || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* Publisher(slow: function) */
static PyObject *publisher_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *names[] = {"slow", NULL};
    PyObject *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:Publisher", names, &slow))
        return NULL;
    if (!PyCallable_Check(slow))
        return PyErr_Format(PyExc_TypeError, "Publisher: slow must be callable");
    PublisherObject *p = (PublisherObject *)type->tp_alloc(type, 0);
    if (!p)
        return NULL;
    p->vectorcall = publisher_call;
    p->slow = Py_NewRef(slow);
    return (PyObject *)p;
}

static int publisher_traverse(PublisherObject *p, visitproc visit, void *arg)
{
    Py_VISIT(p->slow);
    return 0;
}

static int publisher_clear(PublisherObject *p)
{
    Py_CLEAR(p->slow);
    return 0;
}

static void publisher_dealloc(PublisherObject *p)
{
    PyObject_GC_UnTrack(p);
    publisher_clear(p);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* The function's name and doc, for help() and the API reference. */
static PyObject *publisher_attr(PublisherObject *p, void *name)
{
    return PyObject_GetAttrString(p->slow, name);
}

/* The function itself: inspect.signature(Client.publish) is its. */
static PyObject *publisher_wrapped(PublisherObject *p, void *unused)
{
    (void)unused;
    return Py_NewRef(p->slow);
}

static PyGetSetDef publisher_getset[] = {
    {"__doc__", (getter)publisher_attr, NULL, NULL, "__doc__"},
    {"__name__", (getter)publisher_attr, NULL, NULL, "__name__"},
    {"__qualname__", (getter)publisher_attr, NULL, NULL, "__qualname__"},
    {"__wrapped__", (getter)publisher_wrapped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PyPublisher_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pymq._fast.Publisher",
    .tp_basicsize = sizeof(PublisherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(PublisherObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = publisher_descr_get,
    .tp_new = publisher_new,
    .tp_traverse = (traverseproc)publisher_traverse,
    .tp_clear = (inquiry)publisher_clear,
    .tp_dealloc = (destructor)publisher_dealloc,
    .tp_getset = publisher_getset,
};

int py_publisher_init(void)
{
    str_addr = PyUnicode_InternFromString("addr");
    str_state = PyUnicode_InternFromString("_publish_state");
    return str_addr && str_state ? PyType_Ready(&PyPublisher_Type) : -1;
}
