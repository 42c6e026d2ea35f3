/* vlm.evaluation._ted's normalize and tree: the Python work per document around the TED programme, in C.
 *
 * Built into the same extension as _ted.c (setup.py), which registers the two functions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

PyObject *vlm_tree(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *vlm_normalize(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* ---- tree(data, pairs): ted.build_tree's walk, in C ----
 *
 * Why: after the programme itself went to C, building the trees (one Python call per node, an f-string per
 * leaf) was the largest cost left in scoring a document. This is the same walk over the same nodes, for
 * normalised data only: exact dicts with str keys, exact lists, and str leaves. Anything else returns None,
 * with `pairs` as it was, and ted.build_tree walks in Python instead, so both give one tree on all input.
 */

typedef struct {
    PyObject *labels, *lml; /* lists, as ted.build_tree's */
    PyObject *pairs;        /* list or NULL */
    PyObject *leaf;         /* "<leaf>" */
    PyObject *subtree;      /* "<subtree>" */
    PyObject *dot;          /* "." */
    int plain;              /* 0 once something outside normalised data was met */
} Walk;

static Py_ssize_t last_lml(Walk *w) {
    return PyLong_AsSsize_t(PyList_GET_ITEM(w->lml, PyList_GET_SIZE(w->lml) - 1));
}

static int append_int(PyObject *list, Py_ssize_t v) {
    PyObject *o = PyLong_FromSsize_t(v);
    if (!o) return -1;
    int r = PyList_Append(list, o);
    Py_DECREF(o);
    return r;
}

/* The scalar items as leaves; the index of the first, or -1 on error (w->plain = 0: not str). */
static Py_ssize_t leaves(Walk *w, PyObject *items, PyObject *path) {
    Py_ssize_t start = PyList_GET_SIZE(w->labels), n = PyList_GET_SIZE(items);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        if (!PyUnicode_CheckExact(item)) {
            w->plain = 0;
            return -1;
        }
        PyObject *label = PyUnicode_Concat(w->leaf, item);
        if (!label) return -1;
        int r = PyList_Append(w->labels, label);
        Py_DECREF(label);
        if (r < 0 || append_int(w->lml, start + k) < 0) return -1;
        if (w->pairs) {
            PyObject *pair = PyTuple_Pack(2, path, item);
            if (!pair) return -1;
            r = PyList_Append(w->pairs, pair);
            Py_DECREF(pair);
            if (r < 0) return -1;
        }
    }
    return start;
}

static int visit(Walk *w, PyObject *value, PyObject *label, PyObject *path);

static int visit_dict(Walk *w, PyObject *value, PyObject *path, Py_ssize_t *first) {
    Py_ssize_t pos = 0;
    PyObject *key, *child;
    while (PyDict_Next(value, &pos, &key, &child)) {
        if (!PyUnicode_CheckExact(key)) {
            w->plain = 0;
            return -1;
        }
        PyObject *at = NULL; /* the dotted path, only built when pairs are wanted */
        if (w->pairs) {
            if (PyUnicode_GET_LENGTH(path) == 0) {
                at = Py_NewRef(key);
            } else {
                PyObject *head = PyUnicode_Concat(path, w->dot);
                if (!head) return -1;
                at = PyUnicode_Concat(head, key);
                Py_DECREF(head);
                if (!at) return -1;
            }
        } else {
            at = Py_NewRef(path);
        }
        Py_INCREF(child); /* held across calls that could, in principle, run Python code */
        int r;
        if (PyList_CheckExact(child) && PyList_GET_SIZE(child) > 0 && !PyDict_Check(PyList_GET_ITEM(child, 0))) {
            /* a key over its values: its leaves, then the key node, whose leftmost leaf is the first */
            Py_ssize_t start = leaves(w, child, at);
            r = start < 0 ? -1 : PyList_Append(w->labels, key);
            if (r == 0) r = append_int(w->lml, start);
        } else {
            r = visit(w, child, key, at);
        }
        Py_DECREF(child);
        Py_DECREF(at);
        if (r < 0) return -1;
        if (*first == 0) *first = last_lml(w);
    }
    return 0;
}

