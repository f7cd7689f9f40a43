"""Recalculate every formula of a Book with NumPy, independently of the code that wrote them.

Formulas that differ only in the numbers of their cell references (a SUMPRODUCT copied over a
grid, a pooling MAX, the flatten copies) form a *class*: the formula is parsed once and evaluated
for all of the class's cells in one vectorised step.  Each reference keeps, per cell, the row and
column it points at (one int when all cells share it, as absolute references do), so a single
reference becomes a gather and a range a gathered block of shape (cells, h, w).  This covers the
R1C1-identical grids and also strided reads such as pooling, where cell (y, x) reads (2y, 2x).

Classes run in dependency order (Tarjan on the class graph).  Classes that may read each other,
or themselves, are ordered cell by cell, in levels that are still evaluated as vectors; a cycle of
cells is a FormulaError naming one of them.

Every value carries two leading axes, (batch, cells), each of length 1 when it does not vary, so
broadcasting lines up constants, absolute references, per-cell values and a batch of inputs
without special cases.  Errors are IEEE values: #DIV/0! is inf or NaN, #NUM! inf or NaN, #N/A and
#VALUE! NaN.  Text exists only as constants and as whole-class text results.
"""

import itertools
import math
import operator
import re
import time
from typing import NamedTuple

import numpy as np

from .grouping import group_formulas
from .reader import MAX_DENSE_CELLS
from .parser import (MAX_COLS, MAX_ROWS, Binary, Bool, Call, Err, FormulaError, Missing, Num, Range,
                     Ref, Str, Unary, cell_name, parse, walk)



# =========================================================================== compiling

class _Slot:
    """Where reference number j of a class's formula points, for each of the class's cells:
    an int when it is the same cell for all of them (absolute references, mostly), else an
    int64 array of the cells' own rows/columns."""
    __slots__ = ("sheet", "row", "col")

    def __init__(self, sheet, row, col):
        self.sheet, self.row, self.col = sheet, row, col


class _Class:
    """Cells of one sheet sharing one formula skeleton and the same range shapes."""
    __slots__ = ("id", "sheet", "hosts", "rows", "cols", "ast", "slots", "ranges", "gather")

    def __init__(self, cid, sheet, hosts, rows, cols, ast, slots, ranges):
        # sheet: the one sheet all cells are on, or None and hosts: each cell's sheet
        self.id, self.sheet, self.hosts, self.rows, self.cols = cid, sheet, hosts, rows, cols
        self.gather = {}  # range slot -> index arrays, built on first evaluation
        self.ast, self.slots = ast, slots
        # first slot of a Range -> (h, w, slot giving its top row, slot giving its left col, last slot)
        self.ranges = ranges


class _Program:
    """Everything about a workbook that does not depend on the inputs."""

    def __init__(self):
        self.classes = []
        self.steps = []        # (class id, None: all its cells | index array: some of them)
        self.shapes = []       # per sheet (rows, cols) of the dense arrays
        self.base = []         # per sheet float64 constants (empty 0, text NaN)
        self.isnum = []        # per sheet bool: holds a number (constant or formula)
        self.writer = []       # per sheet int32 class id of each formula cell, -1 elsewhere; or None
        self.n_formulas = 0
        self.n_constants = 0


_FUNCTIONS = {}  # name -> (implementation, min args, max args, takes references)


def _check_ast(ast):
    for node in walk(ast):
        if isinstance(node, Call):
            spec = _FUNCTIONS.get(node.name)
            if spec is None:
                raise FormulaError(f"unsupported function {node.name}")
            if not spec[1] <= len(node.args) <= spec[2]:
                raise FormulaError(f"{node.name} takes {spec[1]} to {spec[2]} arguments, "
                                   f"got {len(node.args)}")
        elif isinstance(node, Err) and node.code == "#REF!":
            raise FormulaError("reference outside the sheet grid (#REF!)")


