/* The Zhang-Shasha programme of vlm.evaluation.ted.zhang_shasha, in C: the same cells, band, costs and answers.
 *
 * Why C: the interpreted programme costs milliseconds per document, most of the time of an evaluation; this
 * extension loads in a millisecond and runs it in microseconds. It is built by `pip install` (setup.py,
 * optional: a machine with no C compiler falls back to the Python, with the same distances).
 *
 * zs(l1, kr1, c1, lab1, lp1, l2, kr2, c2, lab2, lp2, lev, k1, k2, dmax, imax[, lev_lo]) -> int
 * Arguments as in ted.zhang_shasha: int64 arrays of each tree in postorder (1-based, index 0 padding), the
 * leaf-by-leaf Levenshtein matrix lev (or, with lev_lo, each row's window of it), the leaves' number keys
 * k1/k2 (or empty) and the band. Its tables hold the band only, (n1 + 1) x (band width) cells. Every index
 * the loops read is checked against the array lengths first (lev's windows as they are read), so bad input
 * raises ValueError, never reads out of bounds.
 *
 * The module also holds the two per-document steps around it that cost most in Python: normalize
 * (metrics.normalize) and tree (ted.build_tree's walk, with the kernel's arrays). Both give exactly what the
 * Python gives, and hand anything but plain data back to it (tests/test_c_walk.py); they live in _walk.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INF ((int64_t)1 << 60)
#define NARR 13

static const char *NAMES[NARR] = {"l1", "kr1", "c1", "lab1", "lp1", "l2", "kr2", "c2", "lab2", "lp2",
                                  "lev", "k1", "k2"};

static int get_buffer(PyObject *obj, Py_buffer *view, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (view->itemsize != 8 || (strcmp(f, "l") != 0 && strcmp(f, "q") != 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous int64 array (got format %s)", name,
                     view->format ? view->format : "?");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Checks one tree's arrays: every index the programme reads from them lies inside its array. */
static int check_tree(const int64_t *l, Py_ssize_t nl, const int64_t *kr, Py_ssize_t nkr, Py_ssize_t nc,
                      Py_ssize_t nlab, const int64_t *lp, Py_ssize_t nlp, Py_ssize_t leaves, int side) {
    if (nl < 1 || nc != nl || nlab != nl || nlp != nl) {
        PyErr_Format(PyExc_ValueError, "tree %d: l, c, lab and lp must have one length of at least 1", side);
        return -1;
    }
    for (Py_ssize_t x = 1; x < nl; x++) {
        if (l[x] < 1 || l[x] > x || lp[x] < -1 || lp[x] >= leaves) {
            PyErr_Format(PyExc_ValueError, "tree %d: node %zd has a bad leftmost leaf or leaf row", side, x);
            return -1;
        }
    }
    for (Py_ssize_t k = 0; k < nkr; k++) {
        if (kr[k] < 1 || kr[k] >= nl) {
            PyErr_Format(PyExc_ValueError, "tree %d: keyroot %zd is out of range", side, k);
            return -1;
        }
    }
    return 0;
}

/* Where cell (x, y) of a band-sized table lives: row x holds the W columns from off(x) on, which include every
 * column of the band (-imax <= x - y <= dmax) inside 0..n2, so the tables take (n1 + 1) x W cells, not
 * (n1 + 1) x (n2 + 1): a large document against a similar one costs memory linear in its size. */
typedef struct {
    int64_t w, dmax, last; /* last: the highest first column, n2 + 1 - w */
} Band;

static inline int64_t at(const Band *b, int64_t x, int64_t y) {
    int64_t off = x - b->dmax;
    if (off > b->last) off = b->last;
    if (off < 0) off = 0;
    return x * b->w + y - off;
}

static inline int in_band(int64_t x, int64_t y, int64_t dmax, int64_t imax) { return x - y <= dmax && y - x <= imax; }

/* lev[p][q], or INF with *bad set where the caller's window (levlo) leaves q out: never read past it */
static inline int64_t lev_at(const int64_t *lev, Py_ssize_t levc, const int64_t *levlo, int64_t p, int64_t q,
                             int *bad) {
    const int64_t k = levlo ? q - levlo[p] : q;
    if (k < 0 || k >= levc) {
        *bad = 1;
        return INF;
    }
    return lev[p * levc + k];
}

