/*
 * module.c - pymq._fast: bind() (the table of pymq._native's functions and
 * the function that makes exceptions), the GIL hooks, errors, and the
 * publish calls. The types are in message.c, reader.c and publisher.c.
 */
#include "pmq_py.h"

#include <string.h>

const pmq_api_t *py_api;
static PyObject *py_error; /* pymq._core.error_from_c */

int py_bound(void)
{
    if (py_api)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "pymq._fast is not bound to pymq._native");
    return 0;
}

void py_block(void *ctx) { ((py_gil_t *)ctx)->ts = PyEval_SaveThread(); }
void py_unblock(void *ctx) { PyEval_RestoreThread(((py_gil_t *)ctx)->ts); }

PyObject *py_raise(int64_t rc, PyObject *topic, int64_t timeout_ns, int64_t size, int64_t largest,
                   const pmq_ring_t *r)
{
    if (rc == PY_ERR && PyErr_Occurred())
        return NULL;
    PyObject *exc = PyObject_CallFunction(py_error, "LOLLLKK", (long long)rc, topic ? topic : Py_None,
                                          (long long)timeout_ns, (long long)size, (long long)largest,
                                          (unsigned long long)(r ? r->max_msg : 0),
                                          (unsigned long long)(r ? r->capacity : 0));
    if (!exc)
        return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* bind(api, error_from_c): the address of pymq._native's pmq_api_t
 * (checked: version, size, layout, build), and the function that turns the
 * ring's codes into exceptions. One-shot; binding the same again is a no-op. */
static PyObject *fast_bind(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "bind(api, error_from_c)");
        return NULL;
    }
    const pmq_api_t *api = PyLong_AsVoidPtr(args[0]);
    if (!api)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "NULL api");
    /* the version and the size first: only then are the other fields known to be there */
    if (api->version != PMQ_API_VERSION || api->size != sizeof(pmq_api_t) ||
        api->layout != PMQ_LAYOUT_VERSION || !api->build_id ||
        strcmp(api->build_id, PMQ_BUILD_ID) != 0)
        return PyErr_Format(PyExc_ImportError,
                            "pymq._fast (build %s, api %u, layout %u) does not match pymq._native "
                            "(api %u, layout %u): a stale build; run `make clean` and build again",
                            PMQ_BUILD_ID, PMQ_API_VERSION, PMQ_LAYOUT_VERSION, api->version,
                            api->version == PMQ_API_VERSION ? api->layout : 0);
    if (!PyCallable_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "bind(api, error_from_c): error_from_c is callable");
    if (py_api && (py_api != api || py_error != args[1]))
        return PyErr_Format(PyExc_RuntimeError, "pymq._fast is bound already");
    if (!py_api) {
        py_error = Py_NewRef(args[1]);
        py_api = api;
    }
    Py_RETURN_NONE;
}

/* ---- publishing --------------------------------------------------------------------- */

static int args_ring(PyObject *const *args, pmq_ring_t **r, int64_t *timeout)
{
    *r = PyLong_AsVoidPtr(args[0]);
    if (!*r && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "NULL ring");
    if (!*r)
        return -1;
    *timeout = PyLong_AsLongLong(args[3]);
    return *timeout == -1 && PyErr_Occurred() ? -1 : 0;
}

int64_t py_publish(pmq_ring_t *r, const char *const *parts, const uint32_t *lens, uint32_t count,
                   int64_t timeout)
{
    pmq_deadline_t d = PMQ_DEADLINE(timeout);
    py_gil_t gil;
    pmq_hooks_t hooks = {py_block, py_unblock, &gil};
    int64_t rc;
    while ((rc = py_api->publish(r, parts, lens, count, &d, &hooks)) == PMQ_EINTR)
        if (PyErr_CheckSignals() < 0)
            return PY_ERR;
    return rc;
}

PyObject *py_published(int64_t rc, pmq_ring_t *r, PyObject *topic, const uint32_t *lens,
                       uint32_t count, int64_t timeout)
{
    if (rc > 0)
        return PyLong_FromLongLong(rc + (int64_t)count - 1); /* the last seq */
    uint64_t size = 0, largest = 0;
    for (uint32_t i = 0; i < count; i++) {
        size += lens[i];
        largest = lens[i] > largest ? lens[i] : largest;
    }
    return py_raise(rc, topic, timeout, (int64_t)size, (int64_t)largest, r);
}

static PyObject *publish_parts(pmq_ring_t *r, PyObject *topic, const char *const *parts,
                               const uint32_t *lens, uint32_t count, int64_t timeout)
{
    return py_published(py_publish(r, parts, lens, count, timeout), r, topic, lens, count,
                        timeout);
}

