"""Compiling a Book into a Program: formulas grouped into classes (one parsed AST, one
vectorised step per class), the dense per-sheet arrays of constants, and which class writes
each cell.  Nothing here depends on the inputs; :func:`compile_book` caches its Program on the
book (``book.program``).
"""

import math

import numpy as np

from .functions import check_ast
from .grouping import group_formulas, row_ids, shifted_refs, skeleton
from .parser import MAX_COLS, MAX_ROWS, FormulaError, Range, Ref, cell_name, parse, walk
from .products import fuse
from .reader import MAX_DENSE_CELLS
from .schedule import by_sheet, order_steps


class Slot:
    """Where reference number j of a class's formula points, for each of the class's cells:
    an int when it is the same cell for all of them (absolute references, mostly), else an
    int64 array of the cells' own rows/columns."""
    __slots__ = ("sheet", "row", "col")

    def __init__(self, sheet, row, col):
        self.sheet, self.row, self.col = sheet, row, col


class Class:
    """Cells of one sheet sharing one formula skeleton and the same range shapes."""
    __slots__ = ("id", "sheet", "hosts", "rows", "cols", "ast", "slots", "ranges", "gather")

    def __init__(self, cid, sheet, hosts, rows, cols, ast, slots, ranges):
        # sheet: the one sheet all cells are on, or None and hosts: each cell's sheet
        self.id, self.sheet, self.hosts, self.rows, self.cols = cid, sheet, hosts, rows, cols
        self.gather = {}  # range slot -> index arrays, built on first evaluation
        self.ast, self.slots = ast, slots
        # first slot of a Range -> (h, w, slot giving its top row, slot giving its left col, last slot)
        self.ranges = ranges


class Program:
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
        self.groups = []       # per formula skeleton: int64 indices into the workbook-order formulas
        self.deps = []         # per class: int64 ids of the classes it may read (a superset)


def compile_book(book):
    """The book's Program (classes, schedule, dense constants), compiled on first use and kept
    as ``book.program``; set that to None to compile again."""
    if book.program is None:
        book.program = _compile(book)
    return book.program


def formula_groups(book):
    """The book's formulas grouped by shape: a list of int64 index arrays into the formulas in
    workbook order (``book.formula_cells(sheet)`` of every sheet, concatenated), one array per
    formula text that is the same up to its references' letters and digits.  Within a group the
    functions, argument counts, nesting, strings and sheet names are the same; only the length
    of the text varies.  Every formula is in exactly one group."""
    return compile_book(book).groups


def _compile(book):
    prog = Program()
    sheets = book.sheets
    lower = {s.lower(): i for i, s in enumerate(sheets)}
    shapes = [list(book.shape(s)) for s in sheets]
    for s, (nr, nc) in enumerate(shapes):
        if nr * nc > MAX_DENSE_CELLS:
            raise FormulaError(f"sheet {sheets[s]!r} spans {nr}x{nc} cells, too many to evaluate")
    parsed = {}  # skeleton -> AST, shared across sheets (conv channels repeat one skeleton)
    classes = prog.classes
    host = []
    for s, sheet in enumerate(sheets):
        frows, fcols, _ = book.formula_cells(sheet)
        host.append(np.stack([np.full(len(frows), s), frows, fcols]).reshape(3, -1))
    host = np.concatenate(host, axis=1).astype(np.int64) if host else np.zeros((3, 0), np.int64)
    prog.n_formulas = host.shape[1]
    grouped = _grouped(book, host)
    while grouped:  # one skeleton at a time, its reference matrices freed once compiled
        key, chunks = grouped.popitem()
        cells = np.concatenate([np.asarray(c[0], np.int64) for c in chunks])
        prog.groups.append(cells)
        R_all = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
        C_all = np.concatenate([c[2] for c in chunks]) if len(chunks) > 1 else chunks[0][2]
        del chunks
        on = host[0, cells]
        first = cell_name(sheets[int(on[0])], int(host[1, cells[0]]), int(host[2, cells[0]]))
        try:
            ast = parsed.get(key)
            if ast is None:
                ast = parsed[key] = parse(list(key))
                check_ast(ast)
        except FormulaError as e:
            raise FormulaError(e.reason, first) from None
        own_sheet = any(isinstance(n, Ref) and n.sheet is None for n in walk(ast))
        if (on == on[0]).all() or not own_sheet:
            # every reference names its sheet: one class may write to many sheets (the same
            # convolution formula on each output channel's sheet), its cells sheet by sheet, so
            # that its values for one sheet are a slice (schedule.by_sheet)
            order = np.argsort(on, kind="stable")
            if (order != np.arange(len(order))).any():
                cells, on = cells[order], on[order]
                R_all, C_all = R_all[order], C_all[order]
            per_sheet = [np.arange(len(cells))]
        else:  # references to the formula's own sheet: classes are per sheet
            order = np.argsort(on, kind="stable")
            per_sheet = np.split(order, np.flatnonzero(np.diff(on[order])) + 1)
        for sel in per_sheet:
            whole = len(per_sheet) == 1
            idx, R, C = (cells, R_all, C_all) if whole else (cells[sel], R_all[sel], C_all[sel])
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
                rmax, cmax = R.max(0).tolist(), C.max(0).tolist()
                for j, t in enumerate(slot_sheet):
                    shapes[t][0] = max(shapes[t][0], rmax[j] + 1)
                    shapes[t][1] = max(shapes[t][1], cmax[j] + 1)
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
                Rm, Cm = (R, C) if len(members) == 1 else (R[m], C[m])
                rows_of, cols_of = _columns(Rm), _columns(Cm)
                slots = [Slot(slot_sheet[j], rows_of[j], cols_of[j]) for j in range(k)]
                rep = m[0]
                ranges = {}
                for a, b in pairs:
                    dr, dc = int(R[rep, b] - R[rep, a]), int(C[rep, b] - C[rep, a])
                    ranges[a] = (abs(dr) + 1, abs(dc) + 1, a if dr >= 0 else b, a if dc >= 0 else b, b)
                hm = hosts[m]
                one = bool((hm == hm[0]).all())
                classes.append(Class(len(classes), s if one else None, None if one else hm,
                                      hr[m], hc[m], fuse(ast), slots, ranges))
    prog.shapes = [tuple(x) for x in shapes]
    _build_base(book, prog)
    order_steps(book, prog)
    return prog