def _compile(book):
    prog = _Program()
    sheets = book.sheets
    lower = {s.lower(): i for i, s in enumerate(sheets)}
    shapes = [list(book.shape(s)) for s in sheets]
    for s, (nr, nc) in enumerate(shapes):
        if nr * nc > MAX_DENSE_CELLS:
            raise FormulaError(f"sheet {sheets[s]!r} spans {nr}x{nc} cells, too many to evaluate")
    parsed = {}  # skeleton -> AST, shared across sheets (conv channels repeat one skeleton)
    classes = prog.classes
    texts, host = [], []
    for s, sheet in enumerate(sheets):
        frows, fcols, ftexts = book._fcells[sheet]
        texts += ftexts
        host.append(np.stack([np.full(len(ftexts), s), frows, fcols]).reshape(3, -1))
    host = np.concatenate(host, axis=1).astype(np.int64) if host else np.zeros((3, 0), np.int64)
    prog.n_formulas = len(texts)
    for key, chunks in group_formulas(texts).items():
        cells = np.concatenate([np.asarray(c[0], np.int64) for c in chunks])
        R_all = np.concatenate([c[1] for c in chunks])
        C_all = np.concatenate([c[2] for c in chunks])
        on = host[0, cells]
        first = cell_name(sheets[int(on[0])], int(host[1, cells[0]]), int(host[2, cells[0]]))
        try:
            ast = parsed.get(key)
            if ast is None:
                ast = parsed[key] = parse(list(key))
                _check_ast(ast)
        except FormulaError as e:
            raise FormulaError(e.reason, first) from None
        own_sheet = any(isinstance(n, Ref) and n.sheet is None for n in walk(ast))
        if (on == on[0]).all() or not own_sheet:
            # every reference names its sheet: one class may write to many sheets (the same
            # convolution formula on each output channel's sheet)
            per_sheet = [np.arange(len(cells))]
        else:  # references to the formula's own sheet: classes are per sheet
            order = np.argsort(on, kind="stable")
            per_sheet = np.split(order, np.flatnonzero(np.diff(on[order])) + 1)
        for sel in per_sheet:
            idx, R, C = cells[sel], R_all[sel], C_all[sel]
            hosts = host[0, idx]
            s = int(hosts[0])
            sheet = sheets[s]
            hr, hc = host[1, idx], host[2, idx]
            where = cell_name(sheet, int(hr[0]), int(hc[0]))
            refs = {n.slot: n for n in walk(ast) if isinstance(n, Ref)}
            pairs = [(n.first.slot, n.last.slot) for n in walk(ast) if isinstance(n, Range)]
            k = R.shape[1]
            slot_sheet = []
            for j in range(k):
                name = refs[j].sheet
                t = s if name is None else lower.get(name.lower())
                if t is None:
                    raise FormulaError(f"unknown sheet {name!r}", where)
                slot_sheet.append(t)
            if k:
                bad = (R >= MAX_ROWS) | (C >= MAX_COLS)
                if bad.any():
                    i = int(np.flatnonzero(bad.any(1))[0])
                    raise FormulaError("reference outside the sheet grid",
                                       cell_name(sheet, int(hr[i]), int(hc[i])))
                for j, t in enumerate(slot_sheet):
                    shapes[t][0] = max(shapes[t][0], int(R[:, j].max()) + 1)
                    shapes[t][1] = max(shapes[t][1], int(C[:, j].max()) + 1)
                    if shapes[t][0] * shapes[t][1] > MAX_DENSE_CELLS:
                        raise FormulaError(f"references make sheet {sheets[t]!r} span "
                                           f"{shapes[t][0]}x{shapes[t][1]} cells, too many to "
                                           "evaluate", where)
            # Cells of a skeleton split only where their ranges differ in shape (clipped
            # windows at a border; $B$4:B4 growing down a column).  Offsets may differ: a
            # pooling layer reads (2y, 2x) from cell (y, x), so coordinates are kept per cell.
            if pairs and len(idx) > 1:
                E = np.concatenate([np.stack([R[:, b] - R[:, a], C[:, b] - C[:, a]], 1)
                                    for a, b in pairs], axis=1)
            if not pairs or len(idx) == 1 or (E == E[0]).all():
                members = [np.arange(len(idx))]
            else:
                _, inv = row_ids(E)
                order = np.argsort(inv, kind="stable")
                members = np.split(order, np.flatnonzero(np.diff(inv[order])) + 1)
            for m in members:
                Rm, Cm = R[m], C[m]
                same_r = (Rm == Rm[0]).all(0)
                same_c = (Cm == Cm[0]).all(0)
                slots = [_Slot(slot_sheet[j],
                               int(Rm[0, j]) if same_r[j] else np.ascontiguousarray(Rm[:, j]),
                               int(Cm[0, j]) if same_c[j] else np.ascontiguousarray(Cm[:, j]))
                         for j in range(k)]
                rep = m[0]
                ranges = {}
                for a, b in pairs:
                    dr, dc = int(R[rep, b] - R[rep, a]), int(C[rep, b] - C[rep, a])
                    ranges[a] = (abs(dr) + 1, abs(dc) + 1, a if dr >= 0 else b, a if dc >= 0 else b, b)
                hm = hosts[m]
                one = bool((hm == hm[0]).all())
                classes.append(_Class(len(classes), s if one else None, None if one else hm,
                                      hr[m], hc[m], _fuse(ast), slots, ranges))
    prog.shapes = [tuple(x) for x in shapes]
    _build_base(book, prog)
    _order(book, prog)
    return prog


def _build_base(book, prog):
    for s, sheet in enumerate(book.sheets):
        shape = prog.shapes[s]
        base = np.zeros(shape)
        isnum = np.zeros(shape, bool)
        rows, cols, vals = book._num[sheet]
        base[rows, cols] = vals
        isnum[rows, cols] = True
        prog.n_constants += len(rows)
        errors = book._errors[sheet]
        for (r, c), v in book._other[sheet].items():
            prog.n_constants += 1
            base[r, c] = float(v) if isinstance(v, bool) else math.nan
            isnum[r, c] = (r, c) in errors  # errors propagate through SUM like numbers do
        frows, fcols, _ = book._fcells[sheet]
        isnum[frows, fcols] = True
        prog.base.append(base)
        prog.isnum.append(isnum)
        prog.writer.append(np.full(shape, -1, np.int32) if len(frows) else None)
    for cls in prog.classes:
        for t, _, rows, cols in _by_sheet(cls, None):
            prog.writer[t][rows, cols] = cls.id


