/*
 * Per-frame kernels of the media core: the polyphase FIR product and G.711 table lookups.
 *
 * Everything else (filter design, state, bounds of a stream) stays in Python; these functions
 * only do the loops that numpy would otherwise split into many small calls. They take buffers
 * (numpy arrays, bytes) and write into a caller-made output array, so no numpy headers are
 * needed to build them.
 *
 * fir() works in double precision on integer samples and on coefficients that are multiples of
 * 2**-30 (see media/resample.py): every product and every partial sum is an exact double, so
 * the result does not depend on the order of the additions. That is what lets the inner loop
 * keep several independent sums, and what keeps the output identical to any other exact
 * evaluation (the tests compare it with scipy's upfirdn).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int
check_nargs(const char *function, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", function, expected,
                     nargs);
        return -1;
    }
    return 0;
}

/* One buffer argument of a kernel: its position, and what its items must be. */
struct buffer_spec {
    int arg;
    int writable;
    char format;          /* struct kind of the items; 0: any items, only the size counts */
    Py_ssize_t itemsize;
    const char *name;
};

/* Acquire a C-contiguous buffer as `spec` describes. */
static int
get_buffer(PyObject *obj, Py_buffer *view, const struct buffer_spec *spec)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (spec->writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    if (spec->format == 0) {
        return 0;
    }
    const char *fmt = view->format ? view->format : "B";
    if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') {
        fmt++;
    }
    int kind_ok = fmt[0] == spec->format && fmt[1] == '\0';
    if (!kind_ok || view->itemsize != spec->itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of type '%c' (%zd bytes), got '%s' (%zd)",
                     spec->name, spec->format, spec->itemsize,
                     view->format ? view->format : "B", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void
release(Py_buffer *views, int held)
{
    for (int i = 0; i < held; i++) {
        PyBuffer_Release(&views[i]);
    }
}

/* Acquire the `n` buffers of `specs` into `views`; on failure none stays held. */
static int
get_buffers(PyObject *const *args, const struct buffer_spec *specs, int n, Py_buffer *views)
{
    for (int i = 0; i < n; i++) {
        if (get_buffer(args[specs[i].arg], &views[i], &specs[i]) < 0) {
            release(views, i);
            return -1;
        }
    }
    return 0;
}

static inline int16_t
to_int16(double value)
{
    if (value >= 32767.0) {
        return 32767;
    }
    if (value <= -32768.0) {
        return -32768;
    }
    /* Adding and removing 1.5 * 2**52 leaves no fraction bits, so the addition rounds, and in
       the default rounding mode it rounds halves to even, as numpy's rint does. (An inline
       form of nearbyint, which is a library call without SSE4.1.) */
    const double shift = 6755399441055744.0;
    return (int16_t)((value + shift) - shift);
}

/* Two doubles: SSE2 on x86-64, NEON on arm64 (GCC vector extension). */
typedef double pair __attribute__((vector_size(16)));

static inline pair
load_pair(const double *p)
{
    pair v;
    memcpy(&v, p, sizeof v); /* unaligned load */
    return v;
}

static inline double
dot(const double *restrict coefficients, const double *restrict samples, Py_ssize_t taps)
{
    /* Eight independent partial sums keep the adders busy; the order does not matter (the
       sums are exact). */
    pair s0 = {0.0, 0.0}, s1 = {0.0, 0.0}, s2 = {0.0, 0.0}, s3 = {0.0, 0.0};
    Py_ssize_t j = 0;
    for (; j + 8 <= taps; j += 8) {
        s0 += load_pair(coefficients + j) * load_pair(samples + j);
        s1 += load_pair(coefficients + j + 2) * load_pair(samples + j + 2);
        s2 += load_pair(coefficients + j + 4) * load_pair(samples + j + 4);
        s3 += load_pair(coefficients + j + 6) * load_pair(samples + j + 6);
    }
    pair s = (s0 + s1) + (s2 + s3);
    double sum = s[0] + s[1];
    for (; j < taps; j++) {
        sum += coefficients[j] * samples[j];
    }
    return sum;
}

/* Four outputs that use the same coefficients on windows `stride` samples apart: each
   coefficient pair is loaded once for all four, which halves the loads per product. */
static inline void
dot4(const double *restrict coefficients, const double *restrict samples, Py_ssize_t stride,
     Py_ssize_t taps, double sums[4])
{
    pair a0 = {0.0, 0.0}, a1 = {0.0, 0.0}, b0 = {0.0, 0.0}, b1 = {0.0, 0.0};
    pair c0 = {0.0, 0.0}, c1 = {0.0, 0.0}, d0 = {0.0, 0.0}, d1 = {0.0, 0.0};
    const double *xa = samples, *xb = samples + stride;
    const double *xc = samples + 2 * stride, *xd = samples + 3 * stride;
    for (Py_ssize_t j = 0; j + 4 <= taps; j += 4) {
        pair h0 = load_pair(coefficients + j), h1 = load_pair(coefficients + j + 2);
        a0 += h0 * load_pair(xa + j);
        a1 += h1 * load_pair(xa + j + 2);
        b0 += h0 * load_pair(xb + j);
        b1 += h1 * load_pair(xb + j + 2);
        c0 += h0 * load_pair(xc + j);
        c1 += h1 * load_pair(xc + j + 2);
        d0 += h0 * load_pair(xd + j);
        d1 += h1 * load_pair(xd + j + 2);
    }
    pair a = a0 + a1, b = b0 + b1, c = c0 + c1, d = d0 + d1;
    sums[0] = a[0] + a[1];
    sums[1] = b[0] + b[1];
    sums[2] = c[0] + c[1];
    sums[3] = d[0] + d[1];
}

/* Where the next output is: its phase and the first sample of its window. */
struct cursor {
    Py_ssize_t phase;
    Py_ssize_t start;
};

/* One output further: `down` more positions at the high rate, without a division. */
static inline void
advance(struct cursor *at, Py_ssize_t up, Py_ssize_t down)
{
    at->phase += down;
    while (at->phase >= up) {
        at->phase -= up;
        at->start += 1;
    }
}

PyDoc_STRVAR(fir_doc,
"fir(samples, phases, up, down, position, out)\n--\n\n"
"Fill `out` (int16) with polyphase FIR outputs. Output n uses phase (position + n*down) % up\n"
"(a row of `phases`, float64, shape (up, taps), each row reversed) dotted with the `taps`\n"
"samples of `samples` (float64) that end at index (position + n*down) // up; the result is\n"
"rounded half to even and clipped to int16.");

static PyObject *
fir(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (check_nargs("fir", nargs, 6) < 0) {
        return NULL;
    }
    Py_ssize_t up = PyLong_AsSsize_t(args[2]);
    Py_ssize_t down = PyLong_AsSsize_t(args[3]);
    Py_ssize_t position = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (up < 1 || down < 1 || position < 0) {
        PyErr_SetString(PyExc_ValueError, "fir(): up and down must be >= 1, position >= 0");
        return NULL;
    }
    static const struct buffer_spec specs[3] = {
        {0, 0, 'd', sizeof(double), "samples"},
        {1, 0, 'd', sizeof(double), "phases"},
        {5, 1, 'h', sizeof(int16_t), "out"},
    };
    Py_buffer views[3];
    if (get_buffers(args, specs, 3, views) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n_samples = views[0].len / (Py_ssize_t)sizeof(double);
    Py_ssize_t n_coefficients = views[1].len / (Py_ssize_t)sizeof(double);
    Py_ssize_t count = views[2].len / (Py_ssize_t)sizeof(int16_t);
    Py_ssize_t taps = n_coefficients / up;
    if (taps < 1 || taps * up != n_coefficients) {
        PyErr_Format(PyExc_ValueError, "fir(): %zd coefficients do not split into %zd phases",
                     n_coefficients, up);
        goto done;
    }
    if (count > 0) {
        Py_ssize_t first_start = position / up - (taps - 1);
        Py_ssize_t last_end = (position + (count - 1) * down) / up;
        if (first_start < 0 || last_end >= n_samples) {
            PyErr_Format(PyExc_ValueError,
                         "fir(): outputs need samples %zd..%zd, the buffer holds 0..%zd",
                         first_start, last_end, n_samples - 1);
            goto done;
        }
    }
    const double *x = (const double *)views[0].buf;
    const double *h = (const double *)views[1].buf;
    int16_t *y = (int16_t *)views[2].buf;
    /* The GIL stays held: a frame takes microseconds, and taking it back after a release
       could wait for a whole switch interval behind another thread.
       Outputs n, n + up, n + 2 up and n + 3 up share a phase, their windows `down` apart:
       blocks of 4 * up outputs are made four at a time. The rest one by one. */
    struct cursor at = {position % up, position / up - (taps - 1)};
    Py_ssize_t n = 0;
    if (taps % 4 == 0) {
        for (; n + 4 * up <= count; n += 4 * up) {
            for (Py_ssize_t r = 0; r < up; r++) {
                double sums[4];
                dot4(h + at.phase * taps, x + at.start, down, taps, sums);
                for (int k = 0; k < 4; k++) {
                    y[n + r + k * up] = to_int16(sums[k]);
                }
                advance(&at, up, down);
            }
            at.start += 3 * down; /* the block's other three outputs per phase are made */
        }
    }
    for (; n < count; n++) {
        y[n] = to_int16(dot(h + at.phase * taps, x + at.start, taps));
        advance(&at, up, down);
    }
    result = Py_NewRef(Py_None);
done:
    release(views, 3);
    return result;
}

PyDoc_STRVAR(decode_doc,
"decode(table, codes, out)\n--\n\n"
"out[i] = table[codes[i]]: `table` is 256 int16 samples, `codes` bytes, `out` int16.");

static PyObject *
decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    static const struct buffer_spec specs[3] = {
        {0, 0, 'h', sizeof(int16_t), "table"},
        {1, 0, 'B', 1, "codes"},
        {2, 1, 'h', sizeof(int16_t), "out"},
    };
    Py_buffer views[3];
    if (check_nargs("decode", nargs, 3) < 0 || get_buffers(args, specs, 3, views) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = views[2].len / (Py_ssize_t)sizeof(int16_t);
    if (views[0].len != 256 * (Py_ssize_t)sizeof(int16_t) || views[1].len != count) {
        PyErr_Format(PyExc_ValueError,
                     "decode(): need a 256-entry table and as many codes (%zd) as outputs (%zd)",
                     views[1].len, count);
        goto done;
    }
    const int16_t *t = (const int16_t *)views[0].buf;
    const uint8_t *c = (const uint8_t *)views[1].buf;
    int16_t *y = (int16_t *)views[2].buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        y[i] = t[c[i]];
    }
    result = Py_NewRef(Py_None);
done:
    release(views, 3);
    return result;
}

PyDoc_STRVAR(encode_doc,
"encode(table, samples, out)\n--\n\n"
"out[i] = table[samples[i] as uint16]: `table` is 65536 code bytes, `samples` int16 items\n"
"(an array or native-order bytes), `out` bytes-like.");

static PyObject *
encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    /* The samples may be an int16 array or raw bytes in native order: only their size counts. */
    static const struct buffer_spec specs[3] = {
        {0, 0, 'B', 1, "table"},
        {1, 0, 0, 0, "samples"},
        {2, 1, 'B', 1, "out"},
    };
    Py_buffer views[3];
    if (check_nargs("encode", nargs, 3) < 0 || get_buffers(args, specs, 3, views) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = views[2].len;
    if (views[0].len != 65536 || views[1].len != 2 * count) {
        PyErr_Format(PyExc_ValueError,
                     "encode(): need a 65536-entry table and two sample bytes (%zd) per output "
                     "(%zd)",
                     views[1].len, count);
        goto done;
    }
    const uint8_t *t = (const uint8_t *)views[0].buf;
    const uint8_t *s = (const uint8_t *)views[1].buf;
    uint8_t *y = (uint8_t *)views[2].buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint16_t bits;
        memcpy(&bits, s + 2 * i, sizeof bits);
        y[i] = t[bits];
    }
    result = Py_NewRef(Py_None);
done:
    release(views, 3);
    return result;
}

static PyMethodDef methods[] = {
    {"fir", (PyCFunction)(void (*)(void))fir, METH_FASTCALL, fir_doc},
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL, decode_doc},
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "media._kernels",
    .m_doc = "Per-frame loops of the media core (polyphase FIR, G.711 lookups).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__kernels(void)
{
    return PyModuleDef_Init(&module_def);
}
