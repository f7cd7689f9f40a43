"""xlcnn/workbook.py writes cells through XlsxWriter internals (its fast path, the only path).

The exact XML it produces is pinned here, in the manner of XlsxWriter's own
xlsxwriter/test/worksheet/test_write_cell.py: write a tiny workbook, unzip the sheet and compare
the <c> elements character for character; and every double must come back bit for bit.
"""

from __future__ import annotations

import re
import struct
import zipfile

import numpy as np
import pytest

from xlcnn import workbook
from xlcnn.errors import XlcnnError
from xlcnn.workbook import Book


def sheet_xml(path, n=1):
    with zipfile.ZipFile(path) as z:
        return z.read(f"xl/worksheets/sheet{n}.xml").decode("utf-8")


def cells(xml):
    """{'B5': '<c r="B5" ...>...</c>'} for every cell of a sheet, in file order."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<c r="([A-Z]+\d+)"[^>]*?(?:/>|>.*?</c>)', xml)}


def bits(x):
    return struct.pack("<d", x)


@pytest.fixture
def tiny(tmp_path):
    """One sheet: a number block, a formula with its cached value, a non-finite one, a label."""
    path = tmp_path / "tiny.xlsx"
    book = Book(path)
    sheet = book.add_sheet("s", back_link=False)
    sheet.numbers(4, 1, [[0.5, -2.0], [0.30000000000000004, 1e-300]])
    sheet.formula(4, 3, "SUM(B5:C6)", 0.5 - 2.0 + 0.30000000000000004 + 1e-300)
    sheet.formula(5, 3, "LN(B5-1)", float("nan"))
    sheet.formula(6, 3, "IF(B5<0,\"a&b\",B5>1)", 1.0)
    sheet.label(6, 1, "a label")
    book.close()
    return sheet_xml(path), book


def test_number_cell_xml(tiny):
    xml, book = tiny
    s = book.fmt_number._get_xf_index()
    c = cells(xml)
    assert c["B5"] == f'<c r="B5" s="{s}"><v>0.5</v></c>'
    assert c["C5"] == f'<c r="C5" s="{s}"><v>-2.0</v></c>'
    assert c["B6"] == f'<c r="B6" s="{s}"><v>0.30000000000000004</v></c>'
    assert c["C6"] == f'<c r="C6" s="{s}"><v>1e-300</v></c>'


def test_formula_cell_xml_with_cached_value(tiny):
    xml, book = tiny
    s = book.fmt_number._get_xf_index()
    c = cells(xml)
    assert c["D5"] == f'<c r="D5" s="{s}"><f>SUM(B5:C6)</f><v>-1.2</v></c>'
    # a formula's text is XML-escaped as XlsxWriter escapes it (double quotes stay)
    assert c["D7"] == f'<c r="D7" s="{s}"><f>IF(B5&lt;0,"a&amp;b",B5&gt;1)</f><v>1.0</v></c>'


def test_non_finite_cached_value_is_num_error(tiny):
    xml, book = tiny
    s = book.fmt_number._get_xf_index()
    assert cells(xml)["D6"] == f'<c r="D6" s="{s}" t="e"><f>LN(B5-1)</f><v>#NUM!</v></c>'


def test_string_label_xml(tiny, tmp_path):
    xml, book = tiny
    s = book.fmt_label._get_xf_index()
    assert cells(xml)["B7"] == f'<c r="B7" s="{s}" t="s"><v>0</v></c>'
    with zipfile.ZipFile(tmp_path / "tiny.xlsx") as z:
        assert "<si><t>a label</t></si>" in z.read("xl/sharedStrings.xml").decode()


def test_rows_and_spans(tiny):
    """Rows in order, cells in column order within a row, the spans hint counting the block."""
    xml, _ = tiny
    rows = re.findall(r'<row r="(\d+)" spans="([\d:]+)"', xml)
    assert rows == [("5", "2:4"), ("6", "2:4"), ("7", "2:4")]
    assert list(cells(xml)) == ["B5", "C5", "D5", "B6", "C6", "D6", "B7", "D7"]
    assert '<dimension ref="B5:D7"/>' in xml


DOUBLES = [0.30000000000000004, 0.1, 1 / 3, 1e-300, 5e-324, -0.0, 0.0, 123456789.12345679, -1.7976931348623157e308,
           2.0 ** 52 + 1, 1e16, 6.02214076e23, np.nextafter(1.0, 2.0), -np.nextafter(0.0, 1.0)]


def test_every_double_round_trips_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    randoms = rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200)
    values = np.array(DOUBLES + randoms.tolist())
    path = tmp_path / "doubles.xlsx"
    book = Book(path)
    sheet = book.add_sheet("s", back_link=False)
    sheet.numbers(4, 1, values[:, None])                  # a block
    sheet.numbers(4, 3, values[:1, None])                 # a single number
    for i, v in enumerate(values):
        sheet.formula(4 + i, 2, f"B{5 + i}", v)           # cached values
    book.close()
    c = cells(sheet_xml(path))
    for i, v in enumerate(values):
        for col in "BC":
            text = re.search(r"<v>([^<]*)</v>", c[f"{col}{5 + i}"]).group(1)
            assert bits(float(text)) == bits(float(v)), (col, i, v, text)
    assert bits(float(re.search(r"<v>([^<]*)</v>", c["D5"]).group(1))) == bits(DOUBLES[0])


def test_later_writes_win(tmp_path):
    """As with XlsxWriter's own calls: a block replaces the cells under it, a cell written later
    replaces a block's number, the later of two overlapping blocks wins."""
    path = tmp_path / "over.xlsx"
    book = Book(path)
    sheet = book.add_sheet("s", back_link=False)
    sheet.formula(4, 2, "1+1", 2.0)                         # replaced by the block below
    sheet.numbers(4, 1, np.arange(6.0).reshape(2, 3))       # B5:D6
    sheet.numbers(5, 2, [[10.0, 11.0]])                     # C6:D6 over the first block
    sheet.label(4, 3, "x")                                  # D5 over the first block
    sheet.formula(5, 1, "C6*2", 20.0)                       # B6 over the first block
    sheet.numbers(4, 5, [[7.0]])                            # F5, beside
    book.close()
    c = cells(sheet_xml(path))
    assert list(c) == ["B5", "C5", "D5", "F5", "B6", "C6", "D6"]
    assert "<v>0.0</v>" in c["B5"] and "<v>1.0</v>" in c["C5"] and 't="s"' in c["D5"]
    assert "<f>C6*2</f>" in c["B6"] and "<v>10.0</v>" in c["C6"] and "<v>11.0</v>" in c["D6"]
    assert "<v>7.0</v>" in c["F5"]