def _grouped(book, host):
    """group_formulas over every formula of the book (indices into ``host``, workbook order),
    with the copies of a shared formula put in its skeleton's set straight from the master's
    references moved by each copy's offset, their texts never made (a copy whose reference
    would leave the grid, #REF! in Excel, is grouped by its text)."""
    texts, where, copies = [], [], []
    at = 0
    for sheet in book.sheets:
        _, _, ftexts = book.formula_cells(sheet)
        n = len(ftexts)
        done = None
        for start, stop, text, mrow, mcol in book.shared_formulas(sheet):
            idx = np.arange(at + start, at + stop)
            refs = shifted_refs(text, host[1, idx] - mrow, host[2, idx] - mcol)
            if refs is None:
                continue
            copies.append((skeleton(text), idx, *refs))
            if done is None:
                done = np.zeros(n, bool)
            done[start:stop] = True
        if done is None:
            texts += ftexts
            where += range(at, at + n)
        else:
            for i in np.flatnonzero(~done).tolist():
                texts.append(ftexts[i])
                where.append(at + i)
        at += n
    where = np.asarray(where, np.int64)
    grouped = {key: [(where[idx], R, C) for idx, R, C in chunks]
               for key, chunks in group_formulas(texts).items()}
    for key, idx, R, C in copies:
        grouped.setdefault(key, []).append((idx, R, C))
    return grouped


def _columns(X):
    """The columns of X (cells, refs) as slot coordinates: an int where all cells agree, else
    an int64 array, one array shared by equal columns (a convolution's window is at the same
    place on each of its 64 input channels: one array, not 64)."""
    if X.shape[1] == 0:
        return []
    same = (X == X[0]).all(0)
    out = [int(X[0, j]) if same[j] else None for j in range(X.shape[1])]
    moving = np.flatnonzero(~same)
    if len(moving):
        n = len(X)  # equal columns have equal sums and ends; equal keys are then compared
        finger = zip(X.sum(0, dtype=np.int64)[moving].tolist(), X[n // 2, moving].tolist(), X[-1, moving].tolist())
        seen = {}
        for j, f in zip(moving.tolist(), finger):
            for other in seen.get(f, ()):
                if (other == X[:, j]).all():
                    out[j] = other
                    break
            else:
                out[j] = X[:, j].astype(np.int64)
                seen.setdefault(f, []).append(out[j])
    return out


def _build_base(book, prog):
    for s, sheet in enumerate(book.sheets):
        shape = prog.shapes[s]
        base = np.zeros(shape)
        isnum = np.zeros(shape, bool)
        rows, cols, vals = book.numbers(sheet)
        base[rows, cols] = vals
        isnum[rows, cols] = True
        prog.n_constants += len(rows)
        errors = book.error_cells(sheet)
        for (r, c), v in book.other_constants(sheet).items():
            prog.n_constants += 1
            base[r, c] = float(v) if isinstance(v, bool) else math.nan
            isnum[r, c] = (r, c) in errors  # errors propagate through SUM like numbers do
        frows, fcols, _ = book.formula_cells(sheet)
        isnum[frows, fcols] = True
        # Read-only: a run writes to private copies only, and a value computed from arrays
        # that cannot be written (a dense layer's gathered weights) may be kept for the next run.
        base.flags.writeable = isnum.flags.writeable = False
        prog.base.append(base)
        prog.isnum.append(isnum)
        prog.writer.append(np.full(shape, -1, np.int32) if len(frows) else None)
    for cls in prog.classes:
        for t, _, rows, cols in by_sheet(cls, None):
            prog.writer[t][rows, cols] = cls.id