/* publish1(ring, topic, payload: bytes, timeout_ns) -> seq; raises. */
static PyObject *fast_publish1(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    pmq_ring_t *r;
    int64_t timeout;
    if (n != 4)
        return PyErr_Format(PyExc_TypeError, "publish1(ring, topic, payload, timeout_ns)");
    if (!py_bound() || args_ring(args, &r, &timeout) < 0)
        return NULL;
    PyObject *payload = args[2];
    if (!PyBytes_Check(payload))
        return PyErr_Format(PyExc_TypeError, "payload must be bytes, not %.100s",
                            Py_TYPE(payload)->tp_name);
    Py_ssize_t len = PyBytes_GET_SIZE(payload);
    if ((uint64_t)len > UINT32_MAX)
        return py_raise(PMQ_ETOOBIG, args[1], timeout, len, len, r);
    const char *data = PyBytes_AS_STRING(payload);
    uint32_t len32 = (uint32_t)len;
    return publish_parts(r, args[1], &data, &len32, 1, timeout);
}

/* publish(ring, topic, payloads: list or tuple of bytes, timeout_ns) -> the
 * last seq; None if an item is not bytes (the caller converts them); raises.
 * One native call, all or none. The payloads are not copied here: the ring
 * copies each from its bytes object, which cannot change, and a tuple of them
 * (the list itself may change in another thread while the GIL is let go)
 * keeps them alive until it returns. */