static int64_t run(const int64_t *l1, const int64_t *kr1, Py_ssize_t nkr1, const int64_t *c1,
                   const int64_t *lab1, const int64_t *lp1, const int64_t *l2, const int64_t *kr2,
                   Py_ssize_t nkr2, const int64_t *c2, const int64_t *lab2, const int64_t *lp2,
                   const int64_t *lev, Py_ssize_t levc, const int64_t *levlo, const int64_t *k1, const int64_t *k2,
                   int keys, Py_ssize_t n1, Py_ssize_t n2, int64_t dmax, int64_t imax, const Band *bd, int64_t *td,
                   int64_t *fd, int64_t *pre1, int64_t *pre2, int *bad) {
    /* td and fd hold the band only (see at()). The boundary row of a keyroot pair (fd[li - 1][y]: insert tree
     * 2's nodes lj..y) and its boundary column (fd[x][lj - 1]: remove tree 1's li..x) lie outside the band,
     * and are real: sums of costs, read as differences of the prefix sums pre1 and pre2, so that no table
     * walks rows or columns that hold no cell of the band (that walk made a large document quadratic in time). */
    for (Py_ssize_t k = 0; k < (n1 + 1) * bd->w; k++) td[k] = INF;
    for (Py_ssize_t x = 1; x <= n1; x++) pre1[x] = pre1[x - 1] + c1[x];
    for (Py_ssize_t y = 1; y <= n2; y++) pre2[y] = pre2[y - 1] + c2[y];
/* the boundary row's cell y (y >= lj - 1) and the boundary column's cell x (x >= li - 1) */
#define B(y) (pre2[y] - pre2[lj - 1])
#define C(x) (pre1[x] - pre1[li - 1])
    for (Py_ssize_t a = 0; a < nkr1; a++) {
        const int64_t i = kr1[a], li = l1[i];
        for (Py_ssize_t b = 0; b < nkr2; b++) {
            const int64_t j = kr2[b], lj = l2[j];
            if (j < li - dmax || lj > i + imax) continue; /* no cell of this table lies in the band */
            /* rows before lj - imax hold no cell of the band (x + imax < lj): the table starts after them */
            for (int64_t x = li > lj - imax ? li : lj - imax; x <= i; x++) {
                if (x - dmax > j) break; /* this row and every later one lie past the band */
                const int64_t rx = at(bd, x, 0); /* cell (x, y) of fd and td: [rx + y] */
                const int64_t cx = c1[x], lx = l1[x], ax = x - 1;
                /* the row above, where the band has cells in it (x > li): row x - 1 of fd */
                const int64_t ru = at(bd, ax, 0);
                const int64_t lo = lj > x - dmax ? lj : x - dmax;
                const int64_t hi = j < x + imax ? j : x + imax;
                /* the cell above is real on the boundary row, else in the band of row x - 1: y <= ax + imax */
                const int64_t up_hi = ax == li - 1 ? hi : (hi < ax + imax ? hi : ax + imax);
                int64_t left = lo == lj ? C(x) : INF; /* boundary column, or outside the band */
                if (lx != li) { /* x's prefix is not a whole tree: only the generic cells */
                    const int64_t a2 = lx - 1, ra = at(bd, a2, 0);
                    for (int64_t y = lo; y <= hi; y++) {
                        int64_t v = (y > up_hi ? INF : ax == li - 1 ? B(y) : fd[ru + y]) + cx, t = left + c2[y];
                        if (t < v) v = t;
                        const int64_t b2 = l2[y] - 1;
                        if (b2 == lj - 1 || in_band(a2, b2, dmax, imax)) {
                            t = (b2 == lj - 1 ? C(a2) : fd[ra + b2]) + td[rx + y];
                            if (t < v) v = t;
                        }
                        if (v > INF) v = INF;
                        fd[rx + y] = v;
                        left = v;
                    }
                    continue;
                }
                for (int64_t y = lo; y <= hi; y++) {
                    int64_t v = (y > up_hi ? INF : ax == li - 1 ? B(y) : fd[ru + y]) + cx, t = left + c2[y];
                    if (t < v) v = t;
                    const int64_t ly = l2[y];
                    if (ly == lj) { /* both prefixes are whole trees */
                        const int64_t by = y - 1;
                        int64_t diag = ax == li - 1 ? B(by)
                                       : by == lj - 1 ? C(ax)
                                       : in_band(ax, by, dmax, imax) ? fd[ru + by] : INF;
                        const int64_t p = lp1[x], q = lp2[y];
                        int64_t upd; /* Donut's update cost of x into y (see ted.update_matrix) */
                        if (p >= 0 && q >= 0)
                            upd = (keys && k1[p] == k2[q]) ? 0 : lev_at(lev, levc, levlo, p, q, bad);
                        else if (p >= 0)
                            upd = 1 + cx;
                        else if (q >= 0)
                            upd = 1 + c2[y];
                        else
                            upd = lab1[x] != lab2[y];
                        t = diag + upd;
                        if (t < v) v = t;
                        if (v > INF) v = INF;
                        td[rx + y] = v;
                    } else { /* a2 = li - 1: the boundary row, always real */
                        t = B(ly - 1) + td[rx + y];
                        if (t < v) v = t;
                        if (v > INF) v = INF;
                    }
                    fd[rx + y] = v;
                    left = v;
                }
            }
        }
    }
#undef B
#undef C
    return in_band(n1, n2, dmax, imax) ? td[at(bd, n1, n2)] : INF;
}

