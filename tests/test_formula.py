"""Tests of xlcnn.formula: the reader, the parser and the vectorised evaluator, on small
workbooks written here with XlsxWriter (or by hand, for shared formulas and odd XML)."""

import io
import math
import re
import shutil
import struct
import subprocess
import warnings
import zipfile

import numpy as np
import pytest
import xlsxwriter
from xlsxwriter.utility import xl_col_to_name, xl_rowcol_to_cell

from xlcnn.formula import FormulaError, WorkbookError, cell_name, evaluate, parse, read_workbook
from xlcnn.formula.parser import shift_formula


# --------------------------------------------------------------------------- helpers

def make_book(tmp_path, sheets, name="t.xlsx"):
    """sheets: {sheet name: {A1 address: number | str | bool | None | '=formula'}}."""
    path = tmp_path / name
    wb = xlsxwriter.Workbook(str(path))
    for sheet, cells in sheets.items():
        ws = wb.add_worksheet(sheet)
        for addr, value in cells.items():
            if isinstance(value, str) and value.startswith("="):
                ws.write_formula(addr, value, None, 0)
            elif value is None:
                ws.write_blank(addr, None)
            else:
                ws.write(addr, value)
    wb.close()
    return read_workbook(path)


def calc(tmp_path, formula, cells=None):
    """Value of one formula in Sheet1!Z1 with optional constants in Sheet1."""
    sheet = dict(cells or {})
    sheet["Z1"] = "=" + formula
    book = make_book(tmp_path, {"Sheet1": sheet})
    return evaluate(book).value("Sheet1", 0, 25)


CT = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
      '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
      '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
      '<Default Extension="xml" ContentType="application/xml"/>'
      '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
      "</Types>")
MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"