def test_block_is_copied_when_written(tmp_path):
    path = tmp_path / "copy.xlsx"
    book = Book(path)
    sheet = book.add_sheet("s", back_link=False)
    a = np.ones((2, 2))
    sheet.numbers(4, 1, a)
    a[:] = 5.0
    book.close()
    assert all("<v>1.0</v>" in v for v in cells(sheet_xml(path)).values())


def test_own_sheet_references_read_without_the_sheet_name(tmp_path):
    book = Book(tmp_path / "own.xlsx")
    sheet = book.add_sheet("it's", back_link=False)
    sheet.formula(4, 1, "MAX(0,'it''s'!B5)+'x it''s'!B5", 1.0)
    assert sheet.ws.table[4][1].formula == "MAX(0,B5)+'x it''s'!B5"
    book.close()


def test_block_outside_the_sheet_is_refused(tmp_path):
    book = Book(tmp_path / "big.xlsx")
    sheet = book.add_sheet("s", back_link=False)
    with pytest.raises(ValueError, match="does not fit"):
        sheet.numbers(1_048_575, 1, np.zeros((2, 1)))
    book.close()


def test_changed_xlsxwriter_internals_are_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(workbook, "XLSXWRITER_PROBLEM", "worksheet.CellNumberTuple('number', 'format')")
    with pytest.raises(XlcnnError) as err:
        Book(tmp_path / "x.xlsx")
    message = str(err.value)
    assert "\n" not in message
    assert workbook.XLSXWRITER_SUPPORTED in message and "is installed" in message and "pip install" in message
    assert not (tmp_path / "x.xlsx").exists()


def test_installed_xlsxwriter_passes_the_check():
    assert workbook.XLSXWRITER_PROBLEM is None


def test_the_check_sees_a_changed_cell_tuple(monkeypatch):
    from collections import namedtuple

    import xlsxwriter.worksheet
    monkeypatch.setattr(xlsxwriter.worksheet, "CellNumberTuple", namedtuple("Number", "number, format, extra"))
    monkeypatch.delattr(xlsxwriter.worksheet.Worksheet, "_calculate_spans")
    problem = workbook._xlsxwriter_problem()
    assert "CellNumberTuple" in problem and "_calculate_spans" in problem