static int visit(Walk *w, PyObject *value, PyObject *label, PyObject *path) {
    Py_ssize_t first = 0; /* the leftmost leaf: that of the first child, or the node itself */
    if (Py_EnterRecursiveCall(" while building a tree")) return -1;
    int r = 0;
    if (PyDict_CheckExact(value)) {
        r = visit_dict(w, value, path, &first);
    } else if (PyList_CheckExact(value)) {
        Py_ssize_t n = PyList_GET_SIZE(value);
        int all_dicts = 1;
        for (Py_ssize_t k = 0; k < n && all_dicts; k++) all_dicts = PyDict_Check(PyList_GET_ITEM(value, k));
        if (all_dicts) {
            for (Py_ssize_t k = 0; k < n && r == 0; k++) {
                PyObject *item = PyList_GET_ITEM(value, k);
                Py_INCREF(item);
                r = visit(w, item, w->subtree, path);
                Py_DECREF(item);
                if (r == 0 && first == 0) first = last_lml(w);
            }
        } else {
            first = leaves(w, value, path);
            r = first < 0 ? -1 : 0;
        }
    } else {
        w->plain = 0; /* not normalised data (or an error to raise): the Python walk decides */
        r = -1;
    }
    Py_LeaveRecursiveCall();
    if (r < 0) return -1;
    if (PyList_Append(w->labels, label) < 0) return -1;
    return append_int(w->lml, first ? first : PyList_GET_SIZE(w->labels) - 1);
}

/* The kernel's arrays of a tree (ted.arrays), in one int64 buffer: lml, keyroots, cost, label ids (key
 * names by `vocab`, -1 for leaves), leaf rows (-1 for inner nodes). Their lengths are n, len(keyroots), n, n, n. */
static PyObject *kernel_arrays(PyObject *labels, PyObject *is_leaf, PyObject *cost, PyObject *lml, PyObject *keyroots,
                               PyObject *vocab) {
    Py_ssize_t n = PyList_GET_SIZE(labels), nk = PyList_GET_SIZE(keyroots);
    PyObject *raw = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)sizeof(int64_t) * (4 * n + nk));
    if (!raw) return NULL;
    int64_t *a = (int64_t *)PyByteArray_AS_STRING(raw), *kr = a + n, *c = kr + nk, *lab = c + n, *rows = lab + n;
    int64_t leaves = 0;
    for (Py_ssize_t k = 0; k < nk; k++) kr[k] = PyLong_AsSsize_t(PyList_GET_ITEM(keyroots, k));
    for (Py_ssize_t k = 0; k < n; k++) {
        a[k] = PyLong_AsSsize_t(PyList_GET_ITEM(lml, k));
        c[k] = PyLong_AsSsize_t(PyList_GET_ITEM(cost, k));
        int leaf = PyList_GET_ITEM(is_leaf, k) == Py_True;
        rows[k] = leaf && k > 0 ? leaves : -1;
        leaves += leaf;
        lab[k] = -1;
        if (!leaf) {
            PyObject *id = PyLong_FromSsize_t(PyDict_GET_SIZE(vocab));
            PyObject *got = id ? PyDict_SetDefault(vocab, PyList_GET_ITEM(labels, k), id) : NULL;
            Py_XDECREF(id);
            if (!got) {
                Py_DECREF(raw);
                return NULL;
            }
            lab[k] = PyLong_AsSsize_t(got);
        }
    }
    return raw;
}

/* tree(data, pairs[, vocab]) -> (labels, is_leaf, texts, cost, lml, keyroots) as ted.Tree holds them, or None.
 * With a vocab dict, also (kernel_arrays's buffer, the leaf texts in postorder) at the end. */
