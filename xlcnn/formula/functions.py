"""The spreadsheet functions the evaluator supports: name -> (implementation, min args, max
args, takes references), and the check that a parsed formula calls only those, correctly.
"""

import math

import numpy as np

from .parser import Call, Err, FormulaError, walk
from .values import NAN, Rng, as_range, is_array, num

FUNCTIONS = {}  # name -> (implementation, min args, max args, takes references)


def check_ast(ast):
    for node in walk(ast):
        if isinstance(node, Call):
            spec = FUNCTIONS.get(node.name)
            if spec is None:
                raise FormulaError(f"unsupported function {node.name}")
            if not spec[1] <= len(node.args) <= spec[2]:
                raise FormulaError(f"{node.name} takes {spec[1]} to {spec[2]} arguments, "
                                   f"got {len(node.args)}")
        elif isinstance(node, Err) and node.code == "#REF!":
            raise FormulaError("reference outside the sheet grid (#REF!)")



def _dot(a, b):
    """sum(a*b, -1) for (batch, cells, K) operands, through BLAS when one side is shared."""
    (ba, ma, _), (bb, mb, _) = a.shape, b.shape
    if ba == 1 and ma == 1:
        return b @ a[0, 0]
    if bb == 1 and mb == 1:
        return a @ b[0, 0]
    if ma == 1 and bb == 1:   # a batch of inputs against a per-cell weight column (dense layer)
        return a[:, 0] @ b[0].T
    if mb == 1 and ba == 1:
        return b[:, 0] @ a[0].T
    return np.einsum("...k,...k->...", a, b)


def f_sumproduct(*args):
    rs = [as_range(a) for a in args]
    shape = rs[0].vals.shape[-2:]
    if any(r.vals.shape[-2:] != shape for r in rs):
        return NAN  # #VALUE!: arrays of different sizes
    flat = [r.zeroed() for r in rs]
    flat = [v.reshape(v.shape[:2] + (-1,)) for v in flat]
    if len(flat) == 1:
        return flat[0].sum(-1)
    if len(flat) == 2:
        return _dot(flat[0], flat[1])
    prod = flat[0]
    for v in flat[1:]:
        prod = prod * v
    return prod.sum(-1)


def _aggregate(args, kind):
    total = None
    count = 0
    for a in args:
        if isinstance(a, Rng):
            v, mk = a.vals, a.mask
            if kind == "count":
                ok = ~np.isnan(v) if mk is None else (mk & ~np.isnan(v))
                part, n = ok.sum((-2, -1)), 0
            else:
                n = v.shape[-2] * v.shape[-1] if mk is None else mk.sum((-2, -1))
                if kind in ("max", "min") and mk is None and v.shape[-2:] == (1, 1):  # MAX(0,A1):
                    part = v[..., 0, 0]  # one cell each, as itself: no reduction to allocate
                elif kind == "max":
                    part = (v if mk is None else np.where(mk, v, -np.inf)).max((-2, -1))
                elif kind == "min":
                    part = (v if mk is None else np.where(mk, v, np.inf)).min((-2, -1))
                else:
                    part = (v if mk is None else np.where(mk, v, 0.0)).sum((-2, -1))
        else:
            part, n = num(a), 1
            if kind == "count":
                part, n = np.float64(0.0) if isinstance(a, str) else (~np.isnan(part)).astype(float), 0
        count = count + n
        if total is None:
            total = part
        elif kind == "max":
            total = np.maximum(total, part)
        elif kind == "min":
            total = np.minimum(total, part)
        else:
            total = total + part
    total = np.asarray(total, np.float64)
    if kind in ("max", "min"):
        if isinstance(count, int) and count > 0 and total.flags.owndata:
            return total  # a number in every cell's arguments, and an array of its own
        return np.where(np.asarray(count) == 0, 0.0, total)  # no numbers at all: 0, as Excel
    if kind == "average":
        return total / count
    return total


def f_if(cond, yes=np.float64(0.0), no=np.float64(0.0)):
    c = num(cond)
    if np.ndim(c) != 0 and (isinstance(yes, str) or isinstance(no, str)):
        c = _uniform(c)  # a text branch: the condition must be one for all cells (else #VALUE!)
    if np.ndim(c) == 0:  # one condition for all cells: pick the branch (may be text)
        if np.isnan(c):
            return NAN
        return yes if c != 0 else no
    out = np.where(c != 0, num(yes), num(no))
    return np.where(np.isnan(c), np.nan, out)


def _uniform(x):
    """x as one number when every cell (and batch entry) holds the same one, else NaN: a result
    that would be text in some cells and a number in others is not represented (#VALUE!)."""
    flat = np.ravel(x)
    if flat.size and not np.isnan(flat[0]) and (flat == flat[0]).all():
        return np.float64(flat[0])
    return NAN