static PyObject *zs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != NARR + 2 && nargs != NARR + 3) {
        PyErr_SetString(PyExc_TypeError, "zs() takes 13 arrays, dmax, imax and optionally lev_lo");
        return NULL;
    }
    Py_buffer v[NARR + 1];
    int got = 0;
    const int nbuf = nargs == NARR + 3 ? NARR + 1 : NARR;
    PyObject *result = NULL;
    int64_t *td = NULL, *fd = NULL, *pre1 = NULL, *pre2 = NULL;
    for (; got < nbuf; got++)
        if (get_buffer(args[got < NARR ? got : NARR + 2], &v[got], got < NARR ? NAMES[got] : "lev_lo") < 0)
            goto done;
    int64_t dmax = PyLong_AsLongLong(args[NARR]), imax = PyLong_AsLongLong(args[NARR + 1]);
    if (PyErr_Occurred()) goto done;
    const int64_t *a[NARR];
    Py_ssize_t n[NARR];
    for (int k = 0; k < NARR; k++) {
        a[k] = (const int64_t *)v[k].buf;
        n[k] = v[k].len / 8;
    }
    Py_buffer *lev = &v[10];
    if (lev->ndim != 2) {
        PyErr_SetString(PyExc_ValueError, "lev must be a 2-D array");
        goto done;
    }
    Py_ssize_t rows = lev->shape[0], cols = lev->shape[1];
    /* lev_lo (optional): lev holds, per leaf p of tree 1, the columns from leaf lev_lo[p] of tree 2 on */
    const int64_t *levlo = nbuf > NARR ? (const int64_t *)v[NARR].buf : NULL;
    if (levlo && v[NARR].len / 8 != rows) {
        PyErr_SetString(PyExc_ValueError, "lev_lo must have one entry per row of lev");
        goto done;
    }
    for (Py_ssize_t p = 0; levlo && p < rows; p++) {
        if (levlo[p] < 0 || levlo[p] >= n[5]) { /* a leaf row of tree 2: no more than its nodes */
            PyErr_SetString(PyExc_ValueError, "lev_lo must hold leaf rows of tree 2");
            goto done;
        }
    }
    int keys = n[11] > 0;
    if (keys && (n[11] < rows || (!levlo && n[12] < cols))) {
        PyErr_SetString(PyExc_ValueError, "k1 and k2 must have a key per leaf");
        goto done;
    }
    /* a leaf row of -1 marks an inner node; a tree with no leaves may still index an empty lev. With lev_lo,
     * lev's columns are a window (lev_at checks each read), and tree 2's leaf rows are bounded by its nodes
     * and, with keys, by k2. */
    Py_ssize_t leaves2 = levlo ? (keys && n[12] < n[5] ? n[12] : n[5]) : cols;
    if (check_tree(a[0], n[0], a[1], n[1], n[2], n[3], a[4], n[4], rows, 1) < 0 ||
        check_tree(a[5], n[5], a[6], n[6], n[7], n[8], a[9], n[9], leaves2, 2) < 0)
        goto done;
    Py_ssize_t n1 = n[0] - 1, n2 = n[5] - 1;
    /* a band wider than both trees is no band; clamping keeps x - dmax and x + imax far from overflow */
    const int64_t wide = (int64_t)(n1 + n2 + 1);
    dmax = dmax > wide ? wide : dmax < -wide ? -wide : dmax;
    imax = imax > wide ? wide : imax < -wide ? -wide : imax;
    /* the band's width in columns: all of them at most, one at least (an empty band reads no cell) */
    int64_t w = dmax + imax + 1;
    w = w > (int64_t)n2 + 1 ? (int64_t)n2 + 1 : w < 1 ? 1 : w;
    const Band bd = {w, dmax, (int64_t)n2 + 1 - w};
    const size_t cells = (size_t)(n1 + 1) * (size_t)w;
    td = malloc(sizeof(int64_t) * cells);
    /* fd zeroed: well-formed trees never read a cell before writing it (valgrind agrees), but malformed
     * arrays that pass the index checks would, and then still get one, repeatable answer */
    fd = calloc(cells, sizeof(int64_t));
    pre1 = calloc((size_t)n1 + 1, sizeof(int64_t));
    pre2 = calloc((size_t)n2 + 1, sizeof(int64_t));
    if (!td || !fd || !pre1 || !pre2) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t d;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    d = run(a[0], a[1], n[1], a[2], a[3], a[4], a[5], a[6], n[6], a[7], a[8], a[9], a[10], cols, levlo, a[11],
            a[12], keys, n1, n2, dmax, imax, &bd, td, fd, pre1, pre2, &bad);
    Py_END_ALLOW_THREADS
    if (bad)
        PyErr_SetString(PyExc_ValueError, "lev's window (lev_lo) leaves out a pair of leaves in the band");
    else
        result = PyLong_FromLongLong(d);
done:
    free(td);
    free(fd);
    free(pre1);
    free(pre2);
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    return result;
}


/* in _walk.c */
PyObject *vlm_tree(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *vlm_normalize(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef methods[] = {
    {"zs", (PyCFunction)(void (*)(void))zs, METH_FASTCALL, "Zhang-Shasha TED over postorder arrays, in a band."},
    {"tree", (PyCFunction)(void (*)(void))vlm_tree, METH_FASTCALL, "ted.build_tree's arrays, for normalised data."},
    {"normalize", (PyCFunction)(void (*)(void))vlm_normalize, METH_FASTCALL, "metrics.normalize, for plain data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ted", "vlm's compiled TED core.", -1, methods,
                                   NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ted(void) { return PyModule_Create(&module); }
