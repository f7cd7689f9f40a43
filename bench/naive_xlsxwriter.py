"""The naive way, for reference (issue #12): plain XlsxWriter, one write_number / write_formula call
per cell, writing the same sheets, cell counts and formula shapes as xlcnn's workbook of the
LeNet-size model (20@5x5 same, pool, 50@5x5 same, pool, dense 500, dense 10; 60,822 formulas,
1,256,864 constants). Values are random: only the time matters. Nothing from xlcnn is imported.

    python bench/naive_xlsxwriter.py [OUT.xlsx]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xlsxwriter
from xlsxwriter.utility import xl_range, xl_range_abs, xl_rowcol_to_cell

R0, C0 = 4, 1   # first row and column of every block, as in xlcnn's sheets


def q(name):
    return "'" + name.replace("'", "''") + "'"


def write(path):
    rng = np.random.default_rng(0)
    counts = {"formulas": 0, "constants": 0}
    wb = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False, "strings_to_formulas": False,
                                         "strings_to_urls": False})
    fmt = wb.add_format({"num_format": "0.000000"})
    wfmt = wb.add_format({"num_format": "0.0000"})

    def number(ws, r, c, v, f=fmt):
        ws.write_number(r, c, v, f)
        counts["constants"] += 1

    def formula(ws, r, c, text, f=fmt):
        ws.write_formula(r, c, "=" + text, f, float(rng.standard_normal()))
        counts["formulas"] += 1

    overview = wb.add_worksheet("overview")

    def conv_weights(name, cout, cin, k):
        """Block (o, i): the k x k kernel from input i to output o, one block row per output; bias in B."""
        ws = wb.add_worksheet(name)
        where = {}
        for o in range(cout):
            r = R0 + 1 + o * (k + 1)
            number(ws, r, C0, float(rng.standard_normal()), wfmt)
            for i in range(cin):
                c = C0 + 4 + i * (k + 1)
                for a in range(k):
                    for b in range(k):
                        number(ws, r + a, c + b, float(rng.standard_normal()), wfmt)
                where[o, i] = (r, c)
            where[o] = (r, C0)
        return where

    def conv(step, name, inputs, size, cout, k, wname, where):
        """'same' convolution: z = sum over input sheets of SUMPRODUCT(clipped window, kernel part)
        + bias, and MAX(0, z) in a block to the right."""
        sheets = []
        half = (k - 1) // 2
        for o in range(cout):
            sname = f"{step} {name} c{o}"
            ws = wb.add_worksheet(sname)
            for i in range(size):
                for j in range(size):
                    a0, a1 = max(0, i - half), min(size - 1, i + k - 1 - half)
                    b0, b1 = max(0, j - half), min(size - 1, j + k - 1 - half)
                    terms = []
                    for ci, src in enumerate(inputs):
                        kr, kc = where[o, ci]
                        window = xl_range(R0 + a0, C0 + b0, R0 + a1, C0 + b1)
                        kernel = xl_range_abs(kr + a0 - i + half, kc + b0 - j + half,
                                              kr + a1 - i + half, kc + b1 - j + half)
                        terms.append(f"SUMPRODUCT({q(src)}!{window},{q(wname)}!{kernel})")
                    br, bc = where[o]
                    bias = f"+{q(wname)}!" + xl_rowcol_to_cell(br, bc, True, True)
                    formula(ws, R0 + i, C0 + j, "+".join(terms) + bias)
            for i in range(size):
                for j in range(size):
                    formula(ws, R0 + i, C0 + size + 1 + j, "MAX(0," + xl_rowcol_to_cell(R0 + i, C0 + j) + ")")
            sheets.append(sname)
        return sheets

    def pool(step, name, inputs, size):
        sheets = []
        for o, src in enumerate(inputs):
            sname = f"{step} {name} c{o}"
            ws = wb.add_worksheet(sname)
            for i in range(size // 2):
                for j in range(size // 2):
                    window = xl_range(R0 + 2 * i, C0 + size + 1 + 2 * j, R0 + 2 * i + 1, C0 + size + 2 + 2 * j)
                    formula(ws, R0 + i, C0 + j, f"MAX({q(src)}!{window})")
            sheets.append(sname)
        return sheets

    def dense(step, name, src, src_col, n_in, units, activation):
        wname = f"{step} {name} w"
        ws = wb.add_worksheet(wname)
        for u in range(units):
            number(ws, R0, C0 + u, float(rng.standard_normal()), wfmt)
        for r in range(n_in):
            for u in range(units):
                number(ws, R0 + 1 + r, C0 + u, float(rng.standard_normal()), wfmt)
        ws = wb.add_worksheet(f"{step} {name}")
        x = q(src) + "!" + xl_range_abs(R0, src_col, R0 + n_in - 1, src_col)
        for u in range(units):
            col = xl_rowcol_to_cell(0, C0 + u)[:-1]
            formula(ws, R0 + u, C0, f"SUMPRODUCT({x},{q(wname)}!{col}${R0 + 2}:{col}${R0 + 1 + n_in})"
                                    f"+{q(wname)}!{col}${R0 + 1}")
        z = [xl_rowcol_to_cell(R0 + u, C0) for u in range(units)]
        if activation == "relu":
            for u in range(units):
                formula(ws, R0 + u, C0 + 1, f"MAX(0,{z[u]})")
        else:
            zr = xl_range_abs(R0, C0, R0 + units - 1, C0)
            er = xl_range_abs(R0, C0 + 1, R0 + units - 1, C0 + 1)
            for u in range(units):
                formula(ws, R0 + u, C0 + 1, f"EXP({z[u]}-MAX({zr}))")
            for u in range(units):
                formula(ws, R0 + u, C0 + 2, f"{xl_rowcol_to_cell(R0 + u, C0 + 1)}/SUM({er})")
        return f"{step} {name}"

    ws = wb.add_worksheet("01 input c0")
    for i in range(28):
        for j in range(28):
            number(ws, R0 + i, C0 + j, float(rng.random()))
    w1 = conv_weights("02 conv1 w", 20, 1, 5)
    c1 = conv("02", "conv1", ["01 input c0"], 28, 20, 5, "02 conv1 w", w1)
    p1 = pool("03", "pool1", c1, 28)
    w2 = conv_weights("04 conv2 w", 50, 20, 5)
    c2 = conv("04", "conv2", p1, 14, 50, 5, "04 conv2 w", w2)
    p2 = pool("05", "pool2", c2, 14)
    ws = wb.add_worksheet("06 flatten")
    n = 0
    for i in range(7):
        for j in range(7):
            for src in p2:
                formula(ws, R0 + n, C0, f"{q(src)}!{xl_rowcol_to_cell(R0 + i, C0 + j)}")
                n += 1
    fc1 = dense("07", "fc1", "06 flatten", C0, n, 500, "relu")
    fc2 = dense("08", "fc2", fc1, C0 + 1, 500, 10, "softmax")
    col = q(fc2) + "!" + xl_range_abs(R0, C0 + 2, R0 + 9, C0 + 2)
    formula(overview, 3, 2, f"MATCH(MAX({col}),{col},0)-1")
    formula(overview, 4, 2, f"MAX({col})")
    for i in range(10):
        formula(overview, 7 + i, 2, q(fc2) + "!" + xl_rowcol_to_cell(R0 + i, C0 + 2))
    wb.close()
    return counts


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="xlcnn-naive-")) / "naive.xlsx"
    t = time.perf_counter()
    counts = write(out)
    seconds = time.perf_counter() - t
    print(f"naive XlsxWriter: {seconds:.2f} s, {counts['formulas']:,} formulas, {counts['constants']:,} constants, "
          f"{out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