PyObject *vlm_tree(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if ((nargs != 2 && nargs != 3) || (args[1] != Py_None && !PyList_CheckExact(args[1])) ||
        (nargs == 3 && !PyDict_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "tree() takes the data, a list of pairs or None, and a dict");
        return NULL;
    }
    PyObject *vocab = nargs == 3 ? args[2] : NULL, *raw = NULL, *leaf_texts = NULL;
    Walk w = {PyList_New(0), PyList_New(0), args[1] == Py_None ? NULL : args[1],
              PyUnicode_FromString("<leaf>"), PyUnicode_FromString("<subtree>"), PyUnicode_FromString("."), 1};
    PyObject *empty = PyUnicode_FromString(""), *root = PyUnicode_FromString("<root>"), *zero = PyLong_FromLong(0);
    PyObject *result = NULL, *is_leaf = NULL, *texts = NULL, *cost = NULL, *keyroots = NULL;
    Py_ssize_t had = w.pairs ? PyList_GET_SIZE(w.pairs) : 0;
    Py_ssize_t *last = NULL;
    if (!w.labels || !w.lml || !w.leaf || !w.subtree || !w.dot || !empty || !root || !zero) goto done;
    if (PyList_Append(w.labels, empty) < 0 || PyList_Append(w.lml, zero) < 0) goto done;
    if (visit(&w, args[0], root, empty) < 0) {
        if (w.plain) goto done; /* a real error (memory, recursion) */
        PyErr_Clear();
        if (w.pairs && PyList_SetSlice(w.pairs, had, PyList_GET_SIZE(w.pairs), NULL) < 0) goto done;
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(w.labels);
    is_leaf = PyList_New(n);
    texts = PyList_New(n);
    cost = PyList_New(n);
    last = calloc((size_t)n, sizeof(Py_ssize_t));
    if (!is_leaf || !texts || !cost || !last) goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        /* Donut's own test: a node is a leaf when its label contains "<leaf>" (a key may, too) */
        PyObject *s = PyList_GET_ITEM(w.labels, k);
        int leaf = PyUnicode_Contains(s, w.leaf);
        if (leaf < 0) goto done;
        PyObject *t = leaf ? PyUnicode_Replace(s, w.leaf, empty, -1) : Py_NewRef(s);
        if (!t) goto done;
        PyList_SET_ITEM(is_leaf, k, Py_NewRef(leaf ? Py_True : Py_False));
        PyList_SET_ITEM(texts, k, t);
        PyObject *c = PyLong_FromSsize_t(k == 0 ? 0 : leaf ? PyUnicode_GET_LENGTH(t) : 1);
        if (!c) goto done;
        PyList_SET_ITEM(cost, k, c);
        if (k > 0) last[PyLong_AsSsize_t(PyList_GET_ITEM(w.lml, k))] = k; /* lml[k] <= k, from the walk */
    }
    keyroots = PyList_New(0); /* a keyroot is the highest node with its leftmost leaf; in postorder */
    if (!keyroots) goto done;
    char *mark = calloc((size_t)n, 1);
    if (!mark) goto done;
    for (Py_ssize_t k = 1; k < n; k++)
        if (last[k]) mark[last[k]] = 1;
    int bad = 0;
    for (Py_ssize_t k = 1; k < n && !bad; k++)
        if (mark[k]) bad = append_int(keyroots, k) < 0;
    free(mark);
    if (bad) goto done;
    if (!vocab) {
        result = PyTuple_Pack(6, w.labels, is_leaf, texts, cost, w.lml, keyroots);
        goto done;
    }
    raw = kernel_arrays(w.labels, is_leaf, cost, w.lml, keyroots, vocab);
    leaf_texts = PyList_New(0);
    if (!raw || !leaf_texts) goto done;
    for (Py_ssize_t k = 1; k < n; k++)
        if (PyList_GET_ITEM(is_leaf, k) == Py_True && PyList_Append(leaf_texts, PyList_GET_ITEM(texts, k)) < 0)
            goto done;
    result = PyTuple_Pack(8, w.labels, is_leaf, texts, cost, w.lml, keyroots, raw, leaf_texts);
done:
    Py_XDECREF(raw);
    Py_XDECREF(leaf_texts);
    free(last);
    Py_XDECREF(w.labels);
    Py_XDECREF(w.lml);
    Py_XDECREF(w.leaf);
    Py_XDECREF(w.subtree);
    Py_XDECREF(w.dot);
    Py_XDECREF(empty);
    Py_XDECREF(root);
    Py_XDECREF(zero);
    Py_XDECREF(is_leaf);
    Py_XDECREF(texts);
    Py_XDECREF(cost);
    Py_XDECREF(keyroots);
    return result;
}

