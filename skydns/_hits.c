/*
 * skydns._hits: the exact-cache hits of UDP batches answered in C (transport rule 3g).
 *
 * The optional compiled twin of the Python loop of transport.Handler.batch_hits and
 * udpbatch.Batcher._serve (transport rule 3f, udpbatch rule 2); the Python loop stays the
 * reference and is what runs when this module is not built. Rules:
 *
 * 1. A datagram of a batch (slot i of the slots buffer, its length in receive header i) is
 *    looked up by its bytes after the ID in the exact cache (a dict of key bytes -> [tails,
 *    entry, revision, counters, parsed, size], transport rule 3a). It is a hit exactly when
 *    batch_hits would answer it: the entry is alive, its metric counters are known for this
 *    epoch and address family, and, when the mirror moved since the answer was filed and the
 *    answer carries an SOA serial, it is a single answer with one serial (written into the slot
 *    as the answer is copied there). Anything else, including a value of any other shape, is a
 *    miss, which Python answers one by one with the same result: nothing in the cache makes a
 *    call raise. The cache holds only transport's values, whose attributes are slots, so no
 *    Python code runs during a call.
 * 2. A hit is answered in its own slot: the tail (the answer after its ID, the next rotation
 *    when there are several, the turn counted as in Python) is copied after the query's ID.
 *    Send headers 0..ready-1 then point at the hits in order: the address the kernel wrote for
 *    the datagram, its slot, its answer's length. Nothing else of the headers is touched.
 * 3. The counters are those Python updates, summed during the call and added once at its end:
 *    per hit the entry's [answers, request bytes, response bytes] list, and its latency
 *    histogram, returned as {histogram: hits} for the caller to observe.
 * 4. All checks of a datagram come before any change, so a miss leaves nothing half done.
 * 5. serve() reads batches with recvmmsg and sends each hit with sendto, through the function
 *    addresses it is given (libc's; tests give stand-ins), on the non-blocking socket, until a
 *    read finds nothing, a batch has misses or a refused send, or `rounds` batches were read.
 *    One sendto per answer: on loopback, sendmmsg's per-message header copying cost the kernel
 *    more than the system calls it saves (bench/README.md, "Eighth round"). It returns where it
 *    stopped so that Python answers the misses and holds or drops what was not sent (udpbatch
 *    rules 2 and 5).
 * 6. The cache's values for a batch are looked up first, then their objects are prefetched
 *    into the CPU's caches stage by stage before they are read. After the kernel's work for a
 *    batch the caches are cold, and a hit reads about ten objects: fetched one after another
 *    they cost more than the rest of the hit (in process, with the caches flushed: 1.3 us per
 *    datagram in batches of 18 without, 0.7 us with).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static PyObject *str_alive;
static PyObject *str_serials;

/* Borrowed item k of a list or tuple, or NULL (no exception set) when seq is neither or too short. */
static PyObject *
item(PyObject *seq, Py_ssize_t k)
{
    if (PyList_CheckExact(seq))
        return k < PyList_GET_SIZE(seq) ? PyList_GET_ITEM(seq, k) : NULL;
    if (PyTuple_CheckExact(seq))
        return k < PyTuple_GET_SIZE(seq) ? PyTuple_GET_ITEM(seq, k) : NULL;
    return NULL;
}

static Py_ssize_t
length(PyObject *seq)
{
    if (PyList_CheckExact(seq))
        return PyList_GET_SIZE(seq);
    if (PyTuple_CheckExact(seq))
        return PyTuple_GET_SIZE(seq);
    return -1;
}

/* counts[k] += add; 0 on success. */
static int
add_to(PyObject *counts, Py_ssize_t k, long long add)
{
    PyObject *old = PyList_GET_ITEM(counts, k);
    PyObject *step = PyLong_FromLongLong(add);
    if (step == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(old, step);
    Py_DECREF(step);
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(counts, k, sum);  /* steals sum */
    Py_DECREF(old);
    return 0;
}

/* obj.name (a new reference, or NULL when there is none) with its truth in *truth: 1, 0, or -1
 * when there is no such attribute or its truth cannot be told (no exception is left set). */
static PyObject *
attribute(PyObject *obj, PyObject *name, int *truth)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    *truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (*truth < 0)
        PyErr_Clear();
    return value;
}