#define PUBLISH_STACK 64 /* parts and lengths of a batch this size live on the stack */
static PyObject *fast_publish(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    pmq_ring_t *r;
    int64_t timeout;
    if (n != 4)
        return PyErr_Format(PyExc_TypeError, "publish(ring, topic, payloads, timeout_ns)");
    if (!py_bound() || args_ring(args, &r, &timeout) < 0)
        return NULL;
    if (!PyList_Check(args[2]) && !PyTuple_Check(args[2]))
        Py_RETURN_NONE;
    PyObject *held = PySequence_Tuple(args[2]); /* a tuple: the same one, referenced */
    if (!held)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(held);
    PyObject *result = NULL;
    const char *parts_stack[PUBLISH_STACK], **parts = parts_stack;
    uint32_t lens_stack[PUBLISH_STACK], *lens = lens_stack;
    uint64_t total = 0, largest = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* every type first, then sizes */
        PyObject *item = PyTuple_GET_ITEM(held, i);
        if (!PyBytes_Check(item)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        uint64_t len = (uint64_t)PyBytes_GET_SIZE(item);
        total += len;
        largest = len > largest ? len : largest;
    }
    if (count == 0 || (uint64_t)count > UINT32_MAX || largest > UINT32_MAX) {
        result = count == 0 ? PyErr_Format(PyExc_ValueError, "no payloads")
                            : py_raise(PMQ_ETOOBIG, args[1], timeout, (int64_t)total,
                                       (int64_t)largest, r);
        goto done;
    }
    if (count > PUBLISH_STACK) {
        parts = PyMem_Malloc((size_t)count * sizeof *parts);
        lens = PyMem_Malloc((size_t)count * sizeof *lens);
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
    result = publish_parts(r, args[1], parts, lens, (uint32_t)count, timeout);
done:
    if (parts != parts_stack)
        PyMem_Free((void *)parts);
    if (lens != lens_stack)
        PyMem_Free(lens);
    Py_DECREF(held);
    return result;
}

/* publish_buffer(ring, topic, data, record_size, offsets, timeout_ns) -> the
 * last seq; raises. Every record of one C-contiguous buffer is one message,
 * published in one native call, all or none: with record_size > 0 the
 * buffer's length is a multiple of it; else offsets (a C-contiguous buffer of
 * n + 1 unsigned 64-bit integers, non-decreasing, the last within the data)
 * delimits them: record i is data[offsets[i]:offsets[i + 1]]. ValueError, with
 * nothing published, for anything else. The records are copied straight from
 * the buffer into the ring, the GIL held (a publish lets it go only to wait). */
static PyObject *fast_publish_buffer(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)self;
    pmq_ring_t *r;
    int64_t timeout;
    if (n != 6)
        return PyErr_Format(PyExc_TypeError,
                            "publish_buffer(ring, topic, data, record_size, offsets, timeout_ns)");
    if (!py_bound())
        return NULL;
    r = PyLong_AsVoidPtr(args[0]);
    if (!r)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "NULL ring");
    timeout = PyLong_AsLongLong(args[5]);
    if (timeout == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t record_size = PyLong_AsSsize_t(args[3]);
    if (record_size == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer data, offs = {0};
    if (PyObject_GetBuffer(args[2], &data, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *result = NULL;
    const char **parts = NULL;
    uint32_t *lens = NULL;
    uint64_t count = 0;
    const char *base = data.buf;
    if (record_size > 0) {
        if (args[4] != Py_None) {
            PyErr_SetString(PyExc_ValueError, "give record_size or offsets, not both");
            goto done;
        }
        if (data.len % record_size) {
            PyErr_Format(PyExc_ValueError, "the data (%zd bytes) is not a whole number of "
                         "records of %zd bytes", data.len, record_size);
            goto done;
        }
        count = (uint64_t)(data.len / record_size);
    } else {
        if (args[4] == Py_None) {
            PyErr_SetString(PyExc_ValueError, "give record_size (> 0) or offsets");
            goto done;
        }
        if (PyObject_GetBuffer(args[4], &offs, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        if (offs.itemsize != 8 || !offs.format || !strchr("QLK", offs.format[0]) ||
            offs.format[1] || offs.len < 16) {
            PyErr_SetString(PyExc_ValueError, "offsets must be n + 1 unsigned 64-bit integers "
                            "(array('Q'), numpy uint64), n >= 1");
            goto done;
        }
        count = (uint64_t)(offs.len / 8) - 1;
        const uint64_t *o = offs.buf;
        for (uint64_t i = 0; i < count; i++) {
            if (o[i + 1] < o[i] || o[i + 1] > (uint64_t)data.len) {
                PyErr_Format(PyExc_ValueError, "offsets must be non-decreasing and within "
                             "the data (%zd bytes): offsets[%llu] = %llu, offsets[%llu] = %llu",
                             data.len, (unsigned long long)i, (unsigned long long)o[i],
                             (unsigned long long)(i + 1), (unsigned long long)o[i + 1]);
                goto done;
            }
        }
    }
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "no records in the data");
        goto done;
    }
    if (count > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "too many records at once (%llu)",
                     (unsigned long long)count);
        goto done;
    }
    parts = PyMem_Malloc((size_t)count * sizeof *parts);
    lens = PyMem_Malloc((size_t)count * sizeof *lens);
    if (!parts || !lens) {
        PyErr_NoMemory();
        goto done;
    }
    for (uint64_t i = 0; i < count; i++) {
        uint64_t at = record_size > 0 ? i * (uint64_t)record_size : ((const uint64_t *)offs.buf)[i];
        uint64_t len = record_size > 0 ? (uint64_t)record_size
                                       : ((const uint64_t *)offs.buf)[i + 1] - at;
        if (len > UINT32_MAX) {
            result = py_raise(PMQ_ETOOBIG, args[1], timeout, (int64_t)len, (int64_t)len, r);
            goto done;
        }
        parts[i] = base + at;
        lens[i] = (uint32_t)len;
    }
    result = publish_parts(r, args[1], parts, lens, (uint32_t)count, timeout);
done:
    PyMem_Free((void *)parts);
    PyMem_Free(lens);
    if (offs.obj)
        PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    return result;
}

int py_timeout_ns(PyObject *seconds, int64_t *ns)
{
    if (seconds == Py_None) {
        *ns = -1;
        return 0;
    }
    double t = -1;
    if (PyFloat_Check(seconds))
        t = PyFloat_AS_DOUBLE(seconds);
    else if (PyLong_Check(seconds) && !PyBool_Check(seconds)) {
        t = PyLong_AsDouble(seconds);
        if (t == -1.0 && PyErr_Occurred()) { /* past a double: for ever, in effect */
            PyErr_Clear();
            t = Py_SIZE(seconds) < 0 ? -1 : HUGE_VAL;
        }
    }
    if (!(t >= 0)) { /* negative, NaN, or not a number */
        PyErr_Format(PyExc_ValueError, "timeout must be a number >= 0 or None, not %R", seconds);
        return -1;
    }
    *ns = t * 1e9 >= 9.2e18 ? INT64_MAX : (int64_t)(t * 1e9);
    return 0;
}

/* timeout_ns(seconds) -> ns (-1 for None) */
static PyObject *fast_timeout_ns(PyObject *unused, PyObject *seconds)
{
    (void)unused;
    int64_t ns;
    return py_timeout_ns(seconds, &ns) < 0 ? NULL : PyLong_FromLongLong(ns);
}

static PyMethodDef methods[] = {
    {"timeout_ns", (PyCFunction)fast_timeout_ns, METH_O,
     "timeout_ns(seconds) -> ns: None -> -1; a number >= 0 (else ValueError)"},
    {"publish_buffer", (PyCFunction)(void (*)(void))fast_publish_buffer, METH_FASTCALL,
     "publish_buffer(ring, topic, data, record_size, offsets, timeout_ns) -> the last seq: "
     "every record of one buffer, one message each, all or none"},
    {"bind", (PyCFunction)(void (*)(void))fast_bind, METH_FASTCALL,
     "bind(api, error_from_c): the table of pymq._native's functions (checked), and the "
     "function that makes exceptions of codes"},
    {"publish1", (PyCFunction)(void (*)(void))fast_publish1, METH_FASTCALL,
     "publish1(ring, topic, payload, timeout_ns) -> seq"},
    {"publish", (PyCFunction)(void (*)(void))fast_publish, METH_FASTCALL,
     "publish(ring, topic, list of bytes, timeout_ns) -> the last seq, or None if an item is "
     "not bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pymq._fast",
    "The client's per-message calls and the Message type, in C (native/py/).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    if (PyType_Ready(&PyMessage_Type) < 0 || PyType_Ready(&PyReader_Type) < 0 ||
        py_publisher_init() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Message", (PyObject *)&PyMessage_Type) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&PyReader_Type) < 0 ||
        PyModule_AddObjectRef(m, "Publisher", (PyObject *)&PyPublisher_Type) < 0 ||
        PyModule_AddStringConstant(m, "BUILD_ID", PMQ_BUILD_ID) < 0 ||
        PyModule_AddIntConstant(m, "API_VERSION", PMQ_API_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
