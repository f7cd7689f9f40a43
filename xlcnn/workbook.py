"""A thin layer over XlsxWriter: sheets with the standard header, number blocks, formula cells
that always carry their cached value, colour scales, and counters for the build summary.

XlsxWriter is used (not openpyxl) because it stores a cached value with every formula, so viewers
without a calculation engine show the right numbers, and because it writes several times faster.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zipfile
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import xlsxwriter
import xlsxwriter.workbook
import xlsxwriter.worksheet
from xlsxwriter.utility import xl_col_to_name
from xlsxwriter.worksheet import Worksheet

from .errors import XlcnnError
from .formula.grouping import group_formulas, row_ids
from .formula.parser import STRIDE
from .layout import FIRST_COL, FIRST_ROW, quote_sheet, style, text

# -- the XlsxWriter internals xlcnn writes through, checked once --------------------------------------
#
# Weight sheets hold up to millions of numbers and stage sheets tens of thousands of formulas.
# XlsxWriter's public write_number/write_formula check and prepare every cell one at a time (its
# formula-preparation regexes and %.16G numbers, which do not round-trip every double), and its
# writer walks every column of every row. xlcnn therefore stores cells straight into the worksheet's
# cell table and writes number blocks and rows itself. These are the internals that takes; they are
# checked here once, and a Book refuses to start (one line, saying what to do) when any is missing.
# The exact XML they produce is pinned by tests/test_workbook.py.

XLSXWRITER_SUPPORTED = ">=3.3,<4"     # the versions whose internals below were checked
ZIP_LEVEL = 1    # deflate level: 3x faster than zlib's default 6 for ~14% more bytes (bench_build.py)


def _xlsxwriter_problem():
    """None when every internal the fast path uses is there, else what is missing."""
    missing = []
    ws_mod = xlsxwriter.worksheet
    for name, fields in (("CellNumberTuple", ("number", "format")),
                         ("CellFormulaTuple", ("formula", "format", "value"))):
        tup = getattr(ws_mod, name, None)
        if getattr(tup, "_fields", None) != fields:
            missing.append(f"worksheet.{name}{fields}")
    for name in ("_check_dimensions", "_write_cell", "_write_rows", "_calculate_spans", "_write_row",
                 "_write_empty_row", "_xml_end_tag"):
        if not callable(getattr(Worksheet, name, None)):
            missing.append(f"Worksheet.{name}")
    try:
        ws = Worksheet()
        for name in ("table", "row_info", "comments", "row_spans", "dim_rowmin", "dim_rowmax", "fh"):
            if not hasattr(ws, name):
                missing.append(f"Worksheet().{name}")
        if not isinstance(getattr(ws, "table", None), dict):
            missing.append("Worksheet().table as a dict of rows")
    except Exception as exc:  # a constructor that changed its arguments
        missing.append(f"Worksheet() ({type(exc).__name__}: {exc})")
    if getattr(xlsxwriter.workbook, "ZipFile", None) is not zipfile.ZipFile:
        missing.append("workbook.ZipFile")
    return ", ".join(missing) or None


XLSXWRITER_PROBLEM = _xlsxwriter_problem()
_CellNumber = getattr(xlsxwriter.worksheet, "CellNumberTuple", None)
_CellFormula = getattr(xlsxwriter.worksheet, "CellFormulaTuple", None)


def check_xlsxwriter():
    """Refuse, in one line, an XlsxWriter whose internals differ from the ones xlcnn writes through."""
    if XLSXWRITER_PROBLEM:
        version = getattr(xlsxwriter, "__version__", "of unknown version")
        raise XlcnnError(f"xlcnn needs XlsxWriter {XLSXWRITER_SUPPORTED}, but XlsxWriter {version} is installed "
                         f"and lacks what xlcnn writes through ({XLSXWRITER_PROBLEM}); "
                         f"run: pip install 'XlsxWriter{XLSXWRITER_SUPPORTED}'")


@lru_cache(maxsize=None)
def _col_name(col):
    return xl_col_to_name(col)


def _escape(text):
    """XML character data, as XlsxWriter escapes a formula (double quotes stay as they are)."""
    if "&" in text or "<" in text or ">" in text:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


class FastWorksheet(Worksheet):
    """XlsxWriter's worksheet, with number blocks and a row writer of xlcnn's own.

    A block of constants is kept as one float64 array (8 bytes a number, not a Python object per
    cell) and written one row at a time from a template made once per block: `<c r="B{0}" s="3">
    <v>{1}</v></c>...`.format(row, *values). Numbers are written with repr(), which round-trips every
    double (XlsxWriter's %.16G does not). Single cells (labels, formulas) stay in XlsxWriter's table;
    the row writer visits only the rows and cells that exist instead of every column of every row.
    Later writes win, as in XlsxWriter: a block replaces the cells under it, a cell written into a
    block later replaces that block's number, and of two overlapping blocks the later one wins.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._blocks = []          # (first row, first col, float64 2-D array, format)
        self._templates = {}       # block index -> its row template
        self._block_rows = {}      # row -> [(first col, last col, block index, row in block)]
        self._shared = {}          # (row, col) -> (si, ref or None) of shared formulas, made when written

    # -- storing -----------------------------------------------------------------------------
    def store_formula(self, row, col, formula, fmt, value):
        """A formula without the leading '=', its format and its cached value (a float or '#NUM!')."""
        if self._check_dimensions(row, col):
            raise ValueError(f"cell (row {row}, col {col}) is outside the sheet")
        self.table[row][col] = _CellFormula(formula, fmt, value)

    def store_block(self, row, col, values, fmt):
        """A 2-D float64 block of constants (finite) with its top-left cell at (row, col)."""
        if fmt is None:
            raise ValueError("a block of numbers needs a cell format")
        h, w = values.shape
        if h == 0 or w == 0:
            return
        if self._check_dimensions(row, col) or self._check_dimensions(row + h - 1, col + w - 1):
            raise ValueError(f"a {h} x {w} block at (row {row}, col {col}) does not fit on the sheet")
        if h * w == 1:     # a single number is a single cell (and wins over any block under it)
            self.table[row][col] = _CellNumber(float(values[0, 0]), fmt)
            return
        last = col + w - 1
        k = len(self._blocks)
        self._blocks.append((row, col, values, fmt))
        table, block_rows = self.table, self._block_rows
        for i in range(h):
            cells = table.get(row + i)
            if cells:      # earlier single cells under the block are replaced by it
                for c in [c for c in cells if col <= c <= last]:
                    del cells[c]
            block_rows.setdefault(row + i, []).append((col, last, k, i))

    # -- writing -----------------------------------------------------------------------------
    def _calculate_spans(self):
        """The <row spans="min:max"> hint, per 16 rows, as XlsxWriter computes it, counting blocks."""
        lo, hi = {}, {}
        rmin, rmax = self.dim_rowmin, self.dim_rowmax

        def see(r, a, b):
            if rmin <= r <= rmax:
                k = r // 16
                if k not in lo:
                    lo[k], hi[k] = a, b
                else:
                    lo[k], hi[k] = min(lo[k], a), max(hi[k], b)

        if rmin is not None:
            for r, cells in self.table.items():
                if cells:
                    see(r, min(cells), max(cells))
            for r, cols in self.comments.items():
                if cols:
                    see(r, min(cols), max(cols))
            for r, segs in self._block_rows.items():
                see(r, min(s[0] for s in segs), max(s[1] for s in segs))
        self.row_spans = {k: f"{lo[k] + 1}:{hi[k] + 1}" for k in lo}

    def _write_rows(self):
        """XlsxWriter's row writer, visiting only the rows and cells that exist."""
        self._calculate_spans()
        table, block_rows, row_info, comments = self.table, self._block_rows, self.row_info, self.comments
        rmin, rmax = self.dim_rowmin, self.dim_rowmax
        rows = sorted(r for r in {*table, *block_rows, *row_info, *comments} if rmin <= r <= rmax)
        for r in rows:
            span = self.row_spans.get(r // 16)
            cells = table.get(r)
            segs = block_rows.get(r)
            if cells or segs:
                if r in row_info:
                    self._write_row(r, span, row_info[r])
                else:
                    self._write_row(r, span)
                if segs:
                    self._write_block_row(r, cells or {}, segs)
                else:
                    for c in sorted(cells):
                        self._write_cell(r, c, cells[c])
                self._xml_end_tag("row")
            elif r in comments or r in row_info:
                self._write_empty_row(r, span, row_info.get(r))

    def _formula_cells(self):
        """(rows, cols, texts) of the formula cells the fast writer writes (cached value a float)."""
        rows, cols, texts = [], [], []
        for r, cells in self.table.items():
            for c, cell in cells.items():
                if type(cell) is _CellFormula and cell.format is not None and type(cell.value) is float:
                    rows.append(r)
                    cols.append(c)
                    texts.append(cell.formula)
        return rows, cols, texts

    def _template(self, k):
        tpl = self._templates.get(k)
        if tpl is None:
            _, col, values, fmt = self._blocks[k]
            xf = fmt._get_xf_index()
            tpl = self._templates[k] = "".join(f'<c r="{_col_name(col + j)}{{0}}" s="{xf}"><v>{{{j + 1}}}</v></c>'
                                               for j in range(values.shape[1]))
        return tpl

    def _write_block_row(self, r, cells, segs):
        write = self.fh.write
        blocks = self._blocks
        if len(segs) == 1 and not cells:                      # the common case: one block, nothing else
            a, _, k, i = segs[0]
            write(self._template(k).format(r + 1, *blocks[k][2][i].tolist()))
            return
        segs = sorted(segs, key=lambda s: s[0])
        clash = any(segs[n][1] >= segs[n + 1][0] for n in range(len(segs) - 1)) or \
            any(a <= c <= b for c in cells for a, b, _, _ in segs)
        if not clash:
            pieces = [(a, 1, (k, i)) for a, _, k, i in segs] + [(c, 0, c) for c in cells]
            for _, is_block, what in sorted(pieces, key=lambda p: p[0]):
                if is_block:
                    k, i = what
                    write(self._template(k).format(r + 1, *blocks[k][2][i].tolist()))
                else:
                    self._write_cell(r, what, cells[what])
            return
        # overlaps: cell by cell, later blocks over earlier ones, single cells over blocks
        merged = {}
        for a, _, k, i in sorted(segs, key=lambda s: s[2]):
            fmt = blocks[k][3]
            for j, v in enumerate(blocks[k][2][i].tolist()):
                merged[a + j] = _CellNumber(v, fmt)
        merged.update(cells)
        for c in sorted(merged):
            self._write_cell(r, c, merged[c])

    def _write_cell(self, row, col, cell):
        kind = type(cell)
        if kind is _CellNumber and cell.format is not None:
            self.fh.write(f'<c r="{_col_name(col)}{row + 1}" s="{cell.format._get_xf_index()}">'
                          f"<v>{float(cell.number)!r}</v></c>")
        elif kind is _CellFormula and cell.format is not None and type(cell.value) is float:
            shared = self._shared.get((row, col))
            if shared is None:
                f = f"<f>{_escape(cell.formula)}</f>"
            elif shared[1] is None:
                f = f'<f t="shared" si="{shared[0]}"/>'
            else:
                f = f'<f t="shared" ref="{shared[1]}" si="{shared[0]}">{_escape(cell.formula)}</f>'
            self.fh.write(f'<c r="{_col_name(col)}{row + 1}" s="{cell.format._get_xf_index()}">'
                          f"{f}<v>{cell.value!r}</v></c>")
        else:
            super()._write_cell(row, col, cell)


def _share_formulas(sheets):
    """Set each FastWorksheet's ``_shared``, {(row, col): (si, ref or None)}: the formula cells
    it writes as shared formulas, the top-left cell of each rectangle (ref) holding the text
    and the others only its index.  One grouping over the whole book: a formula repeated on
    every channel's sheet is one set, not one per sheet."""
    rows, cols, texts, hosts = [], [], [], []
    for k, ws in enumerate(sheets):
        r, c, t = ws._formula_cells()
        rows += r
        cols += c
        texts += t
        hosts += [k] * len(t)
    for ws in sheets:
        ws._shared = {}
    si = {}
    for k, r0, c0, r1, c1 in shared_rectangles(rows, cols, texts, hosts):
        out, n = sheets[k]._shared, si.get(k, 0)
        si[k] = n + 1
        out.update(((r, c), (n, None)) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1))
        out[(r0, c0)] = (n, f"{_col_name(c0)}{r0 + 1}:{_col_name(c1)}{r1 + 1}")


def shared_rectangles(rows, cols, texts, hosts=None):
    """[(host, r0, c0, r1, c1)]: rectangles of two or more cells (0-based, inclusive) on one
    host sheet (``hosts``, an id per cell; one sheet when None) whose formulas are each the
    top-left one's copied there as Excel copies a formula (relative references moved,
    $-absolute ones fixed): what a shared formula writes once.  A convolution's map is one
    rectangle; a stride-2 pooling map, whose windows move two cells a step, is none.

    Found with the formula engine's grouping (same text up to the references' letters and
    digits, the references' rows and columns as arrays): cells whose references all sit at
    the same offsets from them (or at the same cell, where $-absolute) share a formula."""
    if len(texts) < 2:
        return []
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    hosts = np.zeros(len(rows), np.int64) if hosts is None else np.asarray(hosts, np.int64)
    found = []
    for key, chunks in group_formulas(texts).items():
        idx = np.concatenate([c[0] for c in chunks])
        if len(idx) < 2:
            continue
        R = np.concatenate([c[1] for c in chunks]).astype(np.int64)
        C = np.concatenate([c[2] for c in chunks]).astype(np.int64)
        slots = [k for k in range(0, len(key) - 1, STRIDE) if key[k + 1] is None]
        col_abs = np.array([key[k + 2] == "$" for k in slots], bool)
        row_abs = np.array([key[k + 4] == "$" for k in slots], bool)
        hr, hc = rows[idx][:, None], cols[idx][:, None]
        offsets = np.concatenate([hosts[idx][:, None], R - np.where(row_abs, 0, hr),
                                  C - np.where(col_abs, 0, hc)], 1)
        _, which = row_ids(offsets)
        order = np.argsort(which, kind="stable")
        for part in np.split(order, np.flatnonzero(np.diff(which[order])) + 1):
            if len(part) > 1:
                host = int(hosts[idx[part[0]]])
                found += [(host, *box) for box in _rectangles(rows[idx[part]], cols[idx[part]])]
    return sorted(found)


def _rectangles(rows, cols):
    """Cells (distinct) as rectangles of two or more: the whole box when they fill it, else runs
    along rows stacked where equal runs meet row after row."""
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    if (r1 - r0 + 1) * (c1 - c0 + 1) == len(rows):
        return [(r0, c0, r1, c1)]
    order = np.lexsort((cols, rows))
    rows, cols = rows[order].tolist(), cols[order].tolist()
    runs = []  # (row, first col, last col)
    for r, c in zip(rows, cols):
        if runs and runs[-1][0] == r and runs[-1][2] == c - 1:
            runs[-1][2] = c
        else:
            runs.append([r, c, c])
    open_, out = {}, []  # (first col, last col) -> [first row, last row] of the rectangle growing down
    for r, a, b in runs:
        box = open_.get((a, b))
        if box is not None and box[1] == r - 1:
            box[1] = r
        else:
            if box is not None:
                out.append((box[0], a, box[1], b))
            open_[(a, b)] = [r, r]
    out += [(box[0], a, box[1], b) for (a, b), box in open_.items()]
    return [x for x in out if x[0] != x[2] or x[1] != x[3]]


@contextmanager
def _zip_level(level):
    """XlsxWriter has no option for the deflate level: its ZipFile gets one while the book is saved."""
    class LeveledZipFile(zipfile.ZipFile):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("compresslevel", level)
            super().__init__(*args, **kwargs)

    module = xlsxwriter.workbook
    module.ZipFile = LeveledZipFile
    try:
        yield
    finally:
        module.ZipFile = zipfile.ZipFile


class Sheet:
    def __init__(self, book, ws, name):
        self.book = book
        self.ws = ws
        self.name = name
        # references to this sheet's own cells read better without the sheet name: MAX(0,B5)
        self._prefix = quote_sheet(name) + "!"
        self._own = re.compile(r"(?<![\w'])" + re.escape(self._prefix))
        self.number_format = None     # the format of formula cells written without one (maps: fewer decimals)

    # -- cells -------------------------------------------------------------------------------
    def formula(self, row, col, formula, value, fmt=None):
        """A formula cell and its cached value (float64, computed by xlcnn)."""
        if self._prefix in formula:
            formula = self._own.sub("", formula)
        value = float(value)
        if not math.isfinite(value):
            value = "#NUM!"
        book = self.book
        book.formulas += 1
        if len(formula) > book.longest_formula:
            book.longest_formula = len(formula)
        # Straight into the cell table: our formulas use no future functions, so XlsxWriter's
        # formula-preparation regexes (most of write_formula's cost) have nothing to do.
        self.ws.store_formula(row, col, formula, fmt or self.number_format or book.fmt_number, value)

    def numbers(self, row, col, array, fmt=None):
        """A 2-D block of constants, kept as one float64 array until the file is saved."""
        array = np.array(array, dtype=np.float64)      # a copy: the caller may change its array later
        if array.ndim == 1:
            array = array[:, None]
        if not np.all(np.isfinite(array)):
            raise ValueError(f"non-finite constant in a block written to {self.name}")
        self.book.constants += array.size
        self.ws.store_block(row, col, array, fmt or self.book.fmt_number)

    def label(self, row, col, value, fmt=None):
        self.ws.write(row, col, value, fmt or self.book.fmt_label)

    def link(self, row, col, sheet, label, cell="A1"):
        target = "'" + sheet.replace("'", "''") + "'"
        self.ws.write_url(row, col, f"internal:{target}!{cell}", self.book.fmt_link, label)

    def axis_labels(self, row, col, height, width):
        """Index labels (0-based, as in Keras) above and left of a block starting at (row, col).
        Written as text: they are labels, and a stage sheet's data rows hold no numbers but formulas."""
        for j in range(width):
            self.ws.write_string(row - 1, col + j, str(j), self.book.fmt_axis)
        for i in range(height):
            self.ws.write_string(row + i, col - 1, str(i), self.book.fmt_axis)

    def color_scale(self, r0, c0, r1, c1, kind="map_scale", values=None):
        """Colour a block so a feature map reads like a picture. Zero is white when the block has
        both signs; a block of one sign (after relu, say) runs from white to its sign's colour."""
        s = style(kind)
        if "mid_color" in s and values is not None and np.size(values):
            lo, hi = float(np.min(values)), float(np.max(values))
            if lo >= 0 or hi <= 0:
                low, high = (s["mid_color"], s["max_color"]) if lo >= 0 else (s["min_color"], s["mid_color"])
                self.ws.conditional_format(r0, c0, r1, c1, {"type": "2_color_scale", "min_color": low,
                                                             "max_color": high})
                return
        if "mid_color" in s:
            opts = {"type": "3_color_scale", "min_color": s["min_color"], "mid_type": "num",
                    "mid_value": 0, "mid_color": s["mid_color"], "max_color": s["max_color"]}
        else:
            opts = {"type": "2_color_scale", "min_color": s["min_color"], "max_color": s["max_color"]}
        self.ws.conditional_format(r0, c0, r1, c1, opts)


class Book:
    def __init__(self, path):
        check_xlsxwriter()
        self.wb = xlsxwriter.Workbook(str(path), {
            "strings_to_numbers": False, "strings_to_formulas": False, "strings_to_urls": False,
        })
        self.sheets = {}
        self.formulas = 0
        self.constants = 0
        self.longest_formula = 0
        st = style()
        colors = st["colors"]
        add = self.wb.add_format
        self.fmt_number = add({"num_format": st["number_format"]})
        self.fmt_weight = add({"num_format": st["weight_number_format"]})
        self.fmt_label = add({})
        self.fmt_axis = add({"font_color": "#808080", "italic": True, "align": "center"})
        self.fmt_title = add({"bold": True, "font_color": colors["title"], "font_size": 12})
        self.fmt_explain = add({"italic": True, "font_color": "#404040"})
        # a map sheet's title and explanation wrap inside a merged band, so a long note never
        # stretches the printed page; map cells show two decimals to fit their square cells
        self.fmt_title_wrap = add({"bold": True, "font_color": colors["title"], "font_size": 12, "text_wrap": True,
                                   "valign": "top"})
        self.fmt_explain_wrap = add({"italic": True, "font_color": "#404040", "text_wrap": True, "valign": "top"})
        self.fmt_map = add({"num_format": st["map_number_format"]})
        self.fmt_header = add({"bold": True, "bg_color": colors["header_fill"], "border": 1})
        self.fmt_partial = add({"num_format": st["number_format"], "bg_color": colors["partial_fill"]})
        self.fmt_link = add({"font_color": colors["link"], "underline": 1})
        self.fmt_big = add({"bold": True, "font_size": 20, "font_color": colors["title"],
                            "align": "left"})
        self.fmt_percent = add({"num_format": "0.00%"})

    def add_sheet(self, name, title="", explain="", back_link=True, map_width=None):
        ws = self.wb.add_worksheet(name, worksheet_class=FastWorksheet)
        sheet = Sheet(self, ws, name)
        self.sheets[name] = sheet
        if back_link:
            sheet.link(0, 0, "overview", text("common.back_link"))
        ws.set_column(0, 0, style("label_column_width"))
        if map_width:
            ws.set_column(FIRST_COL, FIRST_COL + map_width, style("map_column_width"))
            sheet.number_format = self.fmt_map
            # title and explanation wrap in a band at least ~900 pixels wide, rows as tall as needed
            px = style("map_cell_px")
            cols = max(map_width, -(-900 // px))
            for row, value, fmt, char_px, line_pt in ((0, title, self.fmt_title_wrap, 7.5, 16),
                                                       (1, explain, self.fmt_explain_wrap, 6.5, 15)):
                if value:
                    ws.merge_range(row, FIRST_COL, row, FIRST_COL + cols - 1, value, fmt)
                    ws.set_row(row, line_pt * max(1, math.ceil(_width(value) * char_px / (cols * px))))
        else:
            if title:
                ws.write(0, FIRST_COL, title, self.fmt_title)
            if explain:
                ws.write(1, FIRST_COL, explain, self.fmt_explain)
        ws.freeze_panes(FIRST_ROW, FIRST_COL)
        ws.set_landscape()
        ws.fit_to_pages(1, 1 if map_width else 0)  # a feature map prints as one page, like a picture
        return sheet

    def close(self):
        _share_formulas([ws for ws in self.wb.worksheets() if isinstance(ws, FastWorksheet)])
        with _zip_level(ZIP_LEVEL):
            self.wb.close()


def _width(value):
    """A text's width in Latin characters: a Japanese (wide) character takes about two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in value)