def row_ids(K):
    """(index of one row per distinct row, id of each row's distinct row) of an int array
    (n, m).  Rows compare after subtracting the first row (same distinctness) and dropping
    repeated columns, so a key of many columns that move together costs one column."""
    n = len(K)
    D = K - K[0]
    D = D[:, (D != 0).any(0)]
    if D.shape[1] == 0:
        return np.zeros(1, np.int64), np.zeros(n, np.int64)
    if D.shape[1] > 1:  # distinct columns: fingerprint, then check the dropped ones exactly
        finger = np.random.default_rng(0).random(n) @ D
        _, keep, which = np.unique(finger, return_index=True, return_inverse=True)
        same = (D == D[:, keep[which.ravel()]]).all(0)
        D = D[:, np.union1d(keep, np.flatnonzero(~same))]
    code = np.zeros(n, np.int64)
    for col in D.T:
        _, col = np.unique(col, return_inverse=True)
        code = code * (int(col.max()) + 1) + col.ravel()
        if code.max() > (1 << 40):  # keep the mixed-radix code small
            _, code = np.unique(code, return_inverse=True)
            code = code.ravel()
    _, first, inv = np.unique(code, return_index=True, return_inverse=True)
    return first, inv.ravel()


def _by_sheet(cls, sub):
    """[(sheet, positions within the class's cells ``sub`` or None for all, rows, cols)]: where
    the cells of a class (or the part ``sub`` of it) are, one entry per sheet written."""
    if sub is None and "parts" in cls.gather:
        return cls.gather["parts"]
    rows, cols = (cls.rows, cls.cols) if sub is None else (cls.rows[sub], cls.cols[sub])
    if cls.hosts is None:
        return [(cls.sheet, None, rows, cols)]
    if sub is None:
        cls.gather["parts"] = _by_sheet(cls, np.arange(len(rows)))
        return cls.gather["parts"]
    hosts = cls.hosts if sub is None else cls.hosts[sub]
    order = np.argsort(hosts, kind="stable")
    cuts = np.flatnonzero(np.diff(hosts[order])) + 1
    return [(int(hosts[g[0]]), g, rows[g], cols[g]) for g in np.split(order, cuts)]


# =========================================================================== ordering

def _at(v, sub):
    """A slot coordinate for the cells ``sub`` of its class (None: all of them)."""
    return v if sub is None or isinstance(v, int) else v[sub]


def _reads(cls):
    """(sheet, row index, col index) of every read of a class, as arrays that broadcast to
    (cells,) for single references and (cells, h, w) for ranges."""
    in_range = set()
    for first, (h, w, jr, jc, last) in cls.ranges.items():
        top, left = cls.slots[jr].row, cls.slots[jc].col
        ri = np.add.outer(top, np.arange(h)).reshape(-1, h, 1)
        ci = np.add.outer(left, np.arange(w)).reshape(-1, 1, w)
        yield cls.slots[first].sheet, ri, ci
        in_range.update((first, last))
    for j, slot in enumerate(cls.slots):
        if j not in in_range:
            yield slot.sheet, np.asarray(slot.row), np.asarray(slot.col)


def _class_deps(prog, cls):
    """Classes whose cells ``cls`` may read: exact for single references, everything in the
    bounding box of a range's cells (an over-estimate can only cause a needless cell-level
    sort, never a wrong order)."""
    found = []
    in_range = set()
    for first, (h, w, jr, jc, last) in cls.ranges.items():
        in_range.update((first, last))
        W = prog.writer[cls.slots[first].sheet]
        if W is not None:
            top, left = cls.slots[jr].row, cls.slots[jc].col
            r0, r1 = (top, top) if isinstance(top, int) else (int(top.min()), int(top.max()))
            c0, c1 = (left, left) if isinstance(left, int) else (int(left.min()), int(left.max()))
            box = W[r0:r1 + h, c0:c1 + w]
            lo, hi = box.min(), box.max()
            found.append(np.array([hi]) if lo == hi else box.ravel())  # usually one writer
    for j, slot in enumerate(cls.slots):
        W = prog.writer[slot.sheet]
        if W is not None and j not in in_range:
            found.append(np.ravel(W[slot.row, slot.col]))
    if not found:
        return np.zeros(0, np.int64)
    ids = np.concatenate(found)
    return np.unique(ids[ids >= 0])


def _sccs(n, deps):
    """Tarjan's strongly connected components, iteratively; dependencies come out first."""
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack, out = [], []
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            succ = deps[v]
            while i < len(succ):
                w = int(succ[i])
                i += 1
                if index[w] < 0:
                    work.append((v, i))
                    work.append((w, 0))
                    break
                if on_stack[w]:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
    return out


def _order(book, prog):
    deps = [_class_deps(prog, c) for c in prog.classes]
    for comp in _sccs(len(deps), deps):
        c = comp[0]
        if len(comp) == 1 and not np.isin(c, deps[c]).any():
            prog.steps.append((c, None))
        else:
            prog.steps.extend(_cell_levels(book, prog, comp))