/* What one hit needs, found by lookup() before anything is changed (rule 4). */
struct hit {
    PyObject *tails;     /* borrowed list/tuple (the tail sent is checked to be bytes) */
    PyObject *counts;    /* borrowed list of at least 3 */
    PyObject *hist;      /* borrowed */
    Py_ssize_t patch_at; /* where the serial goes in the tail, or -1 */
};

/* 1 and *out filled when the hit list can be answered here (rule 1), 0 when not (no
 * exception is left set). */
static int
lookup(PyObject *hit, PyObject *revision, PyObject *epoch, PyObject *family, struct hit *out)
{
    if (!PyList_CheckExact(hit) || PyList_GET_SIZE(hit) != 6)
        return 0;
    PyObject *tails = PyList_GET_ITEM(hit, 0);
    PyObject *entry = PyList_GET_ITEM(hit, 1);
    PyObject *seen = PyList_GET_ITEM(hit, 2);
    PyObject *counters = PyList_GET_ITEM(hit, 3);
    Py_ssize_t ntails = length(tails);
    if (ntails < 1 || !PyTuple_CheckExact(counters) || PyTuple_GET_SIZE(counters) != 4)
        return 0;
    int live;
    Py_XDECREF(attribute(entry, str_alive, &live));
    if (live != 1)
        return 0;
    /* counters is (family, epoch, counts, histogram) */
    int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(counters, 1), epoch, Py_EQ);
    if (same == 1)
        same = PyObject_RichCompareBool(PyTuple_GET_ITEM(counters, 0), family, Py_EQ);
    if (same != 1) {
        PyErr_Clear();
        return 0;
    }
    PyObject *counts = PyTuple_GET_ITEM(counters, 2);
    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) < 3)
        return 0;
    out->tails = tails;
    out->counts = counts;
    out->hist = PyTuple_GET_ITEM(counters, 3);
    out->patch_at = -1;
    int moved = PyObject_RichCompareBool(seen, revision, Py_NE);
    if (moved < 0) {
        PyErr_Clear();
        return 0;
    }
    if (!moved)
        return 1;
    int any;
    PyObject *serials = attribute(entry, str_serials, &any);
    if (any != 1) {
        Py_XDECREF(serials);
        return any == 0;  /* no SOA in the answer: the revision does not matter */
    }
    /* a single answer with one serial: written in as it is copied; anything else is Python's */
    PyObject *offsets = item(serials, 0);
    PyObject *at = (offsets != NULL && length(offsets) == 1) ? item(offsets, 0) : NULL;
    Py_ssize_t where = -1;
    if (ntails == 1 && at != NULL && PyLong_CheckExact(at)) {
        where = PyLong_AsSsize_t(at) - 2;
        if (where == -3 && PyErr_Occurred()) {
            PyErr_Clear();
            where = -1;
        }
    }
    Py_DECREF(serials);
    PyObject *only = item(tails, 0);
    if (where < 0 || !PyBytes_CheckExact(only) || where + 4 > PyBytes_GET_SIZE(only))
        return 0;
    out->patch_at = where;
    return 1;
}

/* Counters of one call, added to the Python objects once at its end (rule 3): most hits of a
 * batch share their counts list and histogram (both come from the entry's counters). */
#define SUMS 16
/* Most datagrams in a batch (skydns --udp-batch is at most 1024). */
#define MOST 1024
struct sums {
    int used;
    struct { PyObject *counts, *hist; long long n, in, out; } of[SUMS];
};

/* Adds what sums holds to the counts lists and to timed ({histogram: hits}). Counts that are
 * not numbers, or a histogram that cannot be a dict key, are skipped (rule 1: a value of
 * another shape never makes a call raise; transport's are ints and histogram objects). */
