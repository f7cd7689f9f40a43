"""Checks of the workbook itself, without Keras: Excel's limits and portable functions (lint), cached
values against the formulas, and formulas where formulas belong (no constants on stage sheets).
"""

from __future__ import annotations

import re

import numpy as np

from ..formula import cell_name
from ..manifest import parse_cell


CACHED_RTOL = 1e-9


PORTABLE_FUNCTIONS = {
    "SUMPRODUCT", "SUM", "MAX", "MIN", "AVERAGE", "EXP", "LN", "LOG10", "TANH", "SQRT", "ABS", "IF",
    "ERF", "POWER", "COUNT", "MATCH", "INDEX", "ROUND", "INT", "SIGN", "AND", "OR", "NOT",
    "CHOOSE", "ISNUMBER",
}


EXCEL_MAX_FORMULA = 8192


EXCEL_MAX_ARGS = 255


EXCEL_MAX_NESTING = 64


LIBREOFFICE_CHOOSE_OPTIONS = 30  # a CHOOSE with more options is #VALUE! in LibreOffice (Excel takes 254)


_BAD_SHEET = re.compile(r"[\\/?*\[\]:]")



def formula_table(book):
    """(sheet index, rows, cols, sheet texts) of every formula cell in workbook order, the order
    of xlcnn.formula's formula_groups and of ``book.formulas``; sheet texts holds each sheet's
    texts as ``book.formula_cells`` gives them (a shared formula's copy is made from its
    master's text only when it is read), so formula i of sheet s is sheet_texts[s][i - the
    number of formulas on the sheets before s]."""
    hosts, rows, cols, texts = [], [], [], []
    for s, sheet in enumerate(book.sheets):
        r, c, x = book.formula_cells(sheet)
        hosts.append(np.full(len(x), s, np.int64))
        rows += r
        cols += c
        texts.append(x)
    host = np.concatenate(hosts) if hosts else np.zeros(0, np.int64)
    return host, np.asarray(rows, np.int64), np.asarray(cols, np.int64), texts


_STRINGS = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"")
_FUNCTION = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)\(")
_CALL_TOKEN = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_.]*)?\(|[,)]")


def formula_problems(text):
    """(nesting depth, most arguments of one function, most options of one CHOOSE, function names)
    of one formula text; zeros when it is too short to come near the limits."""
    bare = _STRINGS.sub("", text)
    depth = args = options = 0
    commas = text.count(",")
    if text.count("(") > EXCEL_MAX_NESTING or commas >= EXCEL_MAX_ARGS or (
            commas > LIBREOFFICE_CHOOSE_OPTIONS and "CHOOSE(" in bare.upper()):
        d, stack = 0, [[None, 0]]
        for m in _CALL_TOKEN.finditer(bare):
            tok = m.group()
            if tok == ",":
                stack[-1][1] += 1
            elif tok == ")":
                name, n = stack.pop()
                args = max(args, n + 1)
                if name == "CHOOSE":
                    options = max(options, n)
                d -= 1
            else:
                d += 1
                depth = max(depth, d)
                stack.append([tok[:-1].upper(), 0])
    return depth, args, options, _FUNCTION.findall(bare)