_erf_object = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    x = num(x)
    if np.ndim(x) == 0:
        return np.float64(math.erf(x)) if not np.isnan(x) else NAN
    return _erf_object(x).astype(np.float64)  # libm's erf, exact to the last bit or so


def f_erf(lower, upper=None):
    return _erf(lower) if upper is None else _erf(upper) - _erf(lower)


def f_round(x, digits=np.float64(0.0), mode="half"):
    x, d = num(x), np.trunc(num(digits))
    scale = np.power(10.0, d)
    y = np.abs(x) * scale
    if mode == "half":  # half away from zero; the nudge absorbs binary noise (2.675 -> 2.68)
        y = np.floor(y + 0.5 + y * 4 * np.finfo(float).eps)
    elif mode == "up":
        y = np.ceil(y - y * 4 * np.finfo(float).eps)
    else:
        y = np.floor(y + y * 4 * np.finfo(float).eps)
    return np.sign(x) * y / scale


def f_match(value, rng, mode=np.float64(1.0)):
    x = num(value)
    r = as_range(rng)
    h, w = r.vals.shape[-2:]
    if h != 1 and w != 1:
        return NAN  # #N/A: MATCH needs one row or one column
    v = r.zeroed() if r.mask is None else np.where(r.mask, r.vals, np.nan)
    v = v.reshape(v.shape[:2] + (-1,))
    xx = np.asarray(x)[..., None] if np.ndim(x) else x
    mode = num(mode)
    if np.ndim(mode) != 0:
        return NAN
    if mode == 0:
        hit = v == xx
        pos = hit.argmax(-1) + 1.0
        return np.where(hit.any(-1), pos, np.nan)
    # approximate modes assume sorted data, like Excel: count of entries <= x (or >= x)
    pos = ((v <= xx) if mode > 0 else (v >= xx)).sum(-1).astype(float)
    return np.where(pos == 0, np.nan, pos)


def f_index(rng, row, col=None):
    """INDEX(range, row[, col]), 1-based.  One number is picked per cell (the row and column
    may differ from cell to cell); an index past the range is #REF! (NaN).  Row 0 (or column 0)
    gives the whole column (row) as a range, as SUMPRODUCT(x, INDEX(W, 0, k)) reads it; a single
    index into a one-row or one-column range counts along it."""
    r = as_range(rng)
    vals = r.vals
    b, m, h, w = vals.shape
    i = np.floor(num(row))
    if col is None:  # one index into a single row or column
        if h != 1 and w != 1:
            return NAN  # #REF!: a 2-D range needs a row and a column
        if w == 1:
            i, j = i, np.float64(1.0)
        else:
            i, j = np.float64(1.0), i
    else:
        j = np.floor(num(col))
    if np.ndim(i) == 0 and i == 0 or np.ndim(j) == 0 and j == 0:
        return _index_line(r, i, j)
    bad = (i < 1) | (i > h) | (j < 1) | (j > w) | np.isnan(i) | np.isnan(j)
    k = np.where(bad, 0, (np.where(bad, 1, i) - 1) * w + (np.where(bad, 1, j) - 1))
    n = h * w
    kk = np.asarray(k).astype(np.int64)
    flat = vals.reshape(b, m, n)
    shape = np.broadcast_shapes((b, m), np.shape(kk))
    picked = np.take_along_axis(np.broadcast_to(flat, shape + (n,)),
                                np.broadcast_to(kk, shape)[..., None], -1)[..., 0]
    return np.where(bad, np.nan, picked)


def _index_line(r, i, j):
    """INDEX with row 0 or column 0: the whole column j (or row i) of r as a range; the other
    index must be the same for every cell (a per-cell column would need a ragged gather)."""
    h, w = r.vals.shape[-2:]
    whole_col = np.ndim(i) == 0 and i == 0
    other = j if whole_col else i
    other = np.float64(other) if np.ndim(other) == 0 else _uniform(other)
    if other == 0:
        return r  # INDEX(range, 0, 0): the range itself
    if np.isnan(other) or other < 1 or other > (w if whole_col else h):
        return NAN  # #REF!
    k = int(other) - 1
    cut = (Ellipsis, slice(None), slice(k, k + 1)) if whole_col else (Ellipsis, slice(k, k + 1), slice(None))
    return Rng(r.vals[cut], None if r.mask is None else r.mask[cut])