static void
flush_sums(struct sums *sums, PyObject *timed)
{
    for (int k = 0; k < sums->used; k++) {
        PyObject *counts = sums->of[k].counts, *hist = sums->of[k].hist;
        if (add_to(counts, 0, sums->of[k].n) < 0 || add_to(counts, 1, sums->of[k].in) < 0
            || add_to(counts, 2, sums->of[k].out) < 0)
            PyErr_Clear();
        PyObject *had = PyDict_GetItemWithError(timed, hist);
        long long before = had == NULL ? 0 : PyLong_AsLongLong(had);
        PyObject *now = PyErr_Occurred() ? NULL : PyLong_FromLongLong(before + sums->of[k].n);
        if (now == NULL || PyDict_SetItem(timed, hist, now) < 0)
            PyErr_Clear();
        Py_XDECREF(now);
    }
    sums->used = 0;
}

/* Counts one hit. The counts lists and histograms are kept alive by the exact
 * cache's entries, which nothing changes during a call (no Python code runs in it), and a
 * flush happens before the call returns. */
static void
count_hit(struct sums *sums, PyObject *timed, PyObject *counts, PyObject *hist, long long in, long long out)
{
    int k;
    for (k = 0; k < sums->used && (sums->of[k].counts != counts || sums->of[k].hist != hist); k++)
        ;
    if (k == sums->used) {
        if (k == SUMS) {
            flush_sums(sums, timed);
            k = 0;
        }
        sums->of[k].counts = counts;
        sums->of[k].hist = hist;
        sums->of[k].n = sums->of[k].in = sums->of[k].out = 0;
        sums->used = k + 1;
    }
    sums->of[k].n += 1;
    sums->of[k].in += in;
    sums->of[k].out += out;
}

/* What one call answers from: the exact cache and the mirror's state. */
struct cache {
    PyObject *exact, *revision, *epoch, *family;
    const char *serial;
    long long turn;
    struct sums sums;
    PyObject *timed;
};

/* The items of an exact-cache value of the usual shape (a list of 6), or NULL. */
static inline PyObject **
items_of(PyObject *hit)
{
    return hit != NULL && PyList_CheckExact(hit) && PyList_GET_SIZE(hit) == 6 ? ((PyListObject *)hit)->ob_item : NULL;
}

/* The exact cache's values of a batch (hits[i]: NULL, or a value of any shape), their objects
 * fetched into the CPU's caches stage by stage, each stage reading only what the one before
 * fetched (rule 6): the value list (as it is looked up), its items, the tails list, entry and
 * counters, the tails' items, the first tail. */
static void
prefetch(PyObject **hits, Py_ssize_t count)
{
    PyObject **items;
    for (Py_ssize_t i = 0; i < count; i++)
        if ((items = items_of(hits[i])) != NULL)
            __builtin_prefetch(items);
    for (Py_ssize_t i = 0; i < count; i++)
        if ((items = items_of(hits[i])) != NULL) {
            __builtin_prefetch(items[0]);
            __builtin_prefetch(items[1]);
            __builtin_prefetch(items[3]);
        }
    for (Py_ssize_t i = 0; i < count; i++)
        if ((items = items_of(hits[i])) != NULL && PyList_CheckExact(items[0]))
            __builtin_prefetch(((PyListObject *)items[0])->ob_item);
    for (Py_ssize_t i = 0; i < count; i++)
        if ((items = items_of(hits[i])) != NULL && PyList_CheckExact(items[0]) && PyList_GET_SIZE(items[0]) > 0)
            __builtin_prefetch(PyList_GET_ITEM(items[0], 0));
}

/* Answers the hits of the count datagrams in slots (rules 1, 2, 4): returns how many, their
 * send headers 0..ready-1 written; the other indexes are appended to misses. -1 on a memory
 * error. */