/* ---- normalize(data, scalars): metrics.normalize (Donut's normalize_dict), in C ----
 *
 * The same output for exact dicts with str keys and exact lists, whatever their leaves: str() and strip() are
 * Python's own (Py_UNICODE_ISSPACE is what str.strip() strips). A dict or list subclass, or a key that is not
 * a str, makes it return None, and metrics.normalize does the whole value in Python instead. `scalars` is
 * the set of types a list keeps (metrics._SCALARS), matched by exact type as there.
 */

#define FALLBACK ((PyObject *)&_Py_NoneStruct) /* a borrowed None: "let Python do it" */

static PyObject *strip(PyObject *s) { /* s.strip() of an exact str; a new reference */
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), a = 0, b = n;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    while (a < b && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, a))) a++;
    while (b > a && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, b - 1))) b--;
    return a == 0 && b == n ? Py_NewRef(s) : PyUnicode_Substring(s, a, b);
}

static PyObject *one(PyObject *item) { /* [item], taking over the reference; NULL if item is NULL */
    PyObject *list = item ? PyList_New(1) : NULL;
    if (!list) {
        Py_XDECREF(item);
        return NULL;
    }
    PyList_SET_ITEM(list, 0, item);
    return list;
}

static PyObject *str_strip(PyObject *v) { /* str(v).strip() */
    PyObject *s = PyObject_Str(v);
    if (!s) return NULL;
    PyObject *t = strip(s);
    Py_DECREF(s);
    return t;
}

typedef struct {
    Py_ssize_t len, at;
} KeyOrder;

static int by_length(const void *x, const void *y) { /* stable: ties keep the sorted order */
    const KeyOrder *a = x, *b = y;
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->at < b->at ? -1 : a->at > b->at;
}

static PyObject *norm(PyObject *data, PyObject *scalars);

static PyObject *norm_dict(PyObject *data, PyObject *scalars) {
    PyObject *keys = PyDict_Keys(data), *out = NULL, *ret = NULL;
    KeyOrder *order = NULL;
    if (!keys) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t k = 0; k < n; k++)
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(keys, k))) {
            Py_DECREF(keys);
            return FALLBACK;
        }
    /* sorted(sorted(data), key=len): by key, then stably by length */
    if (PyList_Sort(keys) < 0 || !(order = malloc(sizeof(KeyOrder) * (size_t)(n ? n : 1)))) goto fail;
    for (Py_ssize_t k = 0; k < n; k++) order[k] = (KeyOrder){PyUnicode_GET_LENGTH(PyList_GET_ITEM(keys, k)), k};
    qsort(order, (size_t)n, sizeof(KeyOrder), by_length);
    if (!(out = PyDict_New())) goto fail;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *key = PyList_GET_ITEM(keys, order[k].at);
        PyObject *value = PyDict_GetItemWithError(data, key), *got;
        if (!value) { /* the dict changed under us (it cannot, here) */
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "a dict changed while normalising");
            goto fail;
        }
        if (PyUnicode_CheckExact(value)) { /* the commonest value: what normalize(value) gives, inline */
            if (PyUnicode_GET_LENGTH(value) == 0) continue;
            if (!(got = one(strip(value)))) goto fail;
        } else {
            Py_INCREF(value);
            got = norm(value, scalars);
            Py_DECREF(value);
            if (got == FALLBACK) {
                ret = FALLBACK;
                goto fail;
            }
            if (!got) goto fail;
            Py_ssize_t size = PyDict_CheckExact(got) ? PyDict_GET_SIZE(got) : PyList_GET_SIZE(got);
            if (size == 0) {
                Py_DECREF(got);
                continue;
            }
            if (PyDict_CheckExact(got) && !(got = one(got))) goto fail; /* a dict under a key: a list of one */
        }
        int r = PyDict_SetItem(out, key, got);
        Py_DECREF(got);
        if (r < 0) goto fail;
    }
    free(order);
    Py_DECREF(keys);
    return out;