def _cell_levels(book, prog, comp):
    """Order the cells of classes that (may) depend on each other by exact cell dependencies,
    as levels evaluated one after another; raise on a true cycle."""
    classes = [prog.classes[c] for c in comp]
    sizes = [len(c.rows) for c in classes]
    start = np.cumsum([0] + sizes)
    n = int(start[-1])
    cell_map = {}
    for cls, s0 in zip(classes, start):
        for t, sel, rows, cols in _by_sheet(cls, None):
            m = cell_map.get(t)
            if m is None:
                m = cell_map[t] = np.full(prog.shapes[t], -1, np.int64)
            ids = np.arange(s0, s0 + len(cls.rows))
            m[rows, cols] = ids if sel is None else ids[sel]
    src, dst = [], []
    for cls, s0 in zip(classes, start):
        host = np.arange(s0, s0 + len(cls.rows))
        for t, ri, ci in _reads(cls):
            if t not in cell_map:
                continue
            ids = np.asarray(cell_map[t][ri, ci])
            ids = ids.reshape(ids.shape[0], -1) if ids.ndim else ids.reshape(1, 1)
            ids = np.broadcast_to(ids, (len(host), ids.shape[1]))
            h = np.broadcast_to(host[:, None], ids.shape)
            keep = ids >= 0
            src.append(h[keep])
            dst.append(ids[keep])
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    pending = np.bincount(src, minlength=n)  # unresolved dependencies of each cell
    order = np.argsort(dst, kind="stable")
    dependents = src[order]
    bounds = np.searchsorted(dst[order], np.arange(n + 1))
    owner = np.repeat(np.arange(len(classes)), sizes)
    local = np.arange(n) - start[owner]
    frontier = np.flatnonzero(pending == 0)
    done = 0
    steps = []
    while frontier.size:
        done += frontier.size
        for k in np.unique(owner[frontier]):
            sel = frontier[owner[frontier] == k]
            steps.append((comp[k], local[sel]))
        counts = bounds[frontier + 1] - bounds[frontier]
        if counts.sum() == 0:
            break
        pos = np.repeat(bounds[frontier] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        hit = dependents[pos]
        np.subtract.at(pending, hit, 1)
        frontier = np.unique(hit[pending[hit] == 0])
    if done < n:
        stuck = pending > 0
        cell = int(np.flatnonzero(stuck)[0])
        fwd = np.argsort(src, kind="stable")
        fsrc, fdst = src[fwd], dst[fwd]
        seen = set()
        while cell not in seen:  # walk unresolved dependencies until one repeats: on a cycle
            seen.add(cell)
            lo, hi = np.searchsorted(fsrc, [cell, cell + 1])
            nxt = fdst[lo:hi]
            cell = int(nxt[stuck[nxt]][0])
        k = int(owner[cell])
        cls = classes[k]
        i = int(local[cell])
        host = cls.sheet if cls.hosts is None else int(cls.hosts[i])
        name = cell_name(book.sheets[host], int(cls.rows[i]), int(cls.cols[i]))
        raise FormulaError("circular reference", name)
    return steps


# =========================================================================== values

class _Rng:
    """A range's values (batch, cells, h, w) and which of them are numbers (None: all are)."""
    __slots__ = ("vals", "mask")

    def __init__(self, vals, mask):
        self.vals, self.mask = vals, mask

    def zeroed(self):
        """Values with non-numbers as 0 (how SUMPRODUCT sees text and empty cells)."""
        return self.vals if self.mask is None else np.where(self.mask, self.vals, 0.0)


_NAN = np.float64(np.nan)


class _Ctx:
    """One class (or part of it) being evaluated."""
    __slots__ = ("cls", "sub", "V", "M")

    def __init__(self, cls, sub, V, M):
        self.cls, self.sub, self.V, self.M = cls, sub, V, M


def _ev(node, cx):
    return _EVAL[type(node)](node, cx)


def _num(x):
    """Numeric view of a value: np.float64 or an array (batch, cells)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, _Rng):
        if x.vals.shape[-2:] == (1, 1):
            return x.vals[..., 0, 0]
        return np.full(x.vals.shape[:2], np.nan)  # a multi-cell range as one value: #VALUE!
    if isinstance(x, str):
        try:
            return np.float64(x)
        except ValueError:
            return _NAN
    return np.float64(x)


def _ev_ref(node, cx):
    slot = cx.cls.slots[node.slot]
    r, c = _at(slot.row, cx.sub), _at(slot.col, cx.sub)
    out = cx.V[slot.sheet][:, r, c]
    return out if out.ndim == 2 else out[:, None]


def _ev_range(node, cx):
    cls = cx.cls
    h, w, jr, jc, _ = cls.ranges[node.first.slot]
    t = cls.slots[node.first.slot].sheet
    top, left = _at(cls.slots[jr].row, cx.sub), _at(cls.slots[jc].col, cx.sub)
    V, M = cx.V[t], cx.M[t]
    if isinstance(top, int) and isinstance(left, int):
        vals = V[:, top:top + h, left:left + w][:, None]
        mk = M[top:top + h, left:left + w]
        return _Rng(vals, None if mk.all() else mk[None])
    index = cls.gather.get(node.first.slot) if cx.sub is None else None
    if index is None:  # gather indices (cells, h, 1) x (cells, 1, w), and their bounding box
        ri = np.add.outer(top, np.arange(h)).reshape(-1, h, 1)
        ci = np.add.outer(left, np.arange(w)).reshape(-1, 1, w)
        index = (ri, ci, slice(ri.min(), ri.max() + 1), slice(ci.min(), ci.max() + 1))
        if cx.sub is None:
            cls.gather[node.first.slot] = index
    ri, ci, box_r, box_c = index
    vals = V[:, ri, ci]
    # Usually every cell read is a number; check the bounding box before gathering a mask.
    if M[box_r, box_c].all():
        return _Rng(vals, None)
    return _Rng(vals, M[ri, ci])


def _ev_ref_as_range(node, cx):
    """A single reference handed to SUM/MAX/...: a 1x1 range, so empty cells are skipped."""
    slot = cx.cls.slots[node.slot]
    r, c = _at(slot.row, cx.sub), _at(slot.col, cx.sub)
    vals = cx.V[slot.sheet][:, r, c]
    mk = cx.M[slot.sheet][r, c]
    vals = vals.reshape(vals.shape[0], -1, 1, 1)
    return _Rng(vals, None if np.all(mk) else np.reshape(mk, (-1, 1, 1)))


def _ev_unary(node, cx):
    x = _ev(node.arg, cx)
    return _Rng(-x.vals, None) if _is_array(x) else -_num(x)


def _is_array(x):
    """A multi-cell range or the result of arithmetic on one, e.g. (A1:A3>0)*B1:B3."""
    return isinstance(x, _Rng) and x.vals.shape[-2:] != (1, 1)


def _array_op(fn, a, b):
    """Element-wise operator on arrays (batch, cells, h, w); scalars broadcast; empty cells
    are 0, text NaN (#VALUE!)."""
    av = a.vals if isinstance(a, _Rng) else _num(a)
    bv = b.vals if isinstance(b, _Rng) else _num(b)
    av = av[..., None, None] if isinstance(av, np.ndarray) and not isinstance(a, _Rng) else av
    bv = bv[..., None, None] if isinstance(bv, np.ndarray) and not isinstance(b, _Rng) else bv
    try:
        out = fn(av, bv)
    except ValueError:  # arrays of different shapes
        return _NAN
    if fn in _CMP.values():
        out = np.where(np.isnan(av) | np.isnan(bv), np.nan, out)
    return _Rng(np.asarray(out, np.float64), None)


def _text_of(x):
    """Excel's text for a constant in '&' (general number format)."""
    if isinstance(x, str):
        return x
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".15g")


def _compare(op, a, b):
    """Comparison of constants where one side is text: numbers < text, text case-insensitive."""
    ka = (1, a.lower()) if isinstance(a, str) else (0, float(a))
    kb = (1, b.lower()) if isinstance(b, str) else (0, float(b))
    if ka[0] != kb[0]:
        ka, kb = (ka[0], 0), (kb[0], 0)
    return np.float64({"=": ka == kb, "<>": ka != kb, "<": ka < kb, ">": ka > kb,
                       "<=": ka <= kb, ">=": ka >= kb}[op])


_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power}
_CMP = {"=": np.equal, "<>": np.not_equal, "<": np.less, ">": np.greater,
        "<=": np.less_equal, ">=": np.greater_equal}