static Py_ssize_t
answer_batch(struct cache *cache, char *base, Py_ssize_t slot, struct mmsghdr *rh, struct mmsghdr *sh,
             Py_ssize_t count, PyObject *misses)
{
    Py_ssize_t ready = 0;
    PyObject *hits[MOST];  /* borrowed, or NULL; check_buffers saw count <= MOST */
    for (Py_ssize_t i = 0; i < count; i++) {
        char *data = base + i * slot;
        Py_ssize_t size = (Py_ssize_t)rh[i].msg_len;
        hits[i] = NULL;
        if (size > 2 && size <= slot) {
            PyObject *key = PyBytes_FromStringAndSize(data + 2, size - 2);
            if (key == NULL)
                return -1;
            hits[i] = PyDict_GetItemWithError(cache->exact, key);
            Py_DECREF(key);
            if (hits[i] == NULL && PyErr_Occurred())
                return -1;
            if (hits[i] != NULL)
                __builtin_prefetch(hits[i]);  /* the first stage of prefetch() */
        }
    }
    prefetch(hits, count);
    for (Py_ssize_t i = 0; i < count; i++) {
        char *data = base + i * slot;
        Py_ssize_t size = (Py_ssize_t)rh[i].msg_len;
        struct hit found;
        int ok = 0;
        if (hits[i] != NULL)
            ok = lookup(hits[i], cache->revision, cache->epoch, cache->family, &found);
        PyObject *tail = NULL;
        if (ok) {  /* the tail this hit sends: the next rotation, taken only if it can be sent */
            Py_ssize_t ntails = length(found.tails);
            long long turn = ntails > 1 ? cache->turn + 1 : cache->turn;
            Py_ssize_t pick = ntails > 1 ? (Py_ssize_t)(turn % ntails) : 0;
            if (pick < 0)
                pick += ntails;
            tail = item(found.tails, pick);
            if (tail == NULL || !PyBytes_CheckExact(tail) || PyBytes_GET_SIZE(tail) + 2 > slot)
                ok = 0;
            else
                cache->turn = turn;
        }
        if (!ok) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(misses, index) < 0) {
                Py_XDECREF(index);
                return -1;
            }
            Py_DECREF(index);
            continue;
        }
        Py_ssize_t tsize = PyBytes_GET_SIZE(tail);
        memcpy(data + 2, PyBytes_AS_STRING(tail), (size_t)tsize);
        if (found.patch_at >= 0)
            memcpy(data + 2 + found.patch_at, cache->serial, 4);
        count_hit(&cache->sums, cache->timed, found.counts, found.hist, size, tsize + 2);
        sh[ready].msg_hdr.msg_name = rh[i].msg_hdr.msg_name;
        sh[ready].msg_hdr.msg_iov->iov_base = data;
        sh[ready].msg_hdr.msg_iov->iov_len = (size_t)(tsize + 2);
        ready++;
    }
    return ready;
}

static void
release(Py_buffer *slots, Py_buffer *rhdr, Py_buffer *shdr, Py_buffer *serial)
{
    PyBuffer_Release(slots);
    PyBuffer_Release(rhdr);
    PyBuffer_Release(shdr);
    PyBuffer_Release(serial);
}

/* The buffers of a batcher, checked to hold size datagrams. */
static int
check_buffers(Py_buffer *slots, Py_buffer *rhdr, Py_buffer *shdr, Py_buffer *serial, Py_ssize_t size,
              Py_ssize_t slot)
{
    if (size < 0 || size > MOST || slot < 16 || serial->len != 4 || size > slots->len / slot
        || size > rhdr->len / (Py_ssize_t)sizeof(struct mmsghdr)
        || size > shdr->len / (Py_ssize_t)sizeof(struct mmsghdr)) {
        PyErr_SetString(PyExc_ValueError, "buffers too small for the batch");
        return -1;
    }
    return 0;
}

static PyObject *
fill(PyObject *module, PyObject *args)
{
    struct cache cache = {0};
    Py_buffer slots, rhdr, shdr, serial;
    Py_ssize_t count, slot;
    if (!PyArg_ParseTuple(args, "O!w*w*w*nny*OOOL:fill", &PyDict_Type, &cache.exact, &slots, &rhdr, &shdr,
                          &count, &slot, &serial, &cache.revision, &cache.epoch, &cache.family, &cache.turn))
        return NULL;
    PyObject *result = NULL, *misses = NULL;
    if (check_buffers(&slots, &rhdr, &shdr, &serial, count, slot) < 0)
        goto done;
    cache.serial = serial.buf;
    misses = PyList_New(0);
    cache.timed = PyDict_New();
    if (misses == NULL || cache.timed == NULL)
        goto done;
    Py_ssize_t ready = answer_batch(&cache, slots.buf, slot, rhdr.buf, shdr.buf, count, misses);
    if (ready < 0)
        goto done;
    flush_sums(&cache.sums, cache.timed);
    result = Py_BuildValue("(nLOO)", ready, cache.turn, misses, cache.timed);
done:
    Py_XDECREF(misses);
    Py_XDECREF(cache.timed);
    release(&slots, &rhdr, &shdr, &serial);
    return result;
}

