"""Checks of the workbook itself, without Keras: Excel's limits and portable functions (lint), cached
values against the formulas, and formulas where formulas belong (no constants on stage sheets).
"""

from __future__ import annotations

import re

import numpy as np

from ..formula import cell_name


CACHED_RTOL = 1e-9


PORTABLE_FUNCTIONS = {
    "SUMPRODUCT", "SUM", "MAX", "MIN", "AVERAGE", "EXP", "LN", "LOG10", "TANH", "SQRT", "ABS", "IF",
    "ERF", "POWER", "COUNT", "MATCH", "INDEX", "ROUND", "INT", "SIGN", "AND", "OR", "NOT",
}


EXCEL_MAX_FORMULA = 8192


EXCEL_MAX_ARGS = 255


EXCEL_MAX_NESTING = 64


_BAD_SHEET = re.compile(r"[\\/?*\[\]:]")



def lint(book):
    """Excel's limits and portability: formula length, argument count, nesting, functions, names."""
    problems = []
    for name in book.sheets:
        if not 1 <= len(name) <= 31 or _BAD_SHEET.search(name) or name.startswith("'") or name.endswith("'"):
            problems.append(f"sheet name {name!r} is not valid in Excel (1-31 characters, none of \\ / ? * [ ] :)")
    seen_functions = set()
    for (sheet, row, col), text in book.formulas.items():
        where = cell_name(sheet, row, col)
        if len(text) + 1 > EXCEL_MAX_FORMULA:
            problems.append(f"{where}: formula of {len(text) + 1} characters (Excel's limit is 8,192)")
        if text.count("(") > EXCEL_MAX_NESTING or text.count(",") >= EXCEL_MAX_ARGS:
            depth, args, worst_depth, worst_args = 0, [0], 0, 0
            for ch in re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"", "", text):
                if ch == "(":
                    depth += 1
                    args.append(0)
                    worst_depth = max(worst_depth, depth)
                elif ch == ")":
                    worst_args = max(worst_args, args.pop() + 1)
                    depth -= 1
                elif ch == ",":
                    args[-1] += 1
            if worst_depth > EXCEL_MAX_NESTING:
                problems.append(f"{where}: nesting {worst_depth} levels deep (Excel's limit is 64)")
            if worst_args > EXCEL_MAX_ARGS:
                problems.append(f"{where}: a function with {worst_args} arguments (Excel's limit is 255)")
        for fn in re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)\(", re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"", "", text)):
            if fn.upper() not in PORTABLE_FUNCTIONS and fn.upper() not in seen_functions:
                seen_functions.add(fn.upper())
                problems.append(f"{where}: function {fn} is not in xlcnn's portable set (Excel 2010+ and LibreOffice)")
    return problems



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



def check_cached(book, values_of):
    """Formula cells whose cached value disagrees with the evaluator's value."""
    bad = []
    for key in book.formulas:
        cached = book.cached.get(key)
        got = values_of(*key)
        if isinstance(got, np.ndarray):
            got = float(got.reshape(-1)[0])
        if not finite(cached):
            if cached is None or (isinstance(cached, str) and not np.isfinite(got)):
                if cached is None:
                    bad.append((key, got, None))
                continue
            if isinstance(cached, str) and cached.startswith("#"):
                bad.append((key, got, cached))
            continue
        if not np.isfinite(got) or abs(got - float(cached)) > CACHED_RTOL * max(1.0, abs(got)):
            bad.append((key, got, cached))
    return bad