def _ev_binary(node, cx):
    a = _ev(node.left, cx)
    b = _ev(node.right, cx)
    op = node.op
    if _is_array(a) or _is_array(b):
        if op == "&" or isinstance(a, str) or isinstance(b, str):
            return _NAN  # text arrays are not supported
        return _array_op(_CMP.get(op) or _ARITH[op], a, b)
    if op == "&":
        if isinstance(a, (str, np.floating, float)) and isinstance(b, (str, np.floating, float)):
            return _text_of(a) + _text_of(b)
        return np.full(np.broadcast_shapes(np.shape(_num(a)), np.shape(_num(b))), np.nan)
    if op in _CMP:
        if isinstance(a, str) or isinstance(b, str):
            if np.ndim(_num(a)) == 0 and np.ndim(_num(b)) == 0:
                return _compare(op, a, b)
            return np.full(np.broadcast_shapes(np.shape(_num(a)), np.shape(_num(b))), np.nan)
        a, b = _num(a), _num(b)
        out = _CMP[op](a, b)
        bad = np.isnan(a) | np.isnan(b)  # an error compared is still an error
        return np.where(bad, np.nan, out) if np.any(bad) else np.asarray(out, np.float64)[()]
    return _ARITH[op](_num(a), _num(b))


def _ev_call(node, cx):
    fn, _, _, takes_refs = _FUNCTIONS[node.name]
    if takes_refs:
        args = [_ev_ref_as_range(a, cx) if isinstance(a, Ref) else _ev(a, cx) for a in node.args]
    else:
        args = [_ev(a, cx) for a in node.args]
    return fn(*args)


class Dot(NamedTuple):
    """A sum of two-range SUMPRODUCTs and other terms, ``calls[0] + calls[1] + ... + rest``:
    evaluated as one dot product over the concatenated ranges (one matrix product where the
    cells factor into (first range's position) x (second range's position), as a convolution's
    cells do: window x output channel)."""
    calls: tuple
    rest: tuple


def _terms(node, out):
    if isinstance(node, Binary) and node.op == "+":
        _terms(node.left, out)
        _terms(node.right, out)
    else:
        out.append(node)
    return out


def _fuse(ast):
    """``ast`` with a top-level sum of SUMPRODUCT(range, range) terms made a :class:`Dot`."""
    if not (isinstance(ast, Binary) and ast.op == "+") and not isinstance(ast, Call):
        return ast
    terms = _terms(ast, [])
    calls = tuple(t for t in terms if isinstance(t, Call) and t.name == "SUMPRODUCT"
                  and len(t.args) == 2 and all(isinstance(a, Range) for a in t.args))
    if not calls:
        return ast
    return Dot(calls, tuple(t for t in terms if not (isinstance(t, Call) and t in calls)))


_DOT_CHUNK = 1 << 22  # elements of one gathered operand block (32 MB): the batch goes in slices


def _ev_dot(node, cx):
    cls = cx.cls
    plan = cls.gather.get("dot", None) if cx.sub is None else False
    if plan is None:
        plan = cls.gather["dot"] = _dot_plan(node, cls)
    if plan is not False:
        out = _run_dot(plan, cx)
        if out is None:  # a range holds text or a boolean: SUMPRODUCT's own path zeroes them
            cls.gather["dot"] = False
    if plan is False or out is None:
        out = None
        for t in node.calls:
            v = _num(_ev(t, cx))
            out = v if out is None else out + v
    for t in node.rest:
        out = out + _num(_ev(t, cx))
    return out