def lint(book, groups=None):
    """Excel's limits and portability: formula length, argument count, nesting, functions, names.

    Formulas of one shape (``groups``: xlcnn.formula.formula_groups(book), index arrays into the
    workbook-order formulas) share their functions, argument counts and nesting; only length
    varies.  So the text of each group's first formula is read once for the group, the length
    of every formula is checked in one array, and problems come out in cell order: the same list
    as checking every formula one by one (the first cell naming a function reports it)."""
    problems = []
    for name in book.sheets:
        if not 1 <= len(name) <= 31 or _BAD_SHEET.search(name) or name.startswith("'") or name.endswith("'"):
            problems.append(f"sheet name {name!r} is not valid in Excel (1-31 characters, none of \\ / ? * [ ] :)")
    host, rows, cols, sheet_texts = formula_table(book)
    sheet_start = np.cumsum([0] + [len(t) for t in sheet_texts])
    if groups is None:  # no shapes known: every formula on its own
        groups = [np.array([i]) for i in range(len(host))]
    lengths = np.concatenate([np.zeros(0, np.int64)] + [book.formula_lengths(s) for s in book.sheets]) + 1  # with '='
    found = []  # (cell index, order within the cell, message)

    def where(i):
        return cell_name(book.sheets[int(host[i])], int(rows[i]), int(cols[i]))

    for i in np.flatnonzero(lengths > EXCEL_MAX_FORMULA).tolist():
        found.append((i, 0, f"{where(i)}: formula of {int(lengths[i])} characters (Excel's limit is 8,192)"))
    first_use = {}
    for members in groups:
        if not len(members):
            continue
        first = int(members.min())  # a text as written (a shared formula's master comes before its copies)
        k = int(host[first])
        depth, args, options, functions = formula_problems(sheet_texts[k][first - int(sheet_start[k])])
        if depth > EXCEL_MAX_NESTING:
            found += [(i, 1, f"{where(i)}: nesting {depth} levels deep (Excel's limit is 64)")
                      for i in members.tolist()]
        if args > EXCEL_MAX_ARGS:
            found += [(i, 2, f"{where(i)}: a function with {args} arguments (Excel's limit is 255)")
                      for i in members.tolist()]
        if options > LIBREOFFICE_CHOOSE_OPTIONS:
            found += [(i, 3, f"{where(i)}: a CHOOSE with {options} options (LibreOffice computes #VALUE! past "
                             f"{LIBREOFFICE_CHOOSE_OPTIONS}; nest CHOOSEs of 30)") for i in members.tolist()]
        for k, fn in enumerate(functions):
            key = fn.upper()
            if key not in PORTABLE_FUNCTIONS and (key not in first_use or first_use[key][:2] > (first, k)):
                first_use[key] = (first, k, fn)
    for first, k, fn in first_use.values():
        found.append((first, 4 + k, f"{where(first)}: function {fn} is not in xlcnn's portable set "
                                    "(Excel 2010+ and LibreOffice)"))
    found.sort(key=lambda f: f[:2])
    return problems + [m for _, _, m in found]


def stage_cells(entries, input_layer):
    """(sheet, row, col) of every stage cell that must hold a formula (the input's cells are constants)."""
    input_cells = set()
    for e in entries:
        if e.layer == input_layer:
            r0, c0, r1, c1 = e.range
            input_cells.add((e.sheet, r0, c0, r1, c1))
    cells = []
    for e in entries:
        if e.layer == input_layer or (e.sheet, *e.range) in input_cells:
            continue  # pass-through stages of the input point at the input's constants
        r0, c0, r1, c1 = e.range
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                cells.append((e.sheet, r, c))
    return cells



def constants_on_stage_sheets(book, entries, input_layer):
    """Numbers typed into a stage sheet's data rows, outside the manifest's ranges too (say in the
    z block beside a fused activation): only column A (labels) may hold constants there."""
    input_sheets = {e.sheet for e in entries if e.layer == input_layer}
    first_row = {}
    for e in entries:
        if e.layer != input_layer and e.sheet not in input_sheets:
            first_row[e.sheet] = min(first_row.get(e.sheet, e.range[0]), e.range[0])
    found = []
    for sheet, r0 in first_row.items():
        data = book.sheet_array(sheet)[r0:, 1:]
        for r, c in np.argwhere(~np.isnan(data)):
            found.append(cell_name(sheet, r0 + int(r), 1 + int(c)))
    return found



def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)



def missing_formulas(book, entries, input_layer):
    """Names of the stage cells that hold no formula (the input's cells are constants), stage by
    stage, row by row: one mask per sheet instead of a look-up per cell."""
    input_cells = {(e.sheet, *e.range) for e in entries if e.layer == input_layer}
    stages = [e for e in entries if e.layer != input_layer and (e.sheet, *e.range) not in input_cells]
    masks = {}
    for e in stages:  # pass-through stages of the input point at the input's constants: skipped
        masks.setdefault(e.sheet, [0, 0])
        masks[e.sheet] = [max(masks[e.sheet][0], e.range[2] + 1), max(masks[e.sheet][1], e.range[3] + 1)]
    for sheet, (nr, nc) in masks.items():
        rows, cols, _ = book.formula_cells(sheet)
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        mask = masks[sheet] = np.zeros((max(nr, int(rows.max(initial=-1)) + 1),
                                        max(nc, int(cols.max(initial=-1)) + 1)), bool)
        mask[rows, cols] = True
    found = []
    for e in stages:
        r0, c0, r1, c1 = e.range
        for r, c in np.argwhere(~masks[e.sheet][r0:r1 + 1, c0:c1 + 1]).tolist():
            found.append(cell_name(e.sheet, r0 + r, c0 + c))
    return found