def test_estimate_says_what_opening_in_libreoffice_takes_and_warns_past_a_laptop():
    from xlcnn.limits import LAPTOP_MB, Estimate
    small = Estimate(sheets=41, formulas=5_517, constants=1_434)
    assert "opening it in LibreOffice takes about" in small.text()
    assert small.warnings() == []
    big = Estimate(sheets=2_618, formulas=400_000, constants=2_000_000)   # a mini-Xception-size workbook
    assert big.libreoffice_mb > LAPTOP_MB
    (note,) = big.warnings()
    assert "LibreOffice" in note and "GB" in note and "\n" not in note


def test_shared_rectangles_find_copies_as_excel_copies_formulas():
    from xlcnn.workbook import shared_rectangles
    cells = {}
    for r in range(4, 8):          # a 4x3 map: each cell's window moves with it, the kernel stays
        for c in range(1, 4):
            cells[(r, c)] = f"SUMPRODUCT(x!{chr(65 + c)}{r + 1}:{chr(66 + c)}{r + 2},$K$1:$L$2)+$K$3"
    for r in range(4, 7):          # stride 2: the window moves two rows a step, no copy of another
        cells[(r, 5)] = f"MAX(x!B{2 * r + 1}:B{2 * r + 2})"
    for c in (7, 8, 10):           # a run of two, and one alone (a rectangle needs two cells)
        cells[(4, c)] = f"x!{chr(65 + c)}1*2"
    cells[(5, 7)] = "x!H2*2"       # the next row, one cell: a copy of (4, 7), alone in its row
    cells[(9, 1)], cells[(9, 2)] = "B10*$A$1", "C10*$A$2"  # the absolute one differs: no copy
    rows, cols, texts = zip(*[(r, c, t) for (r, c), t in cells.items()])
    got = [box for _, *box in shared_rectangles(list(rows), list(cols), list(texts))]
    assert got == [[4, 1, 7, 3], [4, 7, 4, 8]]
    on_two = shared_rectangles(list(rows) * 2, list(cols) * 2, list(texts) * 2, [0] * len(rows) + [1] * len(rows))
    assert on_two == [(0, 4, 1, 7, 3), (0, 4, 7, 4, 8), (1, 4, 1, 7, 3), (1, 4, 7, 4, 8)]  # per sheet
    covered = {(r, c) for r0, c0, r1, c1 in got for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}
    assert covered <= set(cells) and (4, 10) not in covered and (9, 1) not in covered
    assert shared_rectangles([0], [0], ["A1"]) == []


def test_shared_formulas_in_a_built_workbook_mean_the_formulas_written_one_by_one(tmp_path, monkeypatch):
    """The same model written with and without shared formulas: the same text and cached value in
    every cell, read back (a shared formula's copies made from its master); the conv maps are one
    shared formula each, and the file is smaller."""
    pytest.importorskip("tensorflow")
    from pathlib import Path

    from xlcnn.build import build
    from xlcnn.formula import read_workbook
    root = Path(__file__).resolve().parent.parent
    args = (root / "samples" / "lenet.keras", root / "samples" / "digits" / "digit_3.png")
    build(*args, tmp_path / "shared.xlsx")
    monkeypatch.setattr(workbook, "shared_rectangles", lambda rows, cols, texts, hosts: [])
    build(*args, tmp_path / "plain.xlsx")
    a, b = read_workbook(tmp_path / "shared.xlsx"), read_workbook(tmp_path / "plain.xlsx")
    assert dict(a.formulas.items()) == dict(b.formulas.items())
    assert dict(a.cached.items()) == dict(b.cached.items())
    assert not any(b.shared_formulas(s) for s in b.sheets)
    conv = [s for s in a.sheets if s.startswith("02 conv1 c")]
    # each conv map: its z block and its ReLU block beside it, one shared formula each
    assert conv and all(len(a.shared_formulas(s)) == 2 for s in conv)
    (start, stop, text, row, col), (_, _, relu, _, _) = a.shared_formulas(conv[0])
    assert (row, col, stop - start) == (4, 1, 28 * 28 - 1) and text.startswith("SUMPRODUCT(") and relu == "MAX(0,B5)"
    xml = sheet_xml(tmp_path / "shared.xlsx", a.sheets.index(conv[0]) + 1)
    assert '<f t="shared" ref="B5:AC32" si="0">SUMPRODUCT(' in xml and xml.count('<f t="shared" si="0"/>') == 783
    assert (tmp_path / "shared.xlsx").stat().st_size < (tmp_path / "plain.xlsx").stat().st_size