def _run_dot(plan, cx):
    sides, inv, product = plan
    batch = max(cx.V[t].shape[0] for side in sides for t, *_ in side)
    width = sum(h * w for _, _, _, h, w in sides[0])
    rows = max(len(sides[0][0][1]), len(sides[1][0][1]))
    step = max(1, _DOT_CHUNK // max(1, rows * width))
    outs = []
    for b0 in range(0, batch, step):
        a = _side_values(sides[0], cx, b0, b0 + step)
        b = _side_values(sides[1], cx, b0, b0 + step)
        if a is None or b is None:
            return None
        if product:
            outs.append(_matmul(a, b)[:, inv[0], inv[1]])
        else:
            outs.append(_dot(a, b))
        if a.shape[0] == 1 and b.shape[0] == 1:
            break  # nothing varies over the batch
    return outs[0] if len(outs) == 1 else np.concatenate(outs)


def _matmul(a, b):
    """(Ba, Pa, K) x (Bb, Pb, K) -> (B, Pa, Pb), one BLAS call when one side is shared."""
    if b.shape[0] == 1:
        B, P, K = a.shape
        return (a.reshape(B * P, K) @ b[0].T).reshape(B, P, -1)
    if a.shape[0] == 1:
        B, P, K = b.shape
        return (b.reshape(B * P, K) @ a[0].T).reshape(B, P, -1).transpose(0, 2, 1)
    return a @ b.transpose(0, 2, 1)


def _dot_plan(node, cls):
    """How to evaluate a Dot for the whole class: for each side (the first, then the second
    argument of every SUMPRODUCT) the distinct windows it reads and which one each cell uses.
    When (distinct first windows) x (distinct second windows) is not much more than the cells,
    one matrix product gives every cell's value; else the dot is taken cell by cell."""
    shapes = []
    for call in node.calls:
        h1, w1 = cls.ranges[call.args[0].first.slot][:2]
        h2, w2 = cls.ranges[call.args[1].first.slot][:2]
        if (h1, w1) != (h2, w2):
            return False  # #VALUE!: left to SUMPRODUCT itself
        shapes.append((h1, w1))
    n = len(cls.rows)
    sides, inv = [], []
    for k in (0, 1):
        keys, reads = [], []
        for call, (h, w) in zip(node.calls, shapes):
            _, _, jr, jc, _ = cls.ranges[call.args[k].first.slot]
            top, left = cls.slots[jr].row, cls.slots[jc].col
            keys += [np.broadcast_to(top, (n,)), np.broadcast_to(left, (n,))]
            reads.append((cls.slots[call.args[k].first.slot].sheet, h, w))
        key = np.stack(keys, 1)
        first, where = row_ids(key)
        uniq = key[first]
        inv.append(where)
        sides.append([(t, uniq[:, 2 * i], uniq[:, 2 * i + 1], h, w) for i, (t, h, w) in enumerate(reads)])
    product = len(sides[0][0][1]) * len(sides[1][0][1]) <= 4 * n
    if not product:  # each cell's own windows
        sides = [[(t, top[where], left[where], h, w) for t, top, left, h, w in side]
                 for side, where in zip(sides, inv)]
    return sides, inv, product


def _side_values(side, cx, b0, b1):
    """(batch, windows, K) values read by one side of a Dot (batch slice b0:b1, or 1 when
    nothing read varies over the batch); None when a read holds text or a boolean."""
    parts = []
    for t, top, left, h, w in side:
        V, M = cx.V[t], cx.M[t]
        V = V[b0:b1] if V.shape[0] > 1 else V
        ri = (top[:, None] + np.arange(h)).reshape(-1, h, 1)
        ci = (left[:, None] + np.arange(w)).reshape(-1, 1, w)
        vals = V[:, ri, ci]
        r0, c0 = int(top.min()), int(left.min())
        if not M[r0:int(top.max()) + h, c0:int(left.max()) + w].all():
            off = ~M[ri, ci]  # empty cells read as 0 and are 0; text and booleans are not
            if (vals[:, off] != 0).any():
                return None
        parts.append(vals.reshape(vals.shape[0], len(top), h * w))
    if len(parts) > 1 and len({p.shape[0] for p in parts}) > 1:
        size = max(p.shape[0] for p in parts)
        parts = [np.broadcast_to(p, (size,) + p.shape[1:]) for p in parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


_EVAL = {
    Dot: _ev_dot,
    Num: lambda n, cx: np.float64(n.value),
    Str: lambda n, cx: n.value,
    Bool: lambda n, cx: np.float64(n.value),
    Err: lambda n, cx: _NAN,
    Missing: lambda n, cx: np.float64(0.0),
    Ref: _ev_ref,
    Range: _ev_range,
    Unary: _ev_unary,
    Binary: _ev_binary,
    Call: _ev_call,
}


# =========================================================================== functions

def _as_range(x):
    if isinstance(x, _Rng):
        return x
    x = _num(x)
    return _Rng(np.reshape(x, np.shape(x) + (1, 1)) if np.ndim(x) == 2 else np.reshape(x, (1, 1, 1, 1)), None)


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
    rs = [_as_range(a) for a in args]
    shape = rs[0].vals.shape[-2:]
    if any(r.vals.shape[-2:] != shape for r in rs):
        return _NAN  # #VALUE!: arrays of different sizes
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
        if isinstance(a, _Rng):
            v, mk = a.vals, a.mask
            if kind == "count":
                ok = ~np.isnan(v) if mk is None else (mk & ~np.isnan(v))
                part, n = ok.sum((-2, -1)), 0
            else:
                n = v.shape[-2] * v.shape[-1] if mk is None else mk.sum((-2, -1))
                if kind == "max":
                    part = (v if mk is None else np.where(mk, v, -np.inf)).max((-2, -1))
                elif kind == "min":
                    part = (v if mk is None else np.where(mk, v, np.inf)).min((-2, -1))
                else:
                    part = (v if mk is None else np.where(mk, v, 0.0)).sum((-2, -1))
        else:
            part, n = _num(a), 1
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
        return np.where(np.asarray(count) == 0, 0.0, total)  # no numbers at all: 0, as Excel
    if kind == "average":
        return total / count
    return total


def f_if(cond, yes=np.float64(0.0), no=np.float64(0.0)):
    c = _num(cond)
    if np.ndim(c) == 0:  # one condition for all cells: pick the branch (may be text)
        if np.isnan(c):
            return _NAN
        return yes if c != 0 else no
    out = np.where(c != 0, _num(yes), _num(no))
    return np.where(np.isnan(c), np.nan, out)


_erf_object = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    x = _num(x)
    if np.ndim(x) == 0:
        return np.float64(math.erf(x)) if not np.isnan(x) else _NAN
    return _erf_object(x).astype(np.float64)  # libm's erf, exact to the last bit or so


def f_erf(lower, upper=None):
    return _erf(lower) if upper is None else _erf(upper) - _erf(lower)


def f_round(x, digits=np.float64(0.0), mode="half"):
    x, d = _num(x), np.trunc(_num(digits))
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
    x = _num(value)
    r = _as_range(rng)
    h, w = r.vals.shape[-2:]
    if h != 1 and w != 1:
        return _NAN  # #N/A: MATCH needs one row or one column
    v = r.zeroed() if r.mask is None else np.where(r.mask, r.vals, np.nan)
    v = v.reshape(v.shape[:2] + (-1,))
    xx = np.asarray(x)[..., None] if np.ndim(x) else x
    mode = _num(mode)
    if np.ndim(mode) != 0:
        return _NAN
    if mode == 0:
        hit = v == xx
        pos = hit.argmax(-1) + 1.0
        return np.where(hit.any(-1), pos, np.nan)
    # approximate modes assume sorted data, like Excel: count of entries <= x (or >= x)
    pos = ((v <= xx) if mode > 0 else (v >= xx)).sum(-1).astype(float)
    return np.where(pos == 0, np.nan, pos)


def f_index(rng, row, col=None):
    r = _as_range(rng)
    vals = r.vals
    b, m, h, w = vals.shape
    i = np.floor(_num(row))
    if col is None:  # one index into a single row or column
        if h != 1 and w != 1:
            return _NAN  # a whole row/column result is not supported
        k = i - 1
    else:
        j = np.floor(_num(col))
        k = np.where((i < 1) | (i > h) | (j < 1) | (j > w), -1, (i - 1) * w + (j - 1))
    n = h * w
    ok = (k >= 0) & (k < n)
    kk = np.where(ok, k, 0).astype(np.int64)
    flat = vals.reshape(b, m, n)
    shape = np.broadcast_shapes((b, m), np.shape(kk))
    picked = np.take_along_axis(np.broadcast_to(flat, shape + (n,)),
                                np.broadcast_to(kk, shape)[..., None], -1)[..., 0]
    return np.where(ok, picked, np.nan)


def _unary(fn):
    return lambda x: _Rng(fn(x.vals), None) if _is_array(x) else fn(_num(x))


def f_log(x, base=np.float64(10.0)):
    return np.log(_num(x)) / np.log(_num(base))


def f_and(*args):
    out = np.float64(1.0)
    for a in args:
        out = out * (_num(a) != 0)
    return np.asarray(out, np.float64)[()]


def f_or(*args):
    out = np.float64(0.0)
    for a in args:
        out = np.maximum(out, _num(a) != 0)
    return np.asarray(out, np.float64)[()]


_INF = 255
_FUNCTIONS.update({
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
    "POWER": (lambda a, b: np.power(_num(a), _num(b)), 2, 2, False),
    "MOD": (lambda a, b: np.mod(_num(a), _num(b)), 2, 2, False),
    "ROUND": (f_round, 2, 2, False),
    "ROUNDUP": (lambda x, d: f_round(x, d, "up"), 2, 2, False),
    "ROUNDDOWN": (lambda x, d: f_round(x, d, "down"), 2, 2, False),
    "ERF": (f_erf, 1, 2, False),
    "ERF.PRECISE": (f_erf, 1, 1, False),
    "IF": (f_if, 2, 3, False),
    "AND": (f_and, 1, _INF, False),
    "OR": (f_or, 1, _INF, False),
    "NOT": (lambda x: np.asarray(_num(x) == 0, np.float64)[()], 1, 1, False),
    "MATCH": (f_match, 2, 3, True),
    "INDEX": (f_index, 2, 3, True),
})


# =========================================================================== running

class Result:
    """Values of every cell after evaluation.  ``batch`` is B, or None for a single pass."""

    def __init__(self, book, prog, V, M, texts, outside, batch, seconds):
        self._book, self._prog, self._V, self._M = book, prog, V, M
        self._texts, self._outside = texts, outside
        self.batch = batch
        self.seconds = seconds
        self.n_formulas = prog.n_formulas
        self._index = {name: i for i, name in enumerate(book.sheets)}

    def _sheet(self, sheet):
        s = self._index.get(sheet)
        return s if s is not None else self._index[self._book.sheet_name(sheet)]

    def _out(self, v):
        if self.batch is None:
            return float(np.asarray(v).reshape(-1)[0])
        return np.broadcast_to(v, (self.batch,)).astype(np.float64)

    def value(self, sheet, row, col):
        """Number in a cell (an array (B,) when batched); a text/boolean constant or text formula
        result as itself; None for an empty cell."""
        s = self._sheet(sheet)
        key = (s, row, col)
        if key in self._texts:
            return self._texts[key]
        if key in self._outside:
            return self._out(self._outside[key])
        V, M = self._V[s], self._M[s]
        if row < M.shape[0] and col < M.shape[1] and M[row, col]:
            return float(V[0, row, col]) if self.batch is None else self._out(V[:, row, col])
        return self._book.value(self._book.sheets[s], row, col)

    def block(self, sheet, r0, c0, r1, c1):
        """Inclusive rectangle as float64 (rows, cols), or (B, rows, cols) when batched; NaN
        where a cell holds no number."""
        s = self._sheet(sheet)
        V, M = self._V[s], self._M[s]
        b = V.shape[0] if self.batch is None else self.batch
        out = np.full((b, r1 - r0 + 1, c1 - c0 + 1), np.nan)
        rr, cc = min(r1 + 1, M.shape[0]), min(c1 + 1, M.shape[1])
        if rr > r0 and cc > c0:
            part = np.where(M[r0:rr, c0:cc], V[:, r0:rr, c0:cc], np.nan)
            out[:, :rr - r0, :cc - c0] = part
        for (ks, r, c), v in self._outside.items():
            if ks == s and r0 <= r <= r1 and c0 <= c <= c1:
                out[:, r - r0, c - c0] = v
        return out[0] if self.batch is None else out


def _batch_size(overrides):
    sizes = {np.shape(v)[0] for v in overrides.values() if np.ndim(v) == 1}
    if any(np.ndim(v) > 1 for v in overrides.values()):
        raise ValueError("override values must be numbers or 1-D arrays")
    if len(sizes) > 1:
        raise ValueError(f"override arrays differ in length: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def evaluate(book, overrides=None):
    """Evaluate every formula of ``book``.  ``overrides`` {(sheet, row, col): number or 1-D array
    of length B} replaces cell values first (a formula cell overridden keeps the given value);
    any array makes the whole evaluation batched over B.  Returns a :class:`Result`."""
    t0 = time.perf_counter()
    if book._program is None:
        book._program = _compile(book)
    prog = book._program
    overrides = dict(overrides or {})
    batch = _batch_size(overrides)
    b = 1 if batch is None else batch
    resolved = {}
    for (sheet, row, col), v in overrides.items():
        s = book.sheets.index(book.sheet_name(sheet))
        if not (0 <= row < MAX_ROWS and 0 <= col < MAX_COLS):
            raise ValueError(f"override cell ({row}, {col}) is outside the sheet grid")
        resolved[(s, row, col)] = np.asarray(v, np.float64)
    touched = {s for s, _, _ in resolved}
    V, M = [], []
    for s in range(len(book.sheets)):
        if prog.writer[s] is not None or s in touched:  # written to: a private (b, R, C) copy
            V.append(np.repeat(prog.base[s][None], b, axis=0))
        else:  # read only, shared by the whole batch
            V.append(prog.base[s][None])
        M.append(prog.isnum[s].copy() if s in touched else prog.isnum[s])
    outside = {}
    reapply = {}
    for (s, row, col), v in resolved.items():
        if row < V[s].shape[1] and col < V[s].shape[2]:
            V[s][:, row, col] = v
            M[s][row, col] = True
            w = prog.writer[s]
            if w is not None and w[row, col] >= 0:  # overriding a formula: keep the override
                reapply.setdefault(int(w[row, col]), []).append((s, row, col, v))
        else:
            outside[(s, row, col)] = v  # nothing reads it (refs are all inside the arrays)
    texts = {}
    classes = prog.classes
    with np.errstate(all="ignore"):
        for cid, sub in prog.steps:
            cls = classes[cid]
            val = _ev(cls.ast, _Ctx(cls, sub, V, M))
            text = val if isinstance(val, str) else None
            if text is not None:
                val = _NAN
            elif isinstance(val, _Rng):
                val = _num(val)
            for s, sel, rows, cols in _by_sheet(cls, sub):
                if text is not None:
                    for r, c in zip(rows.tolist(), cols.tolist()):
                        texts[(s, r, c)] = text
                    if M[s] is prog.isnum[s]:
                        M[s] = M[s].copy()
                    M[s][rows, cols] = False
                if sel is not None and np.ndim(val) == 2 and val.shape[1] > 1:
                    V[s][:, rows, cols] = val[:, sel]
                else:
                    V[s][:, rows, cols] = val
            for s2, r, c, v in reapply.get(cid, ()):
                V[s2][:, r, c] = v
    return Result(book, prog, V, M, texts, outside, batch, time.perf_counter() - t0)