def check_cached(book, values):
    """Formula cells whose cached value disagrees with the evaluator's value: [((sheet, row,
    col), value, cached)] in workbook order.  ``values(sheet, rows, cols)`` gives the evaluated
    numbers of many cells at once (NaN where no number).  Numeric cached values are compared in
    one array per sheet; only the others (missing, text, errors, booleans) are looked at one by one.

    A cached number passes when the formulas give a finite number within CACHED_RTOL of it; a
    missing cached value fails; a cached error (#...) fails unless the formulas give no finite
    number; other text, booleans and non-finite cached numbers are not compared."""
    bad = []
    for sheet in book.sheets:
        rows, cols, _ = book.formula_cells(sheet)
        if not len(rows):
            continue
        got = np.asarray(values(sheet, rows, cols), np.float64).reshape(len(rows), -1)[:, 0]
        want, others = book.cached_values(sheet)
        is_float = np.ones(len(rows), bool)
        is_float[list(others)] = False
        with np.errstate(invalid="ignore"):
            wrong = is_float & np.isfinite(want) & (
                ~np.isfinite(got) | ~(np.abs(got - want) <= CACHED_RTOL * np.maximum(1.0, np.abs(got))))
        for i, v in others.items():
            if v is None or (isinstance(v, str) and v.startswith("#") and np.isfinite(got[i])):
                wrong[i] = True
        for i in np.flatnonzero(wrong).tolist():
            bad.append(((sheet, rows[i], cols[i]), float(got[i]), others.get(i, float(want[i]))))
    return bad


TRACE_NAMES = ("layer", "channel", "row", "col", "value")
_NAME_CELL = re.compile(r"^(?:'((?:[^']|'')*)'|([^'!]+))!\$?([A-Z]{1,3})\$?([0-9]{1,7})$")


def _name_cell(target):
    """(sheet, row, col) of a defined name that stands for one cell, else None."""
    m = _NAME_CELL.match(target.strip())
    if m is None:
        return None
    sheet = m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2)
    row, col = parse_cell(m.group(3) + m.group(4))       # the contract's own cell codec
    return sheet, row, col


def trace_checks(book, entries, values):
    """The trace sheets' contract (xlcnn/trace.py): each sheet defining the sheet-scoped name `value`
    also names `layer` and `channel` (and `row`, `col` for a map), each one cell, and its `value`
    equals the stage's own cell at that position (the manifest says where), within CACHED_RTOL.
    ``values(sheet, rows, cols)`` gives evaluated numbers.  Returns (problems, traces checked)."""
    scoped = {}
    for (scope, name), target in book.defined_names.items():
        if scope is not None and name.lower() in TRACE_NAMES:
            scoped.setdefault(scope, {})[name.lower()] = target
    problems, checked = [], 0
    for sheet, names in scoped.items():
        if "value" not in names:
            continue
        cells = {n: _name_cell(t) for n, t in names.items()}
        bad = [n for n in ("layer", "channel", "value") if cells.get(n) is None]
        if bad:
            problems.append(f"trace sheet {sheet!r}: name(s) {', '.join(bad)} missing or not one cell")
            continue

        def number(n):
            return 0.0 if cells.get(n) is None else number_at(values, cells[n])

        layer = book.value(cells["layer"][0], *cells["layer"][1:])
        rows = [e for e in entries if e.layer == layer]
        if not rows:
            problems.append(f"trace sheet {sheet!r}: layer {layer!r} is not in the manifest")
            continue
        channel, row, col = number("channel"), number("row"), number("col")
        if rows[0].channel is None:
            entry, r, c = rows[0], int(channel), 0
        else:
            entry = next((e for e in rows if e.channel == channel), None)
            r, c = int(row), int(col)
        inside = entry is not None and 0 <= r <= entry.range[2] - entry.range[0] and \
            0 <= c <= entry.range[3] - entry.range[1]
        if not inside:
            problems.append(f"trace sheet {sheet!r}: position channel {channel:g}, row {row:g}, col {col:g} is "
                            f"outside {layer!r}")
            continue
        stage = (entry.sheet, entry.range[0] + r, entry.range[1] + c)
        want = number_at(values, stage)
        got = number("value")
        checked += 1
        if not (np.isfinite(got) and np.isfinite(want) and abs(got - want) <= CACHED_RTOL * max(1.0, abs(want))):
            problems.append(f"{cell_name(*cells['value'])}: the trace of {layer!r} gives {got:.9g}, the stage's own "
                            f"cell {cell_name(*stage)} {want:.9g}")
    return problems, checked


def number_at(values, cell):
    sheet, r, c = cell
    return float(np.asarray(values(sheet, [r], [c])).reshape(-1)[0])