typedef int (*recv_fn)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);

static PyObject *
serve(PyObject *module, PyObject *args)
{
    struct cache cache = {0};
    Py_buffer slots, rhdr, shdr, serial;
    unsigned long long recv_at, send_at;
    int fd, flags, rounds;
    Py_ssize_t size, slot;
    if (!PyArg_ParseTuple(args, "KKiiiO!w*w*w*nny*OOOL:serve", &recv_at, &send_at, &fd, &flags, &rounds,
                          &PyDict_Type, &cache.exact, &slots, &rhdr, &shdr, &size, &slot, &serial,
                          &cache.revision, &cache.epoch, &cache.family, &cache.turn))
        return NULL;
    PyObject *result = NULL, *misses = NULL;
    if (check_buffers(&slots, &rhdr, &shdr, &serial, size, slot) < 0)
        goto done;
    if (recv_at == 0 || send_at == 0 || size < 1) {
        PyErr_SetString(PyExc_ValueError, "serve: no recvmmsg/sendto or an empty batch");
        goto done;
    }
    recv_fn recv_mm = (recv_fn)(uintptr_t)recv_at;
    sendto_fn send_to = (sendto_fn)(uintptr_t)send_at;
    struct mmsghdr *rh = rhdr.buf, *sh = shdr.buf;
    cache.serial = serial.buf;
    misses = PyList_New(0);
    cache.timed = PyDict_New();
    if (misses == NULL || cache.timed == NULL)
        goto done;
    Py_ssize_t hits = 0, batches = 0, count = 0, ready = 0, sent = 0;
    int recv_errno = 0, send_errno = 0;
    for (int round = 0; round < rounds; round++) {
        ready = sent = 0;
        int got = recv_mm(fd, rh, (unsigned int)size, flags, NULL);
        if (got <= 0) {
            recv_errno = got < 0 ? errno : 0;
            count = 0;
            break;
        }
        count = got;
        batches++;
        ready = answer_batch(&cache, slots.buf, slot, rh, sh, count, misses);
        if (ready < 0)
            goto done;
        hits += ready;
        while (sent < ready) {
            struct msghdr *m = &sh[sent].msg_hdr;
            if (send_to(fd, m->msg_iov->iov_base, m->msg_iov->iov_len, flags, m->msg_name, m->msg_namelen) >= 0) {
                sent++;
                continue;
            }
            if (errno == EINTR)
                continue;
            send_errno = errno;
            break;
        }
        /* what is not all sent, and the misses, are Python's (udpbatch rules 2 and 5) */
        if (sent < ready || PyList_GET_SIZE(misses) > 0)
            break;
    }
    flush_sums(&cache.sums, cache.timed);
    result = Py_BuildValue("(LnnOnnniOi)", cache.turn, hits, batches, cache.timed, count, ready, sent,
                           send_errno, misses, recv_errno);
done:
    Py_XDECREF(misses);
    Py_XDECREF(cache.timed);
    release(&slots, &rhdr, &shdr, &serial);
    return result;
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(exact, slots, rhdr, shdr, count, slot, serial, revision, epoch, family, turn)"
     " -> (ready, turn, misses, timed): the exact-cache hits of a batch read already, answered in place."},
    {"serve", serve, METH_VARARGS,
     "serve(recvmmsg, sendto, fd, flags, rounds, exact, slots, rhdr, shdr, size, slot, serial, revision,"
     " epoch, family, turn) -> (turn, hits, batches, timed, count, ready, sent, send_errno, misses,"
     " recv_errno): read, answer and send batches (rule 5)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "skydns._hits",
    .m_doc = "The exact-cache hits of a UDP batch answered in C (see the rules in _hits.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__hits(void)
{
    str_alive = PyUnicode_InternFromString("alive");
    str_serials = PyUnicode_InternFromString("serials");
    if (str_alive == NULL || str_serials == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MMSGHDR", (long)sizeof(struct mmsghdr)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
