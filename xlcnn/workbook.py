"""A thin layer over XlsxWriter: sheets with the standard header, number blocks, formula cells
that always carry their cached value, colour scales, and counters for the build summary.

XlsxWriter is used (not openpyxl) because it stores a cached value with every formula, so viewers
without a calculation engine show the right numbers, and because it writes several times faster.
"""

from __future__ import annotations

import math
import re

import numpy as np
import xlsxwriter
from xlsxwriter.utility import xl_rowcol_to_cell_fast
from xlsxwriter.worksheet import CellFormulaTuple, CellNumberTuple, Worksheet

from .layout import FIRST_COL, FIRST_ROW, quote_sheet, style, text


class FastWorksheet(Worksheet):
    """XlsxWriter's worksheet with a short path for plain number cells when the file is saved.

    Weight sheets hold up to millions of numbers; XlsxWriter's general cell writer (attribute lists,
    escaping) costs several seconds for them. Numbers are written with repr(), which round-trips
    every double (XlsxWriter's %.16G does not).
    """

    def _write_cell(self, row, col, cell):
        if type(cell) is CellNumberTuple and cell.format is not None:
            self.fh.write(f'<c r="{xl_rowcol_to_cell_fast(row, col)}" s="{cell.format._get_xf_index()}">'
                          f"<v>{float(cell.number)!r}</v></c>")
            return
        super()._write_cell(row, col, cell)


class Sheet:
    def __init__(self, book, ws, name):
        self.book = book
        self.ws = ws
        self.name = name
        # references to this sheet's own cells read better without the sheet name: MAX(0,B5)
        self._own = re.compile(r"(?<![\w'])" + re.escape(quote_sheet(name)) + "!")

    # -- cells -------------------------------------------------------------------------------
    def formula(self, row, col, formula, value, fmt=None):
        """A formula cell and its cached value (float64, computed by xlcnn)."""
        formula = self._own.sub("", formula)
        value = float(value)
        if not math.isfinite(value):
            value = "#NUM!"
        self.book.formulas += 1
        if len(formula) > self.book.longest_formula:
            self.book.longest_formula = len(formula)
        fmt = fmt or self.book.fmt_number
        # Fast path: our formulas use no future functions, so XlsxWriter's formula-preparation
        # regexes (most of write_formula's cost) have nothing to do. Fall back if internals change.
        if self.book.fast:
            self.ws._check_dimensions(row, col)
            self.ws.table[row][col] = CellFormulaTuple(formula, fmt, value)
        else:
            self.ws.write_formula(row, col, "=" + formula, fmt, value)

    def numbers(self, row, col, array, fmt=None):
        """A 2-D block of constants."""
        array = np.asarray(array, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        fmt = fmt or self.book.fmt_number
        self.book.constants += array.size
        if not np.all(np.isfinite(array)):
            raise ValueError(f"non-finite constant in a block written to {self.name}")
        if self.book.fast:
            # Fast path: one dimension check for the block's corners, then store the cells directly
            # (write_number's per-cell checks are most of the cost for a million weights).
            h, w = array.shape
            self.ws._check_dimensions(row, col)
            self.ws._check_dimensions(row + h - 1, col + w - 1)
            table = self.ws.table
            for i, line in enumerate(array.tolist()):
                cells = table[row + i]
                for j, v in enumerate(line):
                    cells[col + j] = CellNumberTuple(v, fmt)
            return
        write = self.ws.write_number
        for i, line in enumerate(array.tolist()):
            r = row + i
            for j, v in enumerate(line):
                write(r, col + j, v, fmt)

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
        self.wb = xlsxwriter.Workbook(str(path), {
            "strings_to_numbers": False, "strings_to_formulas": False, "strings_to_urls": False,
        })
        self.sheets = {}
        self.formulas = 0
        self.constants = 0
        self.longest_formula = 0
        self.fast = True  # cleared by add_sheet if XlsxWriter's internals ever change
        st = style()
        colors = st["colors"]
        add = self.wb.add_format
        self.fmt_number = add({"num_format": st["number_format"]})
        self.fmt_weight = add({"num_format": st["weight_number_format"]})
        self.fmt_label = add({})
        self.fmt_axis = add({"font_color": "#808080", "italic": True, "align": "center"})
        self.fmt_title = add({"bold": True, "font_color": colors["title"], "font_size": 12})
        self.fmt_explain = add({"italic": True, "font_color": "#404040"})
        self.fmt_header = add({"bold": True, "bg_color": colors["header_fill"], "border": 1})
        self.fmt_partial = add({"num_format": st["number_format"], "bg_color": colors["partial_fill"]})
        self.fmt_link = add({"font_color": colors["link"], "underline": 1})
        self.fmt_big = add({"bold": True, "font_size": 20, "font_color": colors["title"],
                            "align": "left"})
        self.fmt_percent = add({"num_format": "0.00%"})

    def add_sheet(self, name, title="", explain="", back_link=True, map_width=None):
        ws = self.wb.add_worksheet(name, worksheet_class=FastWorksheet if self.fast else None)
        self.fast = self.fast and hasattr(ws, "table") and hasattr(ws, "_check_dimensions")
        sheet = Sheet(self, ws, name)
        self.sheets[name] = sheet
        if back_link:
            sheet.link(0, 0, "overview", text("common.back_link"))
        if title:
            ws.write(0, FIRST_COL, title, self.fmt_title)
        if explain:
            ws.write(1, FIRST_COL, explain, self.fmt_explain)
        ws.set_column(0, 0, style("label_column_width"))
        if map_width:
            ws.set_column(FIRST_COL, FIRST_COL + map_width, style("map_column_width"))
        ws.freeze_panes(FIRST_ROW, FIRST_COL)
        ws.set_landscape()
        ws.fit_to_pages(1, 1 if map_width else 0)  # a feature map prints as one page, like a picture
        return sheet

    def close(self):
        self.wb.close()