def f_choose(index, *options):
    """CHOOSE(k, v1, ..., vn): the k-th value, reference or range (k truncated); k outside 1..n
    is #VALUE!.  k may differ from cell to cell when the options are numbers, single cells or
    ranges of one shape."""
    k = np.floor(num(index))
    n = len(options)
    if np.ndim(k) != 0:
        u = _uniform(k)
        if not np.isnan(u):
            k = u
    if np.ndim(k) == 0:
        if np.isnan(k) or not 1 <= k <= n:
            return NAN
        return options[int(k) - 1]
    # per-cell choice: every option as a range of one shape, picked cell by cell
    if any(isinstance(o, str) for o in options):
        return NAN
    rs = [as_range(o) for o in options]
    shape = rs[0].vals.shape[-2:]
    if any(x.vals.shape[-2:] != shape for x in rs):
        return NAN
    lead = np.broadcast_shapes(np.shape(k), *(x.vals.shape[:2] for x in rs))
    stacked = np.stack([np.broadcast_to(x.vals, lead + shape) for x in rs])
    pick = np.where((k >= 1) & (k <= n), k - 1, 0).astype(np.int64)
    pick = np.broadcast_to(pick, lead)
    vals = np.take_along_axis(stacked, pick[None, ..., None, None], 0)[0]
    vals = np.where(((k >= 1) & (k <= n))[..., None, None] if np.ndim(k) else True, vals, np.nan)
    if all(x.mask is None for x in rs):
        mask = None
    else:
        cells = lead[1]
        masks = np.stack([np.broadcast_to(np.ones((1,) + shape, bool) if x.mask is None else x.mask,
                                          (cells,) + shape) for x in rs])
        pm = np.broadcast_to(pick, lead)[0]  # the mask has no batch axis: the first entry's choice
        mask = np.take_along_axis(masks, pm[None, :, None, None], 0)[0]
    if tuple(shape) == (1, 1) and mask is None:
        return vals[..., 0, 0]
    return Rng(vals, mask)


def f_isnumber(x):
    """ISNUMBER: a cell holding a number (not empty, text or an error), or a number value."""
    if isinstance(x, str):
        return np.float64(0.0)
    if isinstance(x, Rng):
        if x.vals.shape[-2:] != (1, 1):
            return NAN
        v = x.vals[..., 0, 0]
        ok = ~np.isnan(v)
        if x.mask is not None:
            ok = ok & x.mask[..., 0, 0]
        return ok.astype(np.float64)
    v = num(x)
    return (~np.isnan(v)).astype(np.float64) if np.ndim(v) else np.float64(not np.isnan(v))


def _unary(fn):
    return lambda x: Rng(fn(x.vals), None) if is_array(x) else fn(num(x))


def f_log(x, base=np.float64(10.0)):
    return np.log(num(x)) / np.log(num(base))


def f_and(*args):
    out = np.float64(1.0)
    for a in args:
        out = out * (num(a) != 0)
    return np.asarray(out, np.float64)[()]


def f_or(*args):
    out = np.float64(0.0)
    for a in args:
        out = np.maximum(out, num(a) != 0)
    return np.asarray(out, np.float64)[()]


_INF = 255
FUNCTIONS.update({
    "SUMPRODUCT": (f_sumproduct, 1, _INF, True),
    "SUM": (lambda *a: _aggregate(a, "sum"), 1, _INF, True),
    "MAX": (lambda *a: _aggregate(a, "max"), 1, _INF, True),
    "MIN": (lambda *a: _aggregate(a, "min"), 1, _INF, True),
    "AVERAGE": (lambda *a: _aggregate(a, "average"), 1, _INF, True),
    "COUNT": (lambda *a: _aggregate(a, "count"), 1, _INF, True),
    "EXP": (_unary(np.exp), 1, 1, False),
    "LN": (_unary(np.log), 1, 1, False),
    "LOG10": (_unary(np.log10), 1, 1, False),
    "LOG": (f_log, 1, 2, False),
    "TANH": (_unary(np.tanh), 1, 1, False),
    "SQRT": (_unary(np.sqrt), 1, 1, False),
    "ABS": (_unary(np.abs), 1, 1, False),
    "INT": (_unary(np.floor), 1, 1, False),
    "SIGN": (_unary(np.sign), 1, 1, False),
    "POWER": (lambda a, b: np.power(num(a), num(b)), 2, 2, False),
    "MOD": (lambda a, b: np.mod(num(a), num(b)), 2, 2, False),
    "ROUND": (f_round, 2, 2, False),
    "ROUNDUP": (lambda x, d: f_round(x, d, "up"), 2, 2, False),
    "ROUNDDOWN": (lambda x, d: f_round(x, d, "down"), 2, 2, False),
    "ERF": (f_erf, 1, 2, False),
    "ERF.PRECISE": (f_erf, 1, 1, False),
    "IF": (f_if, 2, 3, False),
    "AND": (f_and, 1, _INF, False),
    "OR": (f_or, 1, _INF, False),
    "NOT": (lambda x: np.asarray(num(x) == 0, np.float64)[()], 1, 1, False),
    "MATCH": (f_match, 2, 3, True),
    "INDEX": (f_index, 2, 3, True),
    "CHOOSE": (f_choose, 2, 255, True),
    "ISNUMBER": (f_isnumber, 1, 1, True),
})
