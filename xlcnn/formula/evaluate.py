"""Recalculate every formula of a Book with NumPy, independently of the code that wrote them:
the entry point (:func:`evaluate`, :class:`Result`); the work is split by job into program.py
(compile), schedule.py (order), execute.py and products.py (evaluation), functions.py and values.py.

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


import time

import numpy as np

from .execute import Ctx, ev
from .parser import MAX_COLS, MAX_ROWS
from .program import compile_book
from .schedule import by_sheet, class_refs, needed_classes
from .values import NAN, Rng, num


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

    def cells(self, sheet, rows, cols):
        """Numbers in the cells (rows[i], cols[i]) of ``sheet`` as float64 (n,), or (B, n) when
        batched; NaN where a cell holds no number (empty, text, a boolean constant)."""
        s = self._sheet(sheet)
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        V, M = self._V[s], self._M[s]
        b = V.shape[0] if self.batch is None else self.batch
        out = np.full((b, len(rows)), np.nan)
        inside = (rows < M.shape[0]) & (cols < M.shape[1])
        r, c = rows[inside], cols[inside]
        out[:, inside] = np.where(M[r, c], V[:, r, c], np.nan)
        for (ks, kr, kc), v in self._outside.items():
            if ks == s:
                out[:, (rows == kr) & (cols == kc)] = np.reshape(v, (-1, 1))
        return out[0] if self.batch is None else out

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


def _private(base, b):
    """A writable (b, R, C) copy of ``base`` whose memory is (R, C, b): each cell's batch is
    contiguous, so gathering windows and writing a class's cells move whole batch vectors."""
    out = np.empty(base.shape + (b,))
    out[...] = base[..., None]
    return out.transpose(2, 0, 1)


class _Plan:
    """What a run evaluates: every class (need None), or with targets the needed classes, and
    of a needed class writing to many sheets (a copy formula shared by the flatten sheet and
    the gallery) only its cells on the sheets that targets or needed classes read."""

    def __init__(self, prog, need, rects):
        self.need, self.rects = need, rects
        target_sheets = {r[0] for r in rects}
        self.limit = {}  # class id -> positions of its cells to evaluate (multi-sheet classes)
        if need is None:
            self.active = set(range(len(prog.shapes)))
            return
        active = set(target_sheets)
        for cls in prog.classes:
            if need[cls.id]:
                active.update(slot.sheet for slot in cls.slots)
        self.active = active
        for cls in prog.classes:
            if need[cls.id] and cls.hosts is not None:
                keep = np.isin(cls.hosts, sorted(active))
                if not keep.all():
                    self.limit[cls.id] = np.flatnonzero(keep)

    def steps(self, prog):
        """(class id, positions or None) to evaluate, in prog.steps order."""
        for cid, sub in prog.steps:
            if self.need is not None and not self.need[cid]:
                continue
            part = self.limit.get(cid)
            if part is not None:
                sub = part if sub is None else np.intersect1d(sub, part)
                if not len(sub):
                    continue
            yield cid, sub

    def written(self, prog):
        """Indices of the sheets the evaluated cells are on."""
        if self.need is None:
            return {s for s, w in enumerate(prog.writer) if w is not None}
        out = set()
        for cls in prog.classes:
            if self.need[cls.id]:
                out.update(t for t, *_ in by_sheet(cls, self.limit.get(cls.id)))
        return out

    def extents(self, prog, resolved):
        """Per sheet (rows, cols) covering every cell evaluated or read by what is evaluated,
        and the overridden cells."""
        if self.need is None:
            return prog.shapes
        ext = [[0, 0] for _ in prog.shapes]

        def cover(t, row, col):  # the cell (row, col) of sheet t, or nothing (None)
            if row is not None:
                ext[t][0] = max(ext[t][0], row + 1)
                ext[t][1] = max(ext[t][1], col + 1)

        for cls in prog.classes:
            if self.need[cls.id]:
                for t, row, col in _far_corners(cls, self.limit.get(cls.id)):
                    cover(t, row, col)
        for s, row, col in resolved:
            cover(s, row, col)
        for s, _, _, r1, c1 in self.rects:  # the cells asked for, formulas or not
            cover(s, r1, c1)
        return [(min(r, R), min(c, C)) for (r, c), (R, C) in zip(ext, prog.shapes)]

    def skipped(self, prog, s, box):
        """Formula cells of sheet s (within box) this run leaves out, or None."""
        W = prog.writer[s]
        if self.need is None or W is None:
            return None
        W = W[box]
        out = (W >= 0) if s not in self.active else ~np.append(self.need, True)[W]
        return out if out.any() else None