def handmade(path, sheets, strings=None, sheet_xml=None):
    """A minimal .xlsx: sheets = [(name, part file name, <sheetData> inner XML)].  Parts are
    named freely so that workbook order and file names disagree."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", CT)
        z.writestr("_rels/.rels", f'<Relationships xmlns="{PKG}"><Relationship Id="rId1" '
                   f'Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
        sheet_els = "".join(f'<sheet name="{n}" sheetId="{i + 1}" r:id="rId{i + 1}"/>'
                            for i, (n, _, _) in enumerate(sheets))
        z.writestr("xl/workbook.xml", f'<workbook xmlns="{MAIN}" xmlns:r="{REL}"><sheets>{sheet_els}'
                   "</sheets></workbook>")
        rels = "".join(f'<Relationship Id="rId{i + 1}" Type="{REL}/worksheet" Target="worksheets/{f}"/>'
                       for i, (_, f, _) in enumerate(sheets))
        if strings is not None:
            rels += f'<Relationship Id="rIdS" Type="{REL}/sharedStrings" Target="strings.xml"/>'
            z.writestr("xl/strings.xml", f'<sst xmlns="{MAIN}">' + "".join(strings) + "</sst>")
        z.writestr("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="{PKG}">{rels}</Relationships>')
        for _, f, data in sheets:
            xml = (sheet_xml or (lambda d: f'<worksheet xmlns="{MAIN}"><sheetData>{d}</sheetData></worksheet>'))(data)
            z.writestr(f"xl/worksheets/{f}", xml)
    return path


# --------------------------------------------------------------------------- operators

@pytest.mark.parametrize("formula, expected", [
    ("-2^2", 4.0),
    ("2+3*4^2", 50.0),
    ("2^3^2", 64.0),            # ^ is left-associative in Excel
    ("2*-3^2", 18.0),
    ("(1+2)*3", 9.0),
    ("10/4", 2.5),
    ("2-3-4", -5.0),
    ("-(-3)", 3.0),
    ("+3", 3.0),
    ("1E-05*2", 2e-05),
    ("1.5e2", 150.0),
    ("50%", 0.5),
    ("1<2", 1.0),
    ("2<=2", 1.0),
    ("3>=4", 0.0),
    ("1=1", 1.0),
    ("1<>1", 0.0),
    ("2>1", 1.0),
    ("1+2=3", 1.0),             # comparison binds loosest
    ("TRUE+1", 2.0),
    ("(2+3)*(4-1)/5", 3.0),
])
def test_operators_and_precedence(tmp_path, formula, expected):
    assert calc(tmp_path, formula) == pytest.approx(expected, rel=1e-15)


def test_concatenation_and_text_results(tmp_path):
    book = make_book(tmp_path, {"S": {"A1": '="ab"&"cd"', "A2": '=1&"x"', "A3": '=IF(1>0,"yes","no")',
                                      "A4": '="a"="A"'}})
    res = evaluate(book)
    assert res.value("S", 0, 0) == "abcd"
    assert res.value("S", 1, 0) == "1x"
    assert res.value("S", 2, 0) == "yes"
    assert res.value("S", 3, 0) == 1.0  # text compares case-insensitively


def test_parse_tree_shapes():
    assert parse("=-2^2").op == "^"
    assert parse("A1:B2").first.slot == 0
    tree = parse("SUMPRODUCT('it''s'!$A$1:B2,C3)")
    assert tree.name == "SUMPRODUCT" and tree.args[0].sheet == "it's"
    assert tree.args[0].first.row_abs and tree.args[0].first.col_abs
    assert not tree.args[1].row_abs
    with pytest.raises(FormulaError):
        parse("1+")
    with pytest.raises(FormulaError):
        parse("SUM(A1")


# --------------------------------------------------------------------------- functions

def test_scalar_functions_match_numpy(tmp_path):
    x = [0.3, -1.7, 2.5, 12.0, -0.0004]
    cells = {f"A{i + 1}": v for i, v in enumerate(x)}
    rows = {}
    for i in range(len(x)):
        a = f"A{i + 1}"
        rows.update({f"B{i + 1}": f"=EXP({a})", f"C{i + 1}": f"=TANH({a})", f"D{i + 1}": f"=ABS({a})",
                     f"E{i + 1}": f"=ERF({a})", f"F{i + 1}": f"=INT({a})", f"G{i + 1}": f"=SIGN({a})",
                     f"H{i + 1}": f"=POWER(ABS({a}),1.5)", f"I{i + 1}": f"=SQRT(ABS({a}))",
                     f"J{i + 1}": f"=LN(ABS({a}))", f"K{i + 1}": f"=LOG10(ABS({a}))",
                     f"L{i + 1}": f"=0.5*{a}*(1+ERF({a}/SQRT(2)))",
                     f"M{i + 1}": f"=IF({a}>0,{a},1.6732632423543772*(EXP({a})-1))",
                     f"N{i + 1}": f"=MOD({a},0.7)"})
    cells.update(rows)
    res = evaluate(make_book(tmp_path, {"S": cells}))
    xs = np.array(x)

    def col(c):
        return np.array([res.value("S", i, c) for i in range(len(x))])

    np.testing.assert_allclose(col(1), np.exp(xs), rtol=1e-15)
    np.testing.assert_allclose(col(2), np.tanh(xs), rtol=1e-15)
    np.testing.assert_array_equal(col(3), np.abs(xs))
    np.testing.assert_array_equal(col(4), [math.erf(v) for v in x])
    np.testing.assert_array_equal(col(5), np.floor(xs))
    np.testing.assert_array_equal(col(6), np.sign(xs))
    np.testing.assert_allclose(col(7), np.abs(xs) ** 1.5, rtol=1e-15)
    np.testing.assert_allclose(col(8), np.sqrt(np.abs(xs)), rtol=1e-15)
    np.testing.assert_allclose(col(9), np.log(np.abs(xs)), rtol=1e-15)
    np.testing.assert_allclose(col(10), np.log10(np.abs(xs)), rtol=1e-15)
    np.testing.assert_allclose(col(11), [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x], rtol=1e-15)
    selu = np.where(xs > 0, xs, 1.6732632423543772 * (np.exp(xs) - 1))
    np.testing.assert_allclose(col(12), selu, rtol=1e-15)
    np.testing.assert_allclose(col(13), np.mod(xs, 0.7), rtol=1e-12)


@pytest.mark.parametrize("formula, expected", [
    ("ROUND(2.5,0)", 3.0), ("ROUND(-2.5,0)", -3.0), ("ROUND(1.2345,2)", 1.23),
    ("ROUND(2.675,2)", 2.68), ("ROUND(1234.5,-2)", 1200.0), ("INT(-1.5)", -2.0),
    ("POWER(2,10)", 1024.0), ("ERF(0.5)", math.erf(0.5)), ("ERF(0.1,0.5)", math.erf(0.5) - math.erf(0.1)),
    ("_xlfn.ERF.PRECISE(0.5)", math.erf(0.5)), ("LOG(8,2)", 3.0), ("SIGN(-0.0)", 0.0),
    ("AND(1,0)", 0.0), ("OR(1,0)", 1.0), ("NOT(0)", 1.0),
])
def test_function_values(tmp_path, formula, expected):
    assert calc(tmp_path, formula) == pytest.approx(expected, rel=1e-14, abs=1e-300)


def test_aggregates_ignore_empty_and_text(tmp_path):
    cells = {"A1": 1.0, "A2": "text", "A3": None, "A4": 4.0, "A5": -2.0, "B1": True,
             "C1": "=SUM(A1:A5)", "C2": "=MAX(A1:A5)", "C3": "=MIN(A1:A5)", "C4": "=AVERAGE(A1:A5)",
             "C5": "=COUNT(A1:A5)", "C6": "=SUM(A1:A5,10,A4)", "C7": "=MAX(D1:D3)", "C8": "=MIN(D1:D3)",
             "C9": "=MAX(-5,A3)", "C10": "=A3+1", "C11": "=AVERAGE(A1:A5,3)", "C12": "=SUM(B1)",
             "C13": "=SUMPRODUCT(A1:A5,A1:A5)", "C14": "=COUNT(A1:A5,1,2)", "C15": "=MAX(0,A5)"}
    res = evaluate(make_book(tmp_path, {"S": cells}))
    got = [res.value("S", r, 2) for r in range(15)]
    assert got == [3.0, 4.0, -2.0, 1.0, 3.0, 17.0, 0.0, 0.0, -5.0, 1.0, 1.5, 0.0, 21.0, 5.0, 0.0]


def test_max_and_min_of_single_cells_as_a_relu_writes_them(tmp_path):
    """MAX/MIN over one cell per argument (a ReLU's MAX(0,A1), copied down a column) take the
    cell as it is: numbers, errors that propagate, empty and text cells ignored (no numbers at
    all: 0); single and batched, and a result never shares memory with the sheet it came from."""
    cells = {"A1": 3.0, "A2": -2.0, "A3": None, "A4": "text", "A5": "=0/0", "A6": 0.5}  # A5: #DIV/0! as NaN
    for r in range(1, 7):  # one class each: the same formula down the column
        cells[f"B{r}"] = f"=MAX(0,A{r})"
        cells[f"C{r}"] = f"=MIN(A{r},1)"
        cells[f"D{r}"] = f"=MAX(A{r})"
    cells.update({"E1": "=MAX($A$1)", "E2": "=MIN($A$2,$A$6)"})
    book = make_book(tmp_path, {"S": cells})
    res = evaluate(book)
    col = lambda c: [res.value("S", r, c) for r in range(6)]  # noqa: E731
    assert col(1)[:4] == [3.0, 0.0, 0.0, 0.0] and np.isnan(col(1)[4]) and col(1)[5] == 0.5
    assert col(2)[:4] == [1.0, -2.0, 1.0, 1.0] and np.isnan(col(2)[4]) and col(2)[5] == 0.5
    assert col(3)[:4] == [3.0, -2.0, 0.0, 0.0] and np.isnan(col(3)[4]) and col(3)[5] == 0.5
    assert [res.value("S", 0, 4), res.value("S", 1, 4)] == [3.0, -2.0]
    xb = np.array([1.0, -1.0, 5.0])
    batched = evaluate(book, {("S", 0, 0): xb, ("S", 1, 0): -xb})
    np.testing.assert_array_equal(batched.value("S", 0, 1), [1.0, 0.0, 5.0])
    np.testing.assert_array_equal(batched.value("S", 1, 1), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(batched.value("S", 0, 2), [1.0, -1.0, 1.0])
    np.testing.assert_array_equal(batched.value("S", 0, 4), xb)
    np.testing.assert_array_equal(batched.value("S", 1, 4), [-1.0, 0.5, -5.0])
    from xlcnn.formula.functions import _aggregate
    from xlcnn.formula.values import Rng
    sheet = np.arange(6.0).reshape(1, 6, 1, 1)
    out = _aggregate([Rng(sheet, None)], "max")
    np.testing.assert_array_equal(out, np.arange(6.0)[None])
    assert not np.shares_memory(out, sheet)


def test_sumproduct_many_arrays_and_shape_mismatch(tmp_path):
    a, b, c = np.arange(1, 7.0), np.arange(7, 13.0), np.linspace(-1, 1, 6)
    cells = {}
    for i in range(6):
        cells[f"A{i + 1}"], cells[f"B{i + 1}"], cells[f"C{i + 1}"] = a[i], b[i], c[i]
    cells["E1"] = "=SUMPRODUCT(A1:A6,B1:B6,C1:C6)"
    cells["E2"] = "=SUMPRODUCT(A1:B3,B4:C6)"
    cells["E3"] = "=SUMPRODUCT(A1:A6,B1:B5)"   # #VALUE! in Excel
    cells["E4"] = "=SUMPRODUCT(A1:A6)"
    res = evaluate(make_book(tmp_path, {"S": cells}))
    assert res.value("S", 0, 4) == pytest.approx(np.sum(a * b * c), rel=1e-14)
    assert res.value("S", 1, 4) == pytest.approx(np.sum(np.c_[a[:3], b[:3]] * np.c_[b[3:], c[3:]]), rel=1e-14)
    assert math.isnan(res.value("S", 2, 4))
    assert res.value("S", 3, 4) == 21.0


def test_array_arithmetic_inside_functions(tmp_path):
    cells = {"A1": 1.0, "A2": -2.0, "A3": 3.0, "B1": 10.0, "B2": 20.0, "B3": 30.0,
             "D1": "=SUMPRODUCT((A1:A3>0)*B1:B3)", "D2": "=SUM(A1:A3*B1:B3)", "D3": "=MAX(-A1:A3)",
             "D4": "=SUM(EXP(A1:A3))", "D5": "=SUMPRODUCT(A1:A3-1,B1:B3/10)", "D6": "=SUM(A1:A3*B1:B2)"}
    res = evaluate(make_book(tmp_path, {"S": cells}))
    a, b = np.array([1.0, -2, 3]), np.array([10.0, 20, 30])
    assert res.value("S", 0, 3) == 40.0 and res.value("S", 1, 3) == a @ b
    assert res.value("S", 2, 3) == 2.0
    assert res.value("S", 3, 3) == pytest.approx(np.exp(a).sum(), rel=1e-15)
    assert res.value("S", 4, 3) == pytest.approx((a - 1) @ (b / 10), rel=1e-15)
    assert math.isnan(res.value("S", 5, 3))


def test_match_and_index(tmp_path):
    cells = {"A1": 5.0, "A2": 7.0, "A3": 9.0, "A4": 7.0, "B1": 10.0, "B2": 20.0, "B3": 30.0, "B4": 40.0,
             "D1": "=MATCH(7,A1:A4,0)", "D2": "=MATCH(8,A1:A4,0)", "D3": "=INDEX(B1:B4,3)",
             "D4": "=INDEX(A1:B4,2,2)", "D5": "=INDEX(B1:B4,MATCH(MAX(A1:A4),A1:A4,0))",
             "D6": "=INDEX(A1:A4,9)", "D7": "=MATCH(8,A1:A3,1)", "D8": "=INDEX(A1:B1,1,2)",
             "D9": "=INDEX(A1:B1,2)"}
    res = evaluate(make_book(tmp_path, {"S": cells}))
    got = [res.value("S", r, 3) for r in range(9)]
    assert got[0] == 2.0 and math.isnan(got[1]) and got[2] == 30.0 and got[3] == 20.0
    assert got[4] == 30.0 and math.isnan(got[5]) and got[6] == 2.0 and got[7] == 10.0 and got[8] == 10.0


def test_errors_are_non_finite_without_warnings(tmp_path):
    cells = {"A1": 1000.0, "A2": 0.0, "B1": "=EXP(A1)", "B2": "=1/A2", "B3": "=A2/A2", "B4": "=LN(-1)",
             "B5": "=IF(A1>0,A1,EXP(A1)*1/A2)", "B6": "=B1+1", "B7": "=SQRT(-4)", "B8": "=IF(B3>0,1,2)",
             "B9": "=MAX(B1:B3)", "B10": "=SUM(B2:B3)"}
    book = make_book(tmp_path, {"S": cells})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate(book)
    got = [res.value("S", r, 1) for r in range(10)]
    assert got[0] == np.inf and got[1] == np.inf and math.isnan(got[2]) and math.isnan(got[3])
    assert got[4] == 1000.0 and got[5] == np.inf and math.isnan(got[6]) and math.isnan(got[7])
    assert math.isnan(got[8]) and math.isnan(got[9])


# --------------------------------------------------------------------------- references

def test_sheet_names_with_spaces_and_quotes(tmp_path):
    book = make_book(tmp_path, {
        "it's here": {"A1": 2.0, "B2": 3.0},
        "my sheet": {"A1": 5.0, "A2": 7.0, "B1": 11.0, "B2": 13.0},
        "Out": {"A1": "='it''s here'!A1*'my sheet'!B2", "A2": "=SUM('my sheet'!A1:B2)",
                "A3": "=SUMPRODUCT('my sheet'!$A$1:$B$1,'my sheet'!A2:B2)+'it''s here'!$B$2",
                "A4": "='MY SHEET'!A1"},
    })
    res = evaluate(book)
    assert [res.value("Out", r, 0) for r in range(4)] == [26.0, 36.0, 5 * 7 + 11 * 13 + 3.0, 5.0]


def test_mixed_references_grid(tmp_path):
    cells = {"H1": 0.5}
    for i in range(1, 6):
        cells[f"A{i + 1}"] = float(i)
        cells[xl_rowcol_to_cell(0, i)] = float(10 * i)
    for r in range(1, 6):
        for c in range(1, 6):
            cells[xl_rowcol_to_cell(r, c)] = f"=$A{r + 1}*{xl_rowcol_to_cell(0, c, row_abs=True)}+$H$1"
    res = evaluate(make_book(tmp_path, {"T": cells}))
    got = res.block("T", 1, 1, 5, 5)
    want = np.arange(1, 6.0)[:, None] * (10 * np.arange(1, 6.0))[None, :] + 0.5
    np.testing.assert_array_equal(got, want)


def conv_book(tmp_path, x, k, name="conv.xlsx"):
    """'in' holds x at B2, 'w' holds kernel k at B2 and bias 0.25 at A1; 'out' a valid conv."""
    wb = xlsxwriter.Workbook(str(tmp_path / name))
    ws = wb.add_worksheet("in")
    for r, row in enumerate(x):
        ws.write_row(1 + r, 1, row.tolist())
    ws = wb.add_worksheet("w")
    ws.write(0, 0, 0.25)
    for r, row in enumerate(k):
        ws.write_row(1 + r, 1, row.tolist())
    ws = wb.add_worksheet("out")
    kh, kw = k.shape
    for r in range(x.shape[0] - kh + 1):
        for c in range(x.shape[1] - kw + 1):
            win = f"{xl_rowcol_to_cell(1 + r, 1 + c)}:{xl_rowcol_to_cell(r + kh, c + kw)}"
            ker = f"{xl_rowcol_to_cell(1, 1, True, True)}:{xl_rowcol_to_cell(kh, kw, True, True)}"
            ws.write_formula(2 + r, 3 + c, f"=SUMPRODUCT(in!{win},w!{ker})+w!$A$1", None, 0)
    wb.close()
    return read_workbook(tmp_path / name)


def conv_ref(x, k):
    win = np.lib.stride_tricks.sliding_window_view(x, k.shape)
    return np.einsum("ijkl,kl->ij", win, k) + 0.25


def test_convolution_grid_matches_numpy(tmp_path):
    g = np.random.default_rng(3)
    x, k = g.normal(size=(9, 11)), g.normal(size=(3, 4))
    book = conv_book(tmp_path, x, k)
    res = evaluate(book)
    want = conv_ref(x, k)
    got = res.block("out", 2, 3, 2 + want.shape[0] - 1, 3 + want.shape[1] - 1)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    assert res.value("out", 2, 3) == pytest.approx(want[0, 0], rel=1e-13)
    assert len(book.program.classes) == 1  # the whole grid is one vectorised step


def test_strided_pooling_and_flatten(tmp_path):
    g = np.random.default_rng(4)
    x = g.normal(size=(6, 8))
    sheets = {"a": {xl_rowcol_to_cell(r, c): x[r, c] for r in range(6) for c in range(8)},
              "pool": {}, "flat": {}}
    for r in range(3):
        for c in range(4):
            sheets["pool"][xl_rowcol_to_cell(r, c)] = \
                f"=MAX(a!{xl_rowcol_to_cell(2 * r, 2 * c)}:{xl_rowcol_to_cell(2 * r + 1, 2 * c + 1)})"
            sheets["flat"][f"A{r * 4 + c + 1}"] = f"=pool!{xl_rowcol_to_cell(r, c)}"
    book = make_book(tmp_path, sheets)
    x = book.sheet_array("a")  # XlsxWriter writes 16 significant digits: compare what was read
    res = evaluate(book)
    want = x.reshape(3, 2, 4, 2).max(axis=(1, 3))
    np.testing.assert_array_equal(res.block("pool", 0, 0, 2, 3), want)
    np.testing.assert_array_equal(res.block("flat", 0, 0, 11, 0)[:, 0], want.ravel())
    assert len(book.program.classes) == 2  # strided pooling and the flatten copies: one each


def test_formulas_differing_only_in_digits(tmp_path):
    # same text once digits are removed, but the digits sit elsewhere or are not references
    book = make_book(tmp_path, {
        "c1 x": {"A1": 1.0}, "c x1": {"A1": 2.0},
        "X": {"A1": 5.0, "B1": "=A1*2", "B2": "=A1*3", "C1": "='c1 x'!A1", "C2": "='c x1'!A1",
              "D1": "=LOG10(A1)", "D2": "=LOG(A1)", "D3": "=1.5+A1", "D4": "=15+A1", "D5": "=A1+15"},
        "Y": {"A1": 7.0, "B1": "=A1*2"},
    })
    res = evaluate(book)
    assert [res.value("X", 0, 1), res.value("X", 1, 1), res.value("Y", 0, 1)] == [10.0, 15.0, 14.0]
    assert [res.value("X", 0, 2), res.value("X", 1, 2)] == [1.0, 2.0]
    assert [res.value("X", r, 3) for r in range(5)] == pytest.approx([math.log10(5), math.log10(5), 6.5, 20, 20])


def test_chain_across_sheets_in_any_order(tmp_path):
    # 'c' (first in the workbook) depends on 'b', which depends on 'a'
    book = make_book(tmp_path, {
        "c": {"A1": "=b!A1*2", "A2": "=SUM(b!A1:A3)"},
        "b": {"A1": "=a!A1+1", "A2": "=a!A2+1", "A3": "=A2+A1"},
        "a": {"A1": 1.0, "A2": 2.0},
    })
    res = evaluate(book)
    assert res.value("c", 0, 0) == 4.0 and res.value("c", 1, 0) == 2 + 3 + 5


def test_running_sum_with_expanding_range_and_recurrence(tmp_path):
    x = np.arange(1, 21.0)
    cells = {f"A{i + 1}": v for i, v in enumerate(x)}
    cells["C1"] = "=A1"
    for i in range(20):
        cells[f"B{i + 1}"] = f"=SUM($A$1:A{i + 1})"   # one shape per row
        if i:
            cells[f"C{i + 1}"] = f"=C{i}+A{i + 1}"      # reads its own class
    res = evaluate(make_book(tmp_path, {"S": cells}))
    np.testing.assert_array_equal(res.block("S", 0, 1, 19, 1)[:, 0], np.cumsum(x))
    np.testing.assert_array_equal(res.block("S", 0, 2, 19, 2)[:, 0], np.cumsum(x))


def test_mutual_recurrence_and_overlapping_bounding_boxes(tmp_path):
    cells = {"A1": 1.0, "B1": 1.0}
    for r in range(2, 12):
        cells[f"A{r}"] = f"=B{r - 1}+1"     # two classes that read each other, without a cycle
        cells[f"B{r}"] = f"=A{r}*2"
    # D2, D4, ...: each reads the row above it through a range whose bounding box, over the
    # whole class, covers the class's own cells (a dependency that is not real)
    for r in range(1, 12, 2):
        cells[f"C{r}"] = float(r)
        cells[f"D{r + 1}"] = f"=SUM(C{r}:E{r})"
    res = evaluate(make_book(tmp_path, {"S": cells}))
    a, b = 1.0, 1.0
    for r in range(2, 12):
        a = b + 1
        b = a * 2
    assert res.value("S", 10, 0) == a and res.value("S", 10, 1) == b
    assert [res.value("S", r, 3) for r in range(1, 12, 2)] == [float(r) for r in range(1, 12, 2)]


def test_empty_and_missing_cells(tmp_path):
    book = make_book(tmp_path, {"S": {"A1": "=B7+1", "A2": "=Q100*2", "A3": "=SUM(X1:Z9)", "A4": "=AVERAGE(X1:Z9)",
                                      "A5": "=IF(A1,,5)"}})
    res = evaluate(book)
    assert res.value("S", 0, 0) == 1.0 and res.value("S", 1, 0) == 0.0 and res.value("S", 2, 0) == 0.0
    assert math.isnan(res.value("S", 3, 0))  # #DIV/0!
    assert res.value("S", 4, 0) == 0.0
    assert res.value("S", 50, 50) is None
    assert np.isnan(res.block("S", 0, 1, 1, 1)).all()


# --------------------------------------------------------------------------- batching

def test_batched_overrides_equal_separate_runs(tmp_path):
    g = np.random.default_rng(5)
    x, k = g.normal(size=(5, 5)), g.normal(size=(2, 2))
    book = conv_book(tmp_path, x, k)
    inputs = g.normal(size=(3, 5, 5))
    single = []
    for b in range(3):
        ov = {("in", 1 + r, 1 + c): inputs[b, r, c] for r in range(5) for c in range(5)}
        single.append(evaluate(book, ov).block("out", 2, 3, 5, 6))
        np.testing.assert_allclose(single[-1], conv_ref(inputs[b], k), rtol=1e-13, atol=1e-13)
    ov = {("in", 1 + r, 1 + c): inputs[:, r, c] for r in range(5) for c in range(5)}
    res = evaluate(book, ov)
    assert res.batch == 3
    batched = res.block("out", 2, 3, 5, 6)
    assert batched.shape == (3, 4, 4)
    for b in range(3):
        np.testing.assert_allclose(batched[b], single[b], rtol=1e-15, atol=1e-15)
    v = res.value("out", 2, 3)
    assert v.shape == (3,) and len(set(v.tolist())) == 3
    assert res.value("w", 0, 0).tolist() == [0.25] * 3   # constants broadcast over the batch
    # a scalar override mixed with arrays, and the unbatched run afterwards is unaffected
    assert evaluate(book).value("out", 2, 3) == pytest.approx(conv_ref(x, k)[0, 0], rel=1e-13)


def test_override_of_a_formula_cell_and_mismatched_batch(tmp_path):
    book = make_book(tmp_path, {"S": {"A1": 1.0, "B1": "=A1*2", "C1": "=B1+1"}})
    res = evaluate(book, {("S", 0, 1): 10.0})
    assert res.value("S", 0, 1) == 10.0 and res.value("S", 0, 2) == 11.0
    with pytest.raises(ValueError):
        evaluate(book, {("S", 0, 0): np.zeros(2), ("S", 0, 1): np.zeros(3)})


def test_targets_evaluate_what_the_cells_need_and_nothing_else(tmp_path):
    """targets: the formulas the asked cells depend on run (here B1 for C1's neighbour), the
    rest read as no number; constants in the asked rectangle, beyond every formula, still show."""
    book = make_book(tmp_path, {"S": {"A1": 1.0, "B1": "=A1*2", "C1": 5.0, "D1": "=B1+1", "A3": "=B1*10",
                                      "H9": 7.0}})
    res = evaluate(book, {("S", 0, 0): np.array([1.0, 3.0])}, targets=[("S", 0, 0, 0, 2), ("S", 8, 7, 8, 7)])
    np.testing.assert_array_equal(res.block("S", 0, 0, 0, 2), [[[1.0, 2.0, 5.0]], [[3.0, 6.0, 5.0]]])
    assert res.block("S", 8, 7, 8, 7).tolist() == [[[7.0]], [[7.0]]]
    assert np.isnan(res.block("S", 0, 3, 0, 3)).all() and np.isnan(res.block("S", 2, 0, 2, 0)).all()
    full = evaluate(book, {("S", 0, 0): np.array([1.0, 3.0])})
    assert full.block("S", 0, 3, 0, 3).ravel().tolist() == [3.0, 7.0]


def test_batched_lenet_like_pipeline(tmp_path):
    """conv -> relu -> pool -> dense -> softmax over a batch, against numpy."""
    g = np.random.default_rng(6)
    k = g.normal(size=(3, 3))
    wd = g.normal(size=(4, 3))  # pooled 2x2 (flattened 4) -> 3 logits
    wb = xlsxwriter.Workbook(str(tmp_path / "net.xlsx"))
    ws = wb.add_worksheet("in")
    for r in range(6):
        ws.write_row(r, 0, [0.0] * 6)
    ws = wb.add_worksheet("w")
    for r in range(3):
        ws.write_row(r, 0, k[r].tolist())
    for r in range(4):
        ws.write_row(5 + r, 0, wd[r].tolist())
    conv = wb.add_worksheet("conv")
    for r in range(4):
        for c in range(4):
            win = f"{xl_rowcol_to_cell(r, c)}:{xl_rowcol_to_cell(r + 2, c + 2)}"
            conv.write_formula(r, c, f"=MAX(0,SUMPRODUCT(in!{win},w!$A$1:$C$3))")
    pool = wb.add_worksheet("pool")
    for r in range(2):
        for c in range(2):
            pool.write_formula(r * 2 + c, 0, f"=MAX(conv!{xl_rowcol_to_cell(2 * r, 2 * c)}:"
                                             f"{xl_rowcol_to_cell(2 * r + 1, 2 * c + 1)})")
    out = wb.add_worksheet("out")
    for j in range(3):
        col = xl_col_to_name(j)
        out.write_formula(0, j, f"=SUMPRODUCT(pool!$A$1:$A$4,w!{col}$6:{col}$9)")
        out.write_formula(1, j, f"=EXP({xl_rowcol_to_cell(0, j)}-MAX($A$1:$C$1))")
        out.write_formula(2, j, f"={xl_rowcol_to_cell(1, j)}/SUM($A$2:$C$2)")
    wb.close()
    book = read_workbook(tmp_path / "net.xlsx")
    imgs = g.normal(size=(4, 6, 6))
    res = evaluate(book, {("in", r, c): imgs[:, r, c] for r in range(6) for c in range(6)})
    for b in range(4):
        a = np.maximum(0, np.einsum("ijkl,kl->ij", np.lib.stride_tricks.sliding_window_view(imgs[b], (3, 3)), k))
        p = a.reshape(2, 2, 2, 2).max(axis=(1, 3)).ravel()
        z = p @ wd
        e = np.exp(z - z.max())
        np.testing.assert_allclose(res.block("out", 2, 0, 2, 2)[b, 0], e / e.sum(), rtol=1e-13)


# --------------------------------------------------------------------------- errors

def test_cycle_names_a_cell(tmp_path):
    book = make_book(tmp_path, {"03 conv c1": {"A1": 1.0, "B4": "=C4+1", "C4": "=B4*2", "D4": "=A1"}})
    with pytest.raises(FormulaError) as e:
        evaluate(book)
    assert e.value.cell in ("'03 conv c1'!B4", "'03 conv c1'!C4")
    assert e.value.cell in str(e.value) and "circular" in str(e.value)


def test_self_reference_is_a_cycle(tmp_path):
    book = make_book(tmp_path, {"S": {"A1": "=A1+1"}})
    with pytest.raises(FormulaError, match="circular") as e:
        evaluate(book)
    assert e.value.cell == "S!A1"


def test_range_cycle_is_a_cycle(tmp_path):
    book = make_book(tmp_path, {"S": {"A1": 1.0, "A2": "=SUM(A1:A3)", "A3": 2.0}})
    with pytest.raises(FormulaError, match="circular") as e:
        evaluate(book)
    assert e.value.cell == "S!A2"


@pytest.mark.parametrize("formula, message", [
    ("=FOO(1)", "unsupported function FOO"),
    ("=EXPM1(1)", "unsupported function EXPM1"),
    ("=nosuch!A1", "unknown sheet"),
    ("='no such'!A1+1", "unknown sheet"),
    ("=SUM(1,", "parse|ends"),
    ("=#REF!+1", "outside the sheet grid"),
    ("=SUM(A:A)", "unknown name|unsupported name|cannot parse|unexpected"),
    ("=nosuchname+1", "unknown name .nosuchname."),
    ("=IF(1)", "IF takes"),
])
def test_bad_formulas_name_the_cell(tmp_path, formula, message):
    book = make_book(tmp_path, {"03 conv c1": {"A1": 1.0, "B4": formula}})
    with pytest.raises(FormulaError, match=message) as e:
        evaluate(book)
    assert e.value.cell == "'03 conv c1'!B4"


def test_reference_outside_grid(tmp_path):
    handmade(tmp_path / "g.xlsx", [("S", "s.xml", '<row r="1"><c r="A1"><f>ZZZ1+1</f></c></row>')])
    with pytest.raises(FormulaError, match="outside the sheet grid") as e:
        evaluate(read_workbook(tmp_path / "g.xlsx"))
    assert e.value.cell == "S!A1"


def test_shift_formula_moves_relative_parts_only():
    assert shift_formula("SUM($A$1:A1)+'it''s 100%'!B$2*\"A1\"", 2, 1) == \
        "SUM($A$1:B3)+'it''s 100%'!C$2*\"A1\""
    assert shift_formula("A1+$B2+LOG10(C$3)", -1, 0) == "#REF!+$B1+LOG10(C$3)"
    assert shift_formula("XFD1+1", 0, 1) == "#REF!+1"


def test_cell_name_quoting():
    assert cell_name("03 conv c1", 3, 1) == "'03 conv c1'!B4"
    assert cell_name("Sheet1", 0, 27) == "Sheet1!AB1"
    assert cell_name("it's", 0, 0) == "'it''s'!A1"
    assert cell_name("A1", 0, 0) == "'A1'!A1"


# --------------------------------------------------------------------------- reader

def test_reader_values_cached_and_arrays(tmp_path):
    path = tmp_path / "r.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Data")
    ws.write("A1", 1.5)
    ws.write("B1", "hello")
    ws.write("C1", True)
    ws.write("A2", -3)
    ws.write_formula("D1", "=A1*2", None, 3)
    ws.write_formula("D2", '="x"&"y"', None, "xy")
    ws.write_formula("D3", "=1/0", None, "#DIV/0!")
    ws.write_formula("D4", "=A1>1", None, True)
    wb.add_worksheet("Empty")
    wb.close()
    book = read_workbook(path)
    assert book.sheets == ["Data", "Empty"]
    assert book.value("Data", 0, 0) == 1.5 and book.value("Data", 0, 1) == "hello"
    assert book.value("Data", 0, 2) is True and book.value("Data", 1, 0) == -3.0
    assert book.value("Data", 0, 3) is None and book.value("Data", 9, 9) is None
    assert book.formulas[("Data", 0, 3)] == "A1*2"
    assert book.cached[("Data", 0, 3)] == 3.0 and book.cached[("Data", 1, 3)] == "xy"
    assert book.cached[("Data", 2, 3)] == "#DIV/0!" and book.cached[("Data", 3, 3)] is True
    assert book.constants[("Data", 0, 1)] == "hello" and ("Data", 0, 3) not in book.constants
    assert len(book.constants) == 4 and set(book.constants) == {("Data", 0, 0), ("Data", 0, 1),
                                                                 ("Data", 0, 2), ("Data", 1, 0)}
    arr = book.sheet_array("Data")
    assert arr.shape == (4, 4) and arr[0, 0] == 1.5 and arr[1, 0] == -3
    assert np.isnan(arr[0, 1]) and np.isnan(arr[0, 2]) and np.isnan(arr[0, 3])
    assert book.sheet_array("Empty").shape == (0, 0)
    res = evaluate(book)
    assert res.value("Data", 0, 3) == 3.0 and res.value("Data", 0, 1) == "hello"
    assert res.value("Data", 0, 2) is True and res.value("Data", 3, 3) == 1.0


def test_large_numeric_block_reads_exactly(tmp_path):
    g = np.random.default_rng(7)
    W = g.normal(size=(300, 70))
    wb = xlsxwriter.Workbook(str(tmp_path / "w.xlsx"))
    ws = wb.add_worksheet("w")
    for r in range(300):
        ws.write_row(r + 3, 2, W[r].tolist())
    ws.write(1, 0, "title")
    ws.write_row(400, 5, [1.0, 2.0])  # a short row after a gap
    wb.close()
    arr = read_workbook(tmp_path / "w.xlsx").sheet_array("w")
    written = np.vectorize(lambda v: float("%.16G" % v))(W)  # XlsxWriter's number format
    np.testing.assert_array_equal(arr[3:303, 2:72], written)
    assert arr.shape == (401, 72) and arr[400, 5] == 1.0 and arr[400, 6] == 2.0
    assert np.isnan(arr[1, 0]) and np.isnan(arr[0]).all()


SHARED = (
    '<row r="1"><c r="A1"><v>1</v></c><c r="B1"><v>10</v></c>'
    '<c r="C1"><f t="shared" ref="C1:C4" si="0">A1*2+$B$1</f><v>12</v></c>'
    '<c r="D1"><f t="shared" ref="D1:E2" si="1">SUM($A$1:A1)</f><v>1</v></c>'
    '<c r="E1"><f t="shared" si="1"/><v>11</v></c></row>'
    '<row r="2"><c r="A2"><v>2</v></c><c r="C2"><f t="shared" si="0"/><v>14</v></c>'
    '<c r="D2"><f t="shared" si="1"/><v>3</v></c><c r="E2"><f t="shared" si="1"/><v>13</v></c></row>'
    '<row r="3"><c r="A3"><v>3</v></c><c r="C3"><f t="shared" si="0"/><v>16</v></c></row>'
    '<row r="4"><c r="A4"><v>4</v></c><c r="C4"><f t="shared" si="0"/><v>18</v></c></row>'
)


def test_shared_formulas_are_expanded(tmp_path):
    book = read_workbook(handmade(tmp_path / "s.xlsx", [("S", "sheet9.xml", SHARED)]))
    assert book.formulas[("S", 3, 2)] == "A4*2+$B$1"
    assert book.formulas[("S", 0, 4)] == "SUM($A$1:B1)"
    assert book.formulas[("S", 1, 4)] == "SUM($A$1:B2)"
    res = evaluate(book)
    for key, cached in book.cached.items():
        assert res.value(*key) == cached, key


def _letter(c):
    return "ABCDEFGHIJ"[c]


def test_shared_formulas_copies_compile_from_the_master_and_equal_their_texts(tmp_path):
    """Copies of a shared formula (the bulk pattern, and copies the pattern leaves to the
    per-cell path) compile from the master's references moved, never from texts; they equal the
    same formulas written out one by one, texts, lengths and values; a copy whose reference
    leaves the grid is #REF! (grouped by its text)."""
    x = np.arange(1.0, 43.0).reshape(6, 7) / 7
    grid = "".join(f'<row r="{r + 1}">' + "".join(f'<c r="{_letter(c)}{r + 1}"><v>{float(x[r, c])!r}</v></c>'
                                                  for c in range(7)) + "</row>" for r in range(6))

    def conv(r, c):  # the formula written at (r, c), 0-based, spelt by hand
        return (f"SUMPRODUCT(inp!{_letter(c - 1)}{r}:{_letter(c)}{r + 1},$H$1:$I$2)"
                f"+inp!$A{r}*2+LOG10(inp!{_letter(c - 1)}$1)")

    cells, plain = {}, {}
    for r in range(1, 5):
        for c in range(1, 5):
            cells[(r, c)] = ('<f t="shared" ref="B2:E5" si="0">' + conv(r, c) + "</f>" if (r, c) == (1, 1)
                             else '<f t="shared" si="0"/>')
            plain[(r, c)] = conv(r, c)
    cells[(0, 6)] = '<f t="shared" si="7"/>'        # above its master: inp!A0 is #REF!
    cells[(1, 6)] = '<f t="shared" ref="G1:G3" si="7">inp!A1*3</f>'
    cells[(2, 6)] = '<f t="shared" si="7"/>'
    plain[(0, 6)], plain[(1, 6)], plain[(2, 6)] = "inp!#REF!*3", "inp!A1*3", "inp!A2*3"
    rows = {}
    for (r, c), f in sorted(cells.items()):
        t = ' t="e"' if (r, c) == (0, 6) else ' s="1"'   # an error's t= sends the copy the slow way
        v = "#REF!" if (r, c) == (0, 6) else "0.5"
        rows.setdefault(r, []).append(f'<c r="{_letter(c)}{r + 1}"{t}>{f}<v>{v}</v></c>')
    weights = '<c r="H1"><v>0.5</v></c><c r="I1"><v>-1</v></c>'
    body = "".join(f'<row r="{r + 1}">' + "".join(rows.get(r, [])) + (weights if r == 0 else "") + "</row>"
                   for r in range(6))
    body = body.replace('<row r="2">', '<row r="2"><c r="H2"><v>2</v></c><c r="I2"><v>0.25</v></c>', 1)
    shared = read_workbook(handmade(tmp_path / "s.xlsx", [("inp", "a.xml", grid), ("S", "b.xml", body)]))
    written = "".join(f'<row r="{r + 1}">' + "".join(
        f'<c r="{_letter(c)}{r + 1}"><f>{plain[(r, c)]}</f></c>' for c in range(7) if (r, c) in plain)
        + "</row>" for r in range(6))
    written = written.replace('<row r="1">', '<row r="1">' + weights, 1).replace(
        '<row r="2">', '<row r="2"><c r="H2"><v>2</v></c><c r="I2"><v>0.25</v></c>', 1)
    one_by_one = read_workbook(handmade(tmp_path / "p.xlsx", [("inp", "a.xml", grid), ("S", "b.xml", written)]))

    assert {k[1:]: t for k, t in shared.formulas.items() if k[0] == "S"} == plain
    rows_, cols_, texts = shared.formula_cells("S")
    np.testing.assert_array_equal(shared.formula_lengths("S"), [len(t) for t in texts])
    assert [g[2:] for g in shared.shared_formulas("S")] == [(conv(1, 1), 1, 1), ("inp!A1*3", 1, 6)]
    assert texts[-1] == texts[len(texts) - 1] and texts[1:3] == [texts[1], texts[2]]
    with pytest.raises(IndexError):
        texts[-len(texts) - 1]
    with pytest.raises(IndexError):
        texts[len(texts)]
    with pytest.raises(FormulaError, match=r"S!G1: reference outside the sheet grid \(#REF!\)"):
        evaluate(shared)  # as for the same text written out: a broken reference is refused
    from xlcnn.formula import compile_book
    body = re.sub(r'<c r="G1".*?</c>', "", body)
    written = re.sub(r'<c r="G1".*?</c>', "", written)
    del plain[(0, 6)]
    shared = read_workbook(handmade(tmp_path / "s2.xlsx", [("inp", "a.xml", grid), ("S", "b.xml", body)]))
    one_by_one = read_workbook(handmade(tmp_path / "p2.xlsx", [("inp", "a.xml", grid), ("S", "b.xml", written)]))
    prog = compile_book(shared)
    copies = sum(stop - start for start, stop, *_ in shared.shared_formulas("S"))
    assert copies == 16 and len(prog.groups) == 2  # each copy in its master's class
    a, b = evaluate(shared), evaluate(one_by_one)
    for (r, c) in plain:
        assert np.array_equal(a.value("S", r, c), b.value("S", r, c), equal_nan=True), (r, c)
    w = np.array([[0.5, -1.0], [2.0, 0.25]])
    for r in range(1, 5):
        for c in range(1, 5):
            want = (x[r - 1:r + 1, c - 1:c + 1] * w).sum() + x[r - 1, 0] * 2 + np.log10(x[0, c - 1])
            assert a.value("S", r, c) == pytest.approx(want, rel=1e-13)
    assert a.value("S", 2, 6) == x[1, 0] * 3
    orphan = body.replace('ref="G1:G3" si="7"', 'ref="G1:G3" si="8"')
    with pytest.raises(FormulaError, match="si=7 has no master"):
        read_workbook(handmade(tmp_path / "o.xlsx", [("inp", "a.xml", grid), ("S", "b.xml", orphan)]))


def test_sheet_order_from_workbook_xml_and_string_kinds(tmp_path):
    strings = ["<si><t>plain</t></si>", "<si><r><t>ri</t></r><r><t>ch</t></r><rPh><t>x</t></rPh></si>",
               "<si><t>a&amp;b_x000D_</t></si>"]
    sheets = [("Zeta", "sheet1.xml", '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c>'
                                     '<c r="C1" t="s"><v>2</v></c><c r="D1" t="inlineStr"><is><t>inl</t></is></c>'
                                     '<c r="E1" t="b"><v>0</v></c><c r="F1" t="e"><v>#N/A</v></c>'
                                     '<c r="G1" s="3"/><c r="H1" t="n"><v>2.5</v></c></row>'),
              ("Alpha", "a.xml", '<row r="2"><c r="B2"><f>Zeta!H1*2</f><v>5</v></c>'
                                 '<c r="C2" t="str"><f>Zeta!A1&amp;"!"</f><v>plain!</v></c>'
                                 '<c r="D2" t="e"><f>Zeta!F1</f><v>#N/A</v></c></row>')]
    book = read_workbook(handmade(tmp_path / "o.xlsx", sheets, strings=strings))
    assert book.sheets == ["Zeta", "Alpha"]
    assert [book.value("Zeta", 0, c) for c in range(8)] == ["plain", "rich", "a&b\r", "inl", False, "#N/A",
                                                            None, 2.5]
    assert book.cached[("Alpha", 1, 2)] == "plain!" and book.cached[("Alpha", 1, 3)] == "#N/A"
    res = evaluate(book)
    assert res.value("Alpha", 1, 1) == 5.0
    assert math.isnan(res.value("Alpha", 1, 3))  # the error value propagates


def test_namespaced_xml_and_cells_without_r(tmp_path):
    body = ('<x:row r="2"><x:c r="A2"><x:v>4</x:v></x:c><x:c><x:v>6</x:v></x:c>'
            '<x:c><x:f>A2+B2</x:f></x:c></x:row><x:row><x:c><x:v>1</x:v></x:c></x:row>')
    def xml(d):
        return (f'<x:worksheet xmlns:x="{MAIN}"><x:sheetData>{d}</x:sheetData></x:worksheet>')
    book = read_workbook(handmade(tmp_path / "n.xlsx", [("N", "n.xml", body)], sheet_xml=xml))
    assert book.value("N", 1, 1) == 6.0 and book.value("N", 2, 0) == 1.0
    assert book.formulas[("N", 1, 2)] == "A2+B2"
    assert evaluate(book).value("N", 1, 2) == 10.0


def test_openpyxl_written_workbook(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "op sheet"
    ws["A1"], ws["A2"], ws["A3"] = 2, 3.5, "label"
    ws["B1"] = "=SUM(A1:A3)*2"
    wb.save(tmp_path / "op.xlsx")
    book = read_workbook(tmp_path / "op.xlsx")
    assert book.cached[("op sheet", 0, 1)] is None
    assert book.value("op sheet", 2, 0) == "label"
    assert evaluate(book).value("op sheet", 0, 1) == 11.0


def test_not_a_zip(tmp_path):
    p = tmp_path / "fake.xlsx"
    p.write_text("this is not a workbook")
    with pytest.raises(WorkbookError, match="not a zip"):
        read_workbook(p)
    assert issubclass(WorkbookError, ValueError)


def _zip_with_declared_size(size, compressed=b"x" * 1000):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/workbook.xml", compressed)
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = struct.pack("<I", size)  # uncompressed size in the central directory
    return bytes(data)


def test_zip_bomb_refused_before_inflating(tmp_path):
    p = tmp_path / "bomb.xlsx"
    p.write_bytes(_zip_with_declared_size(0xFFFFFFF0))  # declares ~4 GiB
    with pytest.raises(WorkbookError, match="refusing"):
        read_workbook(p)
    p.write_bytes(_zip_with_declared_size(150 << 20))  # 150 MB from a few bytes: ratio
    with pytest.raises(WorkbookError, match="zip bomb"):
        read_workbook(p)


def test_size_limits_are_parameters_and_lies_are_caught(tmp_path):
    book_path = tmp_path / "small.xlsx"
    make_book(tmp_path, {"S": {"A1": 1.0}}, name="small.xlsx")
    with pytest.raises(WorkbookError, match="refusing"):
        read_workbook(book_path, max_total_size=1000)
    p = tmp_path / "liar.xlsx"
    p.write_bytes(_zip_with_declared_size(10))  # inflates beyond what it declares
    with pytest.raises(WorkbookError):
        read_workbook(p)


# --------------------------------------------------------------------------- LibreOffice

@pytest.mark.libreoffice
@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) not installed")
def test_agrees_with_libreoffice_recalculation(tmp_path):
    """Round-trip through .ods makes LibreOffice recalculate and cache its own values."""
    g = np.random.default_rng(8)
    x, k = g.normal(size=(7, 7)), g.normal(size=(3, 3))
    conv_book(tmp_path, x, k, name="lo.xlsx")
    wb_path = tmp_path / "lo.xlsx"
    for fmt, src in (("ods", wb_path), ("xlsx", tmp_path / "ods" / "lo.ods")):
        out = tmp_path / ("ods" if fmt == "ods" else "back")
        subprocess.run(["soffice", "--headless", "--convert-to", fmt, "--outdir", str(out), str(src)],
                       check=True, capture_output=True, timeout=180)
    book = read_workbook(tmp_path / "back" / "lo.xlsx")
    res = evaluate(book)
    assert len(book.formulas) == 25
    for key, cached in book.cached.items():
        assert res.value(*key) == pytest.approx(cached, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(res.block("out", 2, 3, 6, 7), conv_ref(x, k), rtol=1e-12)


# --------------------------------------------------------------------------- grouping and fusion

import importlib  # noqa: E402

program_module = importlib.import_module("xlcnn.formula.program")
from xlcnn.formula.grouping import group_formulas, skeleton  # noqa: E402
from xlcnn.formula.parser import SPLIT, col_index  # noqa: E402


def group_one_by_one(texts):
    """Every formula its own group, its references read by the tokenizer: the reference the
    vectorised engine must agree with."""
    out = {}
    for i, text in enumerate(texts):
        refs = [m for m in SPLIT.finditer(text) if m.group(3) is not None]
        rows = np.array([[int(m.group(5)) - 1 for m in refs]], np.int64).reshape(1, -1)
        cols = np.array([[col_index(m.group(3)) for m in refs]], np.int64).reshape(1, -1)
        out[("one", i)] = [(np.array([i]), rows, cols)]
    return {tuple(skeleton(texts[k[1]])) + (k,): v for k, v in out.items()}


def evaluate_one_by_one(book, monkeypatch, overrides=None):
    """Evaluate with every cell in its own class (no grouping, no shared matrix product)."""
    with monkeypatch.context() as m:
        m.setattr(program_module, "group_formulas", group_one_by_one)
        m.setattr(program_module, "shifted_refs", lambda *a: None)  # shared formulas' copies as texts too
        m.setattr(program_module, "parse", lambda key: parse(list(key[:-1])))
        book.program = None
        res = evaluate(book, overrides=overrides)
    book.program = None
    return res



def _groups_as_the_tokenizer_reads(texts):
    """group_formulas(texts), checked cell by cell against the tokenizer: every text's group key is
    its skeleton, its rows and columns are the references the tokenizer finds, every text is grouped."""
    groups = group_formulas(texts)
    seen = []
    for key, chunks in groups.items():
        for idx, rows, cols in chunks:
            for i, r, c in zip(idx.tolist(), rows, cols):
                text = texts[i]
                assert skeleton(text) == key, text
                refs = [m for m in SPLIT.finditer(text) if m.group(3) is not None]
                assert r.tolist() == [int(m.group(5)) - 1 for m in refs], text
                assert c.tolist() == [col_index(m.group(3)) for m in refs], text
                seen.append(i)
    assert sorted(seen) == list(range(len(texts)))
    return groups

def test_grouping_reads_references_like_the_tokenizer():
    texts = ["A1+$B$2*C$3", "A2+$B$2*C$3", "AB10+$B$2*ZZ$3", "A1+B2*C3", "$A1+B2*C3", "B1+$B$2*C$3",
             "SUM(A1:B2)", "SUM(A10:B20)", "MAX(A1:B2)", "ABS(A1)", "EXP(A1)", "EXP(A9)", "LOG10(A1)",
             "LOG(A10)", "'s 1'!A1+1", "'s 2'!A1+1", "'日本'!B7*2", "'日本'!C8*2", "A1*2", "A2*3",
             "\"A1\"&B2", "\"A2\"&B2", "1.5+A1", "15+A1", "A1+15"]
    groups = _groups_as_the_tokenizer_reads(texts)
    # the same shape with other letters and digits is one group; other functions are not
    assert sum(len(idx) for idx, _, _ in groups[skeleton("A1+$B$2*C$3")]) == 4
    assert skeleton("ABS(A1)") != skeleton("EXP(A1)")


def test_vectorised_equals_one_by_one_on_hand_written_formulas(tmp_path, monkeypatch):
    g = np.random.default_rng(7)
    x, k = g.normal(size=(7, 8)), g.normal(size=(2, 3, 3))
    sheets = {"in": {}, "w": {"A1": 0.5, "A2": -0.25}, "o1": {}, "o2": {}, "mix": {}}
    for r in range(7):
        for c in range(8):
            sheets["in"][xl_rowcol_to_cell(r, c)] = x[r, c]
    for ch in range(2):
        for r in range(3):
            for c in range(3):
                sheets["w"][xl_rowcol_to_cell(4 * ch + 4 + r, 1 + c)] = k[ch, r, c]
    for ch, out in enumerate(("o1", "o2")):  # one convolution formula on two sheets
        wr = 4 * ch + 4
        ker = f"w!$B${wr + 1}:$D${wr + 3}"
        for r in range(5):
            for c in range(6):
                win = f"in!{xl_rowcol_to_cell(r, c)}:{xl_rowcol_to_cell(r + 2, c + 2)}"
                half = f"in!{xl_rowcol_to_cell(r, c)}:{xl_rowcol_to_cell(r + 2, c)}"
                sheets[out][xl_rowcol_to_cell(r, c)] = (
                    f"=SUMPRODUCT({win},{ker})+w!$A${ch + 1}+SUMPRODUCT({half},w!$B${wr + 1}:$B${wr + 3})")
    for r in range(5):  # mixed absolute and relative references, a running sum, a text range
        sheets["mix"][f"A{r + 1}"] = f"=$B$1*in!A{r + 1}+in!$C{r + 2}*in!D$1"
        sheets["mix"][f"B{r + 2}"] = f"=SUM(mix!$A$1:A{r + 1})"
        sheets["mix"][f"C{r + 1}"] = f"=SUMPRODUCT(mix!E1:E3,in!A{r + 1}:A{r + 3})+SUMPRODUCT(in!B1:B3,in!C1:C3)"
    sheets["mix"].update({"B1": 2.0, "E1": 1.5, "E2": "text", "E3": True})
    book = make_book(tmp_path, sheets)
    fast = evaluate(book)
    classes = book.program.classes
    assert sum(c.hosts is not None for c in classes) >= 1  # o1 and o2 together
    from xlcnn.formula.schedule import by_sheet
    for c in classes:  # a class over many sheets lies sheet by sheet: each sheet's part a slice
        if c.hosts is not None:
            assert (np.diff(c.hosts) >= 0).all()
            assert all(isinstance(sel, slice) for _, sel, _, _ in by_sheet(c, None))
    plans = [c.gather.get("dot") for c in classes if "dot" in c.gather]
    assert any(p is not False and p[2] for p in plans)  # a matrix product was used...
    assert any(p is False for p in plans)  # ...and the text range fell back to SUMPRODUCT
    slow = evaluate_one_by_one(book, monkeypatch)
    for sheet, (r1, c1) in {"o1": (4, 5), "o2": (4, 5), "mix": (5, 2)}.items():
        np.testing.assert_allclose(fast.block(sheet, 0, 0, r1, c1), slow.block(sheet, 0, 0, r1, c1),
                                   rtol=1e-13, atol=1e-13)
    # and against NumPy: text and TRUE in a SUMPRODUCT range count as 0
    want = x[0:3, 0] @ np.array([1.5, 0, 0]) + x[0:3, 1] @ x[0:3, 2]
    assert fast.value("mix", 0, 2) == pytest.approx(want, rel=1e-13)
    xb = np.stack([x[0, 0] + np.arange(3.0)])[0]
    fast_b = evaluate(book, overrides={("in", 0, 0): xb})
    slow_b = evaluate_one_by_one(book, monkeypatch, overrides={("in", 0, 0): xb})
    np.testing.assert_allclose(fast_b.block("o1", 0, 0, 4, 5), slow_b.block("o1", 0, 0, 4, 5), rtol=1e-13)


def test_vectorised_equals_one_by_one_on_an_xlcnn_workbook(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from pathlib import Path

    from xlcnn.build import build
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "lenet.xlsx"
    build(root / "samples" / "lenet.keras", root / "samples" / "digits" / "digit_3.png", out)
    book = read_workbook(out)
    fast = evaluate(book)
    assert len(book.program.classes) < len(book.formulas) / 50
    from xlcnn.formula.schedule import by_sheet
    many = [c for c in book.program.classes if c.hosts is not None]
    assert len(many) >= 2  # the convolutions: one class over their channels' sheets...
    for c in many:  # ...read from shared formulas that interleave the sheets, kept sheet by sheet
        assert all(isinstance(sel, slice) for _, sel, _, _ in by_sheet(c, None))
    slow = evaluate_one_by_one(book, monkeypatch)
    for (sheet, r, c) in book.formulas:
        a, b = fast.value(sheet, r, c), slow.value(sheet, r, c)
        assert a == pytest.approx(b, rel=1e-11, abs=1e-12), cell_name(sheet, r, c)


def test_formula_groups_and_cells_equal_one_cell_at_a_time(tmp_path):
    """formula_groups covers every formula once, each group one skeleton; Result.cells equals
    Result.value cell by cell, single and batched, text and empty cells as NaN."""
    from xlcnn.formula import formula_groups
    g = np.random.default_rng(3)
    x, k = g.normal(size=(6, 7)), g.normal(size=(3, 3))
    book = conv_book(tmp_path, x, k)
    texts = [t for s in book.sheets for t in book.formula_cells(s)[2]]
    groups = formula_groups(book)
    members = np.sort(np.concatenate(groups))
    np.testing.assert_array_equal(members, np.arange(len(texts)))
    for idx in groups:
        assert len({skeleton(texts[i]) for i in idx.tolist()}) == 1
    for overrides in (None, {("in", 1, 1): np.array([1.0, -2.0, 3.0]), ("in", 50, 50): np.array([4.0, 5.0, 6.0])}):
        res = evaluate(book, overrides=overrides)
        for sheet in book.sheets:
            shape = book.shape(sheet)
            rows, cols = np.divmod(np.arange(shape[0] * (shape[1] + 1)), shape[1] + 1)
            rows, cols = np.append(rows, 50), np.append(cols, 50)  # beyond the arrays: an override or empty
            got = res.cells(sheet, rows, cols)
            for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
                v = res.value(sheet, r, c)
                want = np.nan if v is None or isinstance(v, (str, bool)) else v
                np.testing.assert_array_equal(got[..., i], want)


# --------------------------------------------------------------------------- batch layout

def _batch_book(tmp_path):
    """Convolutions over two input channels onto two sheets (a matrix product with a shared
    weight side), a dense layer over a whole sheet (weights shared, one window per image), and
    a SUMPRODUCT whose range holds text and TRUE (SUMPRODUCT's own path)."""
    g = np.random.default_rng(11)
    x, k, wd = g.normal(size=(2, 6, 7)), g.normal(size=(2, 2, 3, 3)), g.normal(size=(20, 3))
    sheets = {"c0": {}, "c1": {}, "w": {}, "o0": {}, "o1": {}, "dense": {}}
    for ch in range(2):
        for r in range(6):
            for c in range(7):
                sheets[f"c{ch}"][xl_rowcol_to_cell(r, c)] = x[ch, r, c]
    for out in range(2):
        for ch in range(2):
            for r in range(3):
                for c in range(3):
                    sheets["w"][xl_rowcol_to_cell(3 * (2 * out + ch) + r, c)] = k[out, ch, r, c]
        sheets["w"][xl_rowcol_to_cell(out, 5)] = 0.1 * (out + 1)
    for r in range(20):
        for j in range(3):
            sheets["w"][xl_rowcol_to_cell(20 + r, j)] = wd[r, j]
    for out in range(2):
        for r in range(4):
            for c in range(5):
                terms = "+".join(
                    f"SUMPRODUCT(c{ch}!{xl_rowcol_to_cell(r, c)}:{xl_rowcol_to_cell(r + 2, c + 2)},"
                    f"w!{xl_rowcol_to_cell(3 * (2 * out + ch), 0, True, True)}:"
                    f"{xl_rowcol_to_cell(3 * (2 * out + ch) + 2, 2, True, True)})" for ch in range(2))
                sheets[f"o{out}"][xl_rowcol_to_cell(r, c)] = f"={terms}+w!$F${out + 1}"
    for j in range(3):
        col = xl_col_to_name(j)
        sheets["dense"][xl_rowcol_to_cell(0, j)] = f"=SUMPRODUCT(o0!$A$1:$E$4,w!{col}$21:{col}$24)"
        sheets["dense"][xl_rowcol_to_cell(1, j)] = f"=SUMPRODUCT(o1!$A$1:$A$4,w!{col}$21:{col}$24)"
        sheets["dense"][xl_rowcol_to_cell(2, j)] = f"=SUMPRODUCT($E$1:$E$4,o0!{col}1:{col}4)"
    sheets["dense"].update({"E1": 2.0, "E2": "text", "E3": True, "E4": -1.5})
    return make_book(tmp_path, sheets), x


def _all_formula_values(res, book):
    return {s: res.cells(s, *book.formula_cells(s)[:2]) for s in book.sheets if book.formula_cells(s)[0]}


@pytest.mark.parametrize("chunk", [None, 7])
def test_batch_equals_per_image_through_matrix_products(tmp_path, monkeypatch, chunk):
    """A batch laid out innermost (sheets as (rows, cols, batch) memory, windows gathered as a
    (K, windows x batch) matrix) gives every image what its own run gives, also when the batch
    goes in slices and when the weights vary over the batch too."""
    from xlcnn.formula import products
    if chunk:
        monkeypatch.setattr(products, "_DOT_CHUNK", chunk)
    book, x = _batch_book(tmp_path)
    g = np.random.default_rng(12)
    imgs = x[None] + g.normal(size=(5,) + x.shape)
    wscale = 1.0 + 0.1 * np.arange(5)
    cases = {
        "inputs": lambda b: {(f"c{ch}", r, c): imgs[b, ch, r, c]
                             for ch in range(2) for r in range(6) for c in range(7)},
        "weights too": lambda b: {**{(f"c{ch}", r, c): imgs[b, ch, r, c] for ch in range(2) for r in range(6)
                                     for c in range(7)},
                                  ("w", 0, 0): wscale[b], ("w", 21, 1): -wscale[b]},
    }
    for name, per_image in cases.items():
        keys = per_image(0).keys()
        batched = evaluate(book, {k: np.array([per_image(b)[k] for b in range(5)]) for k in keys})
        got = _all_formula_values(batched, book)
        for b in range(5):
            want = _all_formula_values(evaluate(book, per_image(b)), book)
            for sheet, values in want.items():
                np.testing.assert_allclose(got[sheet][b], values, rtol=1e-12, atol=1e-12, err_msg=f"{name} {sheet}")
    plans = [c.gather.get("dot") for c in book.program.classes if "dot" in c.gather]
    assert any(p is not False and p[2] for p in plans) and any(p is False for p in plans)
    slow = evaluate_one_by_one(book, monkeypatch, overrides={k: np.array([cases["inputs"](b)[k] for b in range(5)])
                                                             for k in cases["inputs"](0)})
    fast = evaluate(book, {k: np.array([cases["inputs"](b)[k] for b in range(5)]) for k in cases["inputs"](0)})
    for sheet, values in _all_formula_values(slow, book).items():
        np.testing.assert_allclose(_all_formula_values(fast, book)[sheet], values, rtol=1e-12, atol=1e-12)


def test_a_kept_weight_side_is_used_only_while_its_sheet_is_the_programs_own(tmp_path, monkeypatch):
    """A dense layer's weight side is gathered once and kept on its class, for the next run; a
    run overriding a weight cell (one number, no batch) computes it afresh from the override,
    and the run after it is back to the file's weights."""
    book, x = _batch_book(tmp_path)
    first = evaluate(book)
    dense = [c for c in book.program.classes if ("fixed side", 1) in c.gather]
    assert dense  # the dense weights (sheet w) were kept
    kept = dense[0].gather[("fixed side", 1)]
    assert not kept.flags.writeable
    changed = evaluate(book, {("w", 20, 0): 10.0})
    slow = evaluate_one_by_one(book, monkeypatch, overrides={("w", 20, 0): 10.0})
    np.testing.assert_allclose(changed.block("dense", 0, 0, 2, 2), slow.block("dense", 0, 0, 2, 2), rtol=1e-13)
    assert np.isfinite(first.value("dense", 1, 0))
    assert changed.value("dense", 1, 0) != pytest.approx(first.value("dense", 1, 0))
    again = evaluate(book)
    np.testing.assert_array_equal(again.block("dense", 0, 0, 2, 2), first.block("dense", 0, 0, 2, 2))
    assert dense[0].gather[("fixed side", 1)] is kept


def test_batch_equals_per_image_on_an_xlcnn_workbook(tmp_path):
    """Three inputs through a real LeNet workbook at once equal three separate runs, cell by cell."""
    pytest.importorskip("tensorflow")
    from pathlib import Path

    from xlcnn import manifest as mf
    from xlcnn.build import build
    from xlcnn.verify import constant_block, input_overrides, read_contract
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "lenet.xlsx"
    build(root / "samples" / "lenet.keras", root / "samples" / "digits" / "digit_3.png", out)
    book = read_workbook(out)
    entries, _ = read_contract(book, out)
    layer = mf.layers(entries)[0]
    x = mf.assemble(entries, layer, lambda *cells: constant_block(book, *cells))
    xb = np.clip(x[None] + np.random.default_rng(4).normal(0, 0.2, (3,) + x.shape), 0, 1)
    got = _all_formula_values(evaluate(book, input_overrides(entries, layer, xb)), book)
    for b in range(3):
        single = {k: float(v[0]) for k, v in input_overrides(entries, layer, xb[b:b + 1]).items()}
        want = _all_formula_values(evaluate(book, single), book)
        for sheet, values in want.items():
            np.testing.assert_allclose(got[sheet][b], values, rtol=1e-11, atol=1e-12, err_msg=sheet)
    # only the stages (targets): the same stage values, the rest of the formulas left out
    from xlcnn.verify.compare import stage_targets
    rects = stage_targets(entries, mf.layers(entries)[1:])
    full = evaluate(book, input_overrides(entries, layer, xb))
    part = evaluate(book, input_overrides(entries, layer, xb), targets=rects)
    for sheet, r0, c0, r1, c1 in rects:
        np.testing.assert_array_equal(part.block(sheet, r0, c0, r1, c1), full.block(sheet, r0, c0, r1, c1))
    rows, cols, _ = book.formula_cells("gallery")  # most of its formulas are in no stage's past
    left_out = np.isnan(part.cells("gallery", rows, cols))
    assert left_out.mean() > 0.5 and not np.isnan(full.cells("gallery", rows, cols)).any()
    np.testing.assert_array_equal(part.cells("gallery", rows, cols)[~left_out],
                                  full.cells("gallery", rows, cols)[~left_out])


# --------------------------------------------------------------------------- trace sheets' functions

def _names_book(tmp_path):
    """A workbook with sheet-scoped and global defined names, as trace sheets write them."""
    path = tmp_path / "names.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    t, d, o = wb.add_worksheet("my trace"), wb.add_worksheet("data"), wb.add_worksheet("other")
    t.write("C3", 2)
    t.write("C4", 1)
    for r in range(3):
        for c in range(3):
            d.write(r, c, r * 10 + c)
    d.write("A5", 7)
    wb.define_name("'my trace'!row", "='my trace'!$C$3")
    wb.define_name("'my trace'!col", "='my trace'!$C$4")
    wb.define_name("other!row", "=other!$A$1")
    wb.define_name("g", "=data!$A$5")
    formulas = {
        "D1": "=INDEX(data!A1:C3,row+1,col+1)", "D2": "=INDEX(CHOOSE(col+1,data!A1:C1,data!A2:C2),1,3)",
        "D3": "=CHOOSE(3,1,2)", "D4": "=INDEX(data!A1:C3,4,1)",
        "D5": "=SUMPRODUCT(data!A1:A3,INDEX(data!A1:C3,0,col+1))",
        "D6": "=ISNUMBER(C3)", "D7": "=ISNUMBER(E9)", "D8": "=ISNUMBER(D9)", "D9": '=IF(row>1,"pad",1)',
        "D10": "=MAX(D9,C4)", "D11": "=g*row", "D12": "=SUM(INDEX(data!A1:C3,row+1,0))", "D13": "=CHOOSE(0,1)",
        "D14": "=INDEX(data!A1:C1,2)", "D15": "=INDEX(data!A1:C3,1,0)+1", "D16": "=CHOOSE(2,data!A1,data!B1)",
        "D17": '="row"&"col"', "D18": "=INDEX(data!A1:C3,0,4)", "D19": "=ISNUMBER(\"1\")",
    }
    for a, f in formulas.items():
        t.write_formula(a, f, None, 0)
    o.write("A1", 5)
    o.write_formula("A2", "=row+1", None, 0)
    wb.close()
    return read_workbook(path)


def test_defined_names_are_read_and_resolved_by_scope(tmp_path):
    book = _names_book(tmp_path)
    assert book.defined_names[("my trace", "row")] == "'my trace'!$C$3"
    assert book.defined_names[(None, "g")] == "data!$A$5"
    r = evaluate(book)
    assert r.value("my trace", 0, 3) == 21.0        # INDEX(data, 3, 2) through the sheet's own names
    assert r.value("my trace", 10, 3) == 14.0       # a workbook name times a sheet name
    assert r.value("other", 1, 0) == 6.0            # the other sheet's own `row`
    assert r.value("my trace", 16, 3) == "rowcol"   # names inside strings stay text


def _names_by_regex(book, sheet, texts):
    """The reader's name substitution as it was: one case-insensitive regex search per formula."""
    import re

    from xlcnn.formula.parser import resolve_names
    names = {n.lower(): t for (scope, n), t in book.defined_names.items() if scope is None}
    names.update({n.lower(): t for (scope, n), t in book.defined_names.items() if scope == sheet})
    if not names:
        return texts
    candidate = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)), re.I)
    return [resolve_names(t, names) if candidate.search(t) else t for t in texts]


def test_name_substitution_fast_path_equals_regex_per_formula(tmp_path, monkeypatch):
    from xlcnn.formula import reader

    class Stub:
        defined_names = {(None, "g"): "data!$A$5", (None, "Predicted_Class"): "overview!$C$4",
                         ("t", "row"): "'t'!$C$3", ("t", "col"): "'t'!$C$4", ("u", "rows"): "1+2"}

    texts = ["row+1", "ROW+COL", "g*row", '"row"&"col"', "SUM(rows)", "predicted_class+1", "PREDICTED_CLASS",
             "arrow", "ro", "w+1", "'row'!A1+1", "row\ncol", "", "A1", "colrow(1)", "G", "xg", "row_1"]
    for sheet in ("t", "u", "other"):
        fast = reader._with_names(Stub, sheet, texts)
        assert fast == _names_by_regex(Stub, sheet, texts)
        assert reader._name_candidates(texts, {"row": ""}) is not None      # ASCII: the fast test ran
    class Marked:  # every name has a character without case: only texts holding one are searched
        defined_names = {(None, "Predicted_Class"): "overview!$C$4", (None, "x2"): "1+1"}

    marked = texts + ["'a_b'!A1+X2", "x2y", "SUM(x2)", "predicted_classes", "_", "2"]
    assert reader._with_names(Marked, "any", marked) == _names_by_regex(Marked, "any", marked)
    assert reader._name_candidates(["a", "b_c", "PREDICTED_class"], {"predicted_class": ""}) == [2]
    # a name split across two texts never counts; non-ASCII texts take the regex path, same answers
    assert reader._name_candidates(["ro", "w"], {"row": ""}) == []
    odd = ["ſum(row)", "K+row", "row"]
    assert reader._name_candidates(odd, {"row": ""}) is None
    assert reader._with_names(Stub, "t", odd) == _names_by_regex(Stub, "t", odd)
    assert reader._with_names(Stub, "t", []) == []
    # a real workbook read both ways
    book = _names_book(tmp_path)
    monkeypatch.setattr(reader, "_name_candidates", lambda texts, names: None)
    slow = read_workbook(book.path)
    assert book.formulas == slow.formulas and "data!$A$5" in book.formulas[("other", 1, 0)] + \
        book.formulas[("my trace", 10, 3)]


def test_index_choose_isnumber(tmp_path):
    r = evaluate(_names_book(tmp_path))
    v = [r.value("my trace", i, 3) for i in range(19)]
    assert v[1] == 12.0                      # INDEX over the range CHOOSE picked
    assert math.isnan(v[2])                  # CHOOSE index past its options: #VALUE!
    assert math.isnan(v[3])                  # INDEX past the range: #REF!
    assert v[4] == 0 * 1 + 10 * 11 + 20 * 21  # INDEX(..., 0, k): the whole column
    assert (v[5], v[6], v[7]) == (1.0, 0.0, 0.0)  # a number, an empty cell, a text result
    assert v[8] == "pad" and v[9] == 1.0     # IF may give text; MAX skips it
    assert v[11] == 20 + 21 + 22             # INDEX(..., k, 0): the whole row
    assert math.isnan(v[12])                 # CHOOSE(0, ...): #VALUE!
    assert v[13] == 1.0                      # one index along a one-row range
    assert math.isnan(v[14])                 # a whole row as one value: #VALUE!
    assert v[15] == 1.0
    assert math.isnan(v[17])                 # column 4 of a 3-column range: #REF!
    assert v[18] == 0.0                      # text is not a number


def test_choose_and_index_per_cell(tmp_path):
    """The index may differ from cell to cell of one formula shape."""
    cells = {"A1": 1, "A2": 2, "A3": 3, "B1": 10, "B2": 20, "B3": 30, "C1": 1, "C2": 2, "C3": 3}
    for i in range(1, 4):
        cells[f"D{i}"] = f"=CHOOSE(C{i},A{i},B{i},5)"
        cells[f"E{i}"] = f"=INDEX($A$1:$B$3,C{i},2)"
    r = evaluate(make_book(tmp_path, {"S": cells}))
    assert [r.value("S", i, 3) for i in range(3)] == [1.0, 20.0, 5.0]
    assert [r.value("S", i, 4) for i in range(3)] == [10.0, 20.0, 30.0]


# --------------------------------------------------------------------------- reader and grouping in bulk

def _cells_of(cells):
    """{(row, col): value} of the numeric cells a sheet scan found."""
    out = {}
    for rows, cols, vals in cells.num:
        out.update(zip(zip(np.asarray(rows).tolist(), np.asarray(cols).tolist()), np.asarray(vals).tolist()))
    return out


@pytest.mark.parametrize("body", [
    # contiguous rows, short rows, gaps, a row without cells, 1-3 letter columns, 7-digit rows
    '<row r="1"><c r="A1" s="2"><v>1.5</v></c><c r="B1"><v>-2E-3</v></c></row><row r="3"/>'
    '<row r="4" spans="1:30"><c r="C4"><v>0.1</v></c><c r="AB4"><v>7</v></c><c r="XFD4"><v>1e300</v></c></row>'
    '<row r="1048576"><c r="ZZ1048576"><v>3.25</v></c></row>',
    # what the positional path refuses and the regex path reads: typed cells, attribute order,
    # empty values, a cell without a value, a formula
    '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1"><v>2</v></c></row>',
    '<row r="1"><c s="1" r="A1"><v>4</v></c><c r="B1"><v>2</v></c></row>',
    '<row r="1"><c r="A1"><v></v></c><c r="B1"><v>2</v></c><c r="C1" s="3"/><c r="D1"><v>5</v></c></row>',
    '<row r="2"><c r="A2"><f>1+1</f><v>2</v></c><c r="B2"><v>9</v></c></row>',
])
def test_positional_number_reader_equals_elementtree(body):
    """Numbers placed from the bytes after each '<c r="' (arrays, no per-row regex) are the
    cells ElementTree finds, in odd layouts too; whatever the fast path refuses, the regex
    path reads."""
    from xlcnn.formula import reader
    xml = f'<worksheet xmlns="{MAIN}"><sheetData>{body}</sheetData></worksheet>'.encode()
    slow = reader._Cells()
    reader._scan_slow(xml, slow)
    assert _cells_of(reader._parse_sheet(xml)) == _cells_of(slow)


def test_positional_number_reader_on_a_large_block(tmp_path):
    """A weight matrix as XlsxWriter writes it (the path the reader takes for most numbers):
    every value exact, columns past Z and AZ, rows offset."""
    from xlcnn.formula import reader
    g = np.random.default_rng(9)
    w = g.normal(size=(300, 760)) * 10.0 ** g.integers(-12, 12, size=(300, 760))
    wb = xlsxwriter.Workbook(str(tmp_path / "w.xlsx"))
    ws = wb.add_worksheet("w")
    for r in range(300):
        ws.write_row(5 + r, 3, w[r].tolist())
    wb.close()
    with zipfile.ZipFile(tmp_path / "w.xlsx") as z:
        xml = z.read("xl/worksheets/sheet1.xml")
    assert reader._numeric_block(xml) is not None
    slow = reader._Cells()
    reader._scan_slow(xml, slow)
    assert _cells_of(reader._parse_sheet(xml)) == _cells_of(slow)
    book = read_workbook(tmp_path / "w.xlsx")
    np.testing.assert_allclose(book.sheet_array("w")[5:, 3:], w, rtol=1e-15)  # as XlsxWriter wrote them


def _dense_rows(rows, first_col, width, odd=None):
    """<row> elements as XlsxWriter writes a weight matrix: consecutive cells from first_col
    (0-based) in each of ``rows`` (1-based); ``odd`` rewrites the XML to break the pattern."""
    from xlcnn.formula.parser import col_letters
    out = []
    for r in rows:
        cells = "".join(f'<c r="{col_letters(first_col + j)}{r}" s="5"><v>{r * 1000 + j}.25</v></c>'
                        for j in range(width))
        out.append(f'<row r="{r}" spans="1:9">{cells}</row>')
    xml = "".join(out)
    return odd(xml) if odd else xml


@pytest.mark.parametrize("case, quick", [
    # columns across Z/AA, AZ/BA, ZZ/AAA; rows across 9/10, 99/100 and 5/6 digits (F100001:
    # with the quote 8 bytes, a word's worth)
    ((range(8, 12), 20, 40), True),
    ((range(97, 102), 670, 40), True),
    ((range(99_998, 100_002), 0, 6), True),
    # rows of fewer than 4 cells (a signal's column): decoded in full, it costs no more
    ((range(1, 40), 3, 2), False),
    # 3 letters and 7 digits: 10 bytes with the quote, too long for a word: decoded in full
    ((range(1_048_570, 1_048_576), 16_370, 8), False),
    # a gap in a row, a leading zero, a row tag without r, a row not in the cells' references
    ((range(1, 5), 0, 6, lambda x: x.replace('<c r="C2" s="5"><v>2002.25</v></c>', "")), False),
    ((range(1, 5), 0, 6, lambda x: x.replace('r="B3"', 'r="B03"')), False),
    ((range(1, 5), 0, 6, lambda x: x.replace('<row r="2" spans="1:9">', "<row>")), False),
    ((range(1, 5), 0, 6, lambda x: x.replace('r="D4"', 'r="D5"')), False),
])
def test_references_checked_row_by_row_equal_every_reference_decoded(case, quick):
    """A weight matrix's cell references are not each decoded: the row tags and each row's first
    cell are, and every reference is compared with the one expected.  Every layout reads as
    ElementTree reads it, and the check gives way to the full decode where the pattern breaks."""
    from xlcnn.formula import reader
    body = _dense_rows(*case)
    xml = f'<worksheet xmlns="{MAIN}"><sheetData>{body}</sheetData></worksheet>'.encode()
    slow = reader._Cells()
    reader._scan_slow(xml, slow)
    assert _cells_of(reader._parse_sheet(xml)) == _cells_of(slow)
    a = np.frombuffer(body.encode(), np.uint8)
    lt = np.flatnonzero(a == 60)
    after = a[lt + 1]
    view = np.lib.stride_tricks.sliding_window_view(a, 8)
    found = reader._positions_by_rows(a, view, lt[after == 114], lt[after == 99])
    assert (found is not None) == quick
    if quick:
        rows, cols = reader._decode_refs(view, lt[after == 99] + 6)
        assert found[0].tolist() == rows.tolist() and found[1].tolist() == cols.tolist()


@pytest.mark.parametrize("odd", [None, "1_000", "inf", "1,5"])
def test_bulk_number_parsing_is_float_bit_for_bit(odd):
    """Blocks of numbers are parsed in bulk (pandas' C reader); every text must give float()'s
    double bit for bit: random bit patterns, subnormals, -0, 17 digits, forms without digits on
    one side of the point, exponents of every case and sign.  A text bulk parsing does not take
    (an underscore, 'inf', a comma) sends the block to float(), which decides as before."""
    from xlcnn.formula import reader
    g = np.random.default_rng(21)
    bits = g.integers(0, 2**63, 2000, dtype=np.uint64).view(np.float64)
    texts = [repr(float(v)) for v in bits[np.isfinite(bits)]]
    texts += ["%.17g" % v for v in g.normal(size=300)] + ["%.16G" % v for v in g.normal(size=300) * 1e-30]
    texts += ["-0", "0.0", "5e-324", "2.2250738585072014E-308", "1.7976931348623157e+308", ".5", "5.", "+1",
              "-.25E2", "1e400", "00012.500", "123456789012345678901234567890", "9007199254740993"]
    if odd:
        texts[100] = odd
    cells = "".join(f'<c r="{xl_rowcol_to_cell(i // 50, i % 50)}" s="1"><v>{t}</v></c>' + ("</row>" if i % 50 == 49 else "")
                    for i, t in enumerate(texts))
    rows = cells.split("</row>")
    body = "".join(f'<row r="{i + 1}">{r}</row>' for i, r in enumerate(rows) if r)
    xml = f'<worksheet xmlns="{MAIN}"><sheetData>{body}</sheetData></worksheet>'.encode()
    if odd == "1,5":
        with pytest.raises(ValueError):
            float(odd)
        with pytest.raises(ValueError):
            reader._parse_sheet(xml)
        return
    bulk = reader._decimals("\n".join(texts).encode(), len(texts))
    assert (bulk is None) == (odd is not None)  # the bulk path is the one under test
    got = _cells_of(reader._parse_sheet(xml))
    want = {(i // 50, i % 50): float(t) for i, t in enumerate(texts)}
    assert got.keys() == want.keys()
    assert np.array(list(got.values())).view(np.uint64).tolist() == \
        np.array([want[k] for k in got]).view(np.uint64).tolist()


def test_row_classes_partition_rows_as_unique_does():
    from xlcnn.formula.grouping import _row_classes
    g = np.random.default_rng(3)
    X = g.integers(65, 68, size=(500, 4)).astype(np.uint8)  # 81 possible rows: many repeats
    which = _row_classes(X)
    _, want = np.unique(X, axis=0, return_inverse=True)
    pairs = set(zip(which.tolist(), want.ravel().tolist()))
    assert len(pairs) == len(set(which.tolist())) == len(set(want.ravel().tolist()))  # the same partition


def test_weight_sheet_with_titles_and_formulas_reads_its_body_in_bulk(tmp_path, monkeypatch):
    """A weight sheet as xlcnn writes it: text rows above and below the numbers, a formula in
    between.  The rows of plain numbers go the bulk way, the others the regex way, and together
    they read what ElementTree reads."""
    from xlcnn.formula import reader
    g = np.random.default_rng(8)
    w = g.normal(size=(120, 40))
    wb = xlsxwriter.Workbook(str(tmp_path / "w.xlsx"))
    ws = wb.add_worksheet("w")
    ws.write(0, 0, "fc1 weights")
    ws.write_row(1, 1, [f"unit {j}" for j in range(40)])
    for r in range(120):
        ws.write(r + 2, 0, f"in {r}" if r % 50 == 0 else float(r))
        ws.write_row(r + 2, 1, w[r].tolist())
    ws.write_formula(60, 45, "=SUM(B3:B10)", None, 1.5)
    ws.write(125, 0, "bias")
    ws.write_row(126, 1, w[0].tolist())
    wb.close()
    with zipfile.ZipFile(tmp_path / "w.xlsx") as z:
        xml = z.read("xl/worksheets/sheet1.xml")
    runs = reader._plain_runs(xml)
    assert sum(plain for _, plain in runs) >= 2 and b"".join(p for p, _ in runs) == xml
    bulk = []
    monkeypatch.setattr(reader, "_numeric_block", lambda c, f=reader._numeric_block: bulk.append(f(c)) or bulk[-1])
    fast = reader._parse_sheet(xml)
    assert sum(len(b[0]) for b in bulk if b is not None) >= 118 * 40  # the body went the bulk way
    slow = reader._Cells()
    reader._scan_slow(xml, slow)
    assert _cells_of(fast) == _cells_of(slow) and len(_cells_of(fast)) == 120 * 41 - 3 + 40
    def kinds(cells):  # (formula cells, other typed cells) by position
        found = {(r, c) for rows, cols, *_ in cells.formulas for r, c in zip(rows, cols)}
        found |= {x[:2] for x in cells.special if x[3] is not None}
        return found, sorted(x[:3] for x in cells.special if x[3] is None)
    assert kinds(fast) == kinds(slow) and kinds(fast)[0] == {(60, 45)} and len(kinds(fast)[1]) == 45


def test_grouping_splits_many_per_sheet_skeletons_like_the_tokenizer():
    """Formulas of one length whose sheet names and functions differ (per-channel sheets) land
    in one coarse set; every group still holds one skeleton and the tokenizer's references."""
    texts = []
    for ch in range(12):
        for r in range(1, 6):
            texts += [f"'c{ch} x'!A{r}*2+B{r}", f"MAX('c{ch} x'!A{r},0)+C{r}", f"SUM('c{ch} x'!A{r},0)+C{r}",
                      f"'c{ch} x'!AB{r}*2+B{r + 10}", f"'C{ch}'!A{r}*2"]
    _groups_as_the_tokenizer_reads(texts)


def _same_books(a, b):
    assert a.sheets == b.sheets
    for s in a.sheets:
        for x, y in zip(a.numbers(s), b.numbers(s)):
            np.testing.assert_array_equal(x, y)
        assert a.other_constants(s) == b.other_constants(s)
        ra, ca, ta = a.formula_cells(s)
        rb, cb, tb = b.formula_cells(s)
        assert (list(ra), list(ca), list(ta)) == (list(rb), list(cb), list(tb))
        np.testing.assert_array_equal(a.cached_values(s)[0], b.cached_values(s)[0])


def test_sheets_read_piece_by_piece_while_inflating_equal_sheets_read_whole(tmp_path, monkeypatch):
    """Big sheets are parsed as the worker inflates them (pieces cut at rows): made small here,
    every sheet of a real mixed workbook and a namespaced one (the per-cell fallback) read the
    same; a corrupt member still fails with WorkbookError."""
    from xlcnn.formula import reader
    path = tmp_path / "w.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("w")
    g = np.random.default_rng(5)
    ws.write_string(0, 0, "title & more")
    for r in range(2, 260):
        ws.write_row(r, 1, g.normal(size=40).tolist())
        ws.write_formula(r, 42, f"=SUM(B{r + 1}:AO{r + 1})", None, 0.5)
    ws.write_string(200, 3, "a label in the body")
    wb.close()
    ns = ('<x:row r="2"><x:c r="A2"><x:v>4</x:v></x:c><x:c><x:v>6</x:v></x:c>'
          '<x:c><x:f>A2+B2</x:f></x:c></x:row><x:row><x:c><x:v>1</x:v></x:c></x:row>') * 50
    handmade(tmp_path / "n.xlsx", [("N", "n.xml", ns)],
             sheet_xml=lambda d: f'<x:worksheet xmlns:x="{MAIN}"><x:sheetData>{d}</x:sheetData></x:worksheet>')
    whole = [read_workbook(p) for p in (path, tmp_path / "n.xlsx")]
    monkeypatch.setattr(reader, "_CHUNK", 3000)
    monkeypatch.setattr(reader, "_PIECE", 1000)
    monkeypatch.setattr(reader, "_STREAM_MIN", 1)
    streamed_parts, inflate = [], reader._inflate_into
    monkeypatch.setattr(reader, "_inflate_into", lambda zf, name, q: streamed_parts.append(name) or inflate(zf, name, q))
    streamed = [read_workbook(p) for p in (path, tmp_path / "n.xlsx")]
    for a, b in zip(whole, streamed):
        _same_books(a, b)
    assert len(whole[0].numbers("w")[0]) == 258 * 40 - 1 and whole[1].formulas[("N", 1, 2)] == "A2+B2"
    assert streamed_parts == ["xl/worksheets/sheet1.xml", "xl/worksheets/n.xml"]
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("xl/worksheets/sheet1.xml")
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    raw[at:at + 64] = bytes(64)
    (tmp_path / "bad.xlsx").write_bytes(bytes(raw))
    with pytest.raises(WorkbookError, match="sheet1.xml is corrupt|inflates beyond"):
        read_workbook(tmp_path / "bad.xlsx")


def test_a_number_cell_that_is_not_a_number_names_its_sheet(tmp_path):
    body = '<row r="1"><c r="A1"><v>1.5</v></c><c r="B1" s="3"><v>abc</v></c></row>'
    with pytest.raises(WorkbookError, match=r"sheet 'S': a cell's value does not read as its type says \(could not convert"):
        read_workbook(handmade(tmp_path / "v.xlsx", [("S", "s.xml", body)]))