fail:
    free(order);
    Py_DECREF(keys);
    Py_XDECREF(out);
    return ret; /* NULL (an error is set), or FALLBACK */
}

static PyObject *norm_list(PyObject *data, PyObject *scalars) {
    Py_ssize_t n = PyList_GET_SIZE(data);
    int all_dicts = 1;
    for (Py_ssize_t k = 0; k < n && all_dicts; k++) all_dicts = PyDict_Check(PyList_GET_ITEM(data, k));
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyList_GET_ITEM(data, k), *got;
        Py_INCREF(item);
        if (all_dicts) {
            got = norm(item, scalars);
            if (got == FALLBACK || !got) {
                Py_DECREF(item);
                Py_DECREF(out);
                return got;
            }
            if (PyDict_GET_SIZE(got) == 0) Py_CLEAR(got); /* normalize of a dict is a dict */
        } else {
            int keep = PySet_Contains(scalars, (PyObject *)Py_TYPE(item));
            got = keep > 0 ? str_strip(item) : NULL;
            if (keep < 0 || (keep > 0 && !got)) {
                Py_DECREF(item);
                Py_DECREF(out);
                return NULL;
            }
            if (got && PyUnicode_GET_LENGTH(got) == 0) Py_CLEAR(got);
        }
        Py_DECREF(item);
        if (got) {
            int r = PyList_Append(out, got);
            Py_DECREF(got);
            if (r < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
    }
    return out;
}

/* metrics.normalize of one value: a new dict or list, NULL on error, or FALLBACK (borrowed) */
static PyObject *norm(PyObject *data, PyObject *scalars) {
    int truth = PyObject_IsTrue(data);
    if (truth < 0) return NULL;
    if (!truth) return PyDict_New();
    if ((PyDict_Check(data) && !PyDict_CheckExact(data)) || (PyList_Check(data) && !PyList_CheckExact(data)))
        return FALLBACK;
    PyObject *out;
    if (PyDict_CheckExact(data)) {
        if (Py_EnterRecursiveCall(" while normalising")) return NULL;
        out = norm_dict(data, scalars);
        Py_LeaveRecursiveCall();
    } else if (PyList_CheckExact(data)) {
        /* two levels of Python's stack per list (normalize and its generator), so the same depth fails */
        if (Py_EnterRecursiveCall(" while normalising")) return NULL;
        if (Py_EnterRecursiveCall(" while normalising")) {
            Py_LeaveRecursiveCall();
            return NULL;
        }
        out = norm_list(data, scalars);
        Py_LeaveRecursiveCall();
        Py_LeaveRecursiveCall();
    } else {
        out = one(str_strip(data));
    }
    return out;
}

PyObject *vlm_normalize(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyAnySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "normalize() takes the data and a set of scalar types");
        return NULL;
    }
    PyObject *out = norm(args[0], args[1]);
    return out == FALLBACK ? Py_NewRef(Py_None) : out;
}