def _put(V, rows, cols, val, sel):
    """V[:, rows, cols] = val, or val[:, sel] for a class's values over several sheets.  A
    batch's values lying as (cells, batch) in memory, as the sheets do, move as whole batch
    vectors (indexing them as (batch, cells) would copy them across twice)."""
    several = sel is not None and np.ndim(val) == 2 and val.shape[1] > 1
    if np.ndim(val) == 2 and val.shape[0] == V.shape[0] > 1 and (several or val.shape[1] == len(rows)):
        src, dst = val.T, V.transpose(1, 2, 0)
        if src.flags.c_contiguous and dst.flags.c_contiguous:
            dst[rows, cols] = src[sel] if several else src  # sel: a slice (a view) or positions
            return
    V[:, rows, cols] = val[:, sel] if several else val


def _largest(v):
    """The largest of a slot coordinate or index array (an int or an array), None if empty."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    return int(v.max()) if v.size else None


def _far_corners(cls, sub):
    """(sheet, row, col) per sheet a class (or its cells ``sub``) writes and per read it makes:
    the largest row and column involved (None, None where there is nothing).  Kept on the
    class for sub None: a batch run (targets) asks for them on every run."""
    if sub is None and "corners" in cls.gather:
        return cls.gather["corners"]
    out = [(t, _largest(rows), _largest(cols)) for t, _, rows, cols in by_sheet(cls, sub)]
    for t, top, left, h, w in class_refs(cls):  # each read's far corner
        r, c = _largest(top), _largest(left)
        out.append((t, None, None) if r is None or c is None else (t, r + (h or 1) - 1, c + (w or 1) - 1))
    if sub is None:
        cls.gather["corners"] = out
    return out


def evaluate(book, overrides=None, targets=None):
    """Evaluate every formula of ``book``.  ``overrides`` {(sheet, row, col): number or 1-D array
    of length B} replaces cell values first (a formula cell overridden keeps the given value);
    any array makes the whole evaluation batched over B.  ``targets`` [(sheet, r0, c0, r1, c1)]
    (inclusive rectangles) evaluates only the formulas those cells depend on; every other
    formula cell then reads as no number (NaN in blocks).  Returns a :class:`Result`."""
    t0 = time.perf_counter()
    prog = compile_book(book)
    if targets is None:
        plan = _Plan(prog, None, ())
    else:
        rects = [(book.sheets.index(book.sheet_name(t[0])),) + tuple(t[1:]) for t in targets]
        plan = _Plan(prog, needed_classes(prog, rects), rects)
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
    written = plan.written(prog)
    # Only the cells the (needed) formulas write or read: a sheet's titles and legends lie
    # beyond them, and a private copy of them costs a batch's worth of memory traffic.
    extent = plan.extents(prog, resolved)
    V, M = [], []
    for s in range(len(book.sheets)):
        if s in written or s in touched:  # written to: a private (b, R, C) copy
            box = (slice(0, extent[s][0]), slice(0, extent[s][1]))
            V.append(_private(prog.base[s][box], b))
            M.append(prog.isnum[s][box].copy() if s in touched else prog.isnum[s][box])
        else:  # read only, shared by the whole batch
            box = (slice(None), slice(None))
            V.append(prog.base[s][None])
            M.append(prog.isnum[s])
        skipped = plan.skipped(prog, s, box)
        if skipped is not None:  # formulas left out: no number
            M[s] = M[s] & ~skipped
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
        for cid, sub in plan.steps(prog):
            cls = classes[cid]
            val = ev(cls.ast, Ctx(cls, sub, V, M))
            text = val if isinstance(val, str) else None
            if text is not None:
                val = NAN
            elif isinstance(val, Rng):
                val = num(val)
            for s, sel, rows, cols in by_sheet(cls, sub):
                if text is not None:
                    for r, c in zip(rows.tolist(), cols.tolist()):
                        texts[(s, r, c)] = text
                    if M[s] is prog.isnum[s] or M[s].base is prog.isnum[s]:  # never the program's own
                        M[s] = M[s].copy()
                    M[s][rows, cols] = False
                _put(V[s], rows, cols, val, sel)
            for s2, r, c, v in reapply.get(cid, ()):
                V[s2][:, r, c] = v
    return Result(book, prog, V, M, texts, outside, batch, time.perf_counter() - t0)
