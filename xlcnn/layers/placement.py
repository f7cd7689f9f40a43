"""Where a stage's maps go on the sheets: MapSheets (one sheet per channel of an image map, one
sheet with a column per channel for a signal), the blank border that shows a reader's padding, and
the copy maps of layers that only move cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, style, text
from .geometry import channel_axis

if TYPE_CHECKING:
    from ..workbook import Sheet
    from .base import Context


class MapSheets:
    """Where a stage's channel maps go: the one placement every map-writing layer uses.

    An image map (a rank-3 tensor): one sheet per channel, '<step> <layer> c<k>', its (h x w) map
    at (FIRST_ROW, FIRST_COL); block b (the fused activation, partial sums) b maps to the right.
    A signal (a rank-2 tensor, the maps of 1-D layers): one sheet for the whole stage, time running
    down the rows and channel c in column FIRST_COL + c, so the stage reads as a multi-channel
    waveform; block b is a group of `channels` columns b groups to the right.

    title(c) and explain(c) give a sheet's texts; c is None for the one sheet of a signal stage.
    """

    def __init__(self, ctx: Context, layer_name: str, channels: int, h: int, w: int, rank: int,
                 title: Callable[[int | None], str], explain: Callable[[int | None], str] | None = None,
                 suffix: str = "", bordered: bool = True) -> None:
        self.ctx, self.layer_name, self.channels = ctx, layer_name, channels
        self.h, self.w, self.rank, self.suffix = h, w, rank, suffix
        self.title, self.explain = title, explain or (lambda _c: "")
        self.one_sheet = rank == 2
        # the padding its readers add, kept blank around each map (a signal: rows before and after)
        (top, bottom), (left, right) = ctx.border if bordered else ((0, 0), (0, 0))
        self.border = ((top, bottom), (0, 0) if self.one_sheet else (left, right))
        self._sheets = {}

    def sheet(self, c: int) -> Sheet:
        key = None if self.one_sheet else c
        if key not in self._sheets:
            book = self.ctx.book
            if self.one_sheet:
                name = self.ctx.sheet_name(self.layer_name, self.suffix)
                sheet = book.add_sheet(name, self.title(None), self.explain(None))
            else:
                name = self.ctx.sheet_name(self.layer_name, f"{self.suffix} c{c}")
                sheet = book.add_sheet(name, self.title(c), self.explain(c), map_width=self.w)
                square_cells(sheet, self.h, self.w, self.border)
            self._sheets[key] = sheet
            if self.one_sheet:
                for i in range(self.h):
                    sheet.ws.write_string(FIRST_ROW + i, 0, str(i), book.fmt_axis)
                sheet.ws.write_string(FIRST_ROW - 1, 0, "t", book.fmt_axis)
        return self._sheets[key]

    def origin(self, c: int, block: int = 0) -> tuple[int, int]:
        """(row, col) of the top-left cell of channel c's block `block`."""
        (top, _), (left, right) = self.border
        if self.one_sheet:
            return FIRST_ROW + top, FIRST_COL + block * (self.channels + 1) + c
        return FIRST_ROW + top, FIRST_COL + left + block * (left + self.w + right + 1)

    def tensor(self, layer: str, chw: np.ndarray, rank: int, channel_axis: int, places: list) -> Tensor:
        """The stage's output Tensor, which knows the blank border its maps keep."""
        return Tensor.from_chw(layer, chw, rank, channel_axis, places, self.border)

    def place(self, c, block=0):
        """(sheet name, row, col) of channel c's block, as a Tensor's places hold them."""
        return (self.sheet(c).name, *self.origin(c, block))

    def start(self, c: int, block: int = 0, label: str | None = None) -> tuple[Sheet, int, int]:
        """The sheet for channel c's block, with its axis labels (and the block's label) written:
        returns (sheet, row, col)."""
        sheet = self.sheet(c)
        r0, c0 = self.origin(c, block)
        book = self.ctx.book
        (top, bottom), (left, right) = self.border
        if self.one_sheet:
            sheet.ws.write_string(FIRST_ROW - 1, c0, f"c{c}", book.fmt_axis)
            if label and c == 0:
                sheet.label(FIRST_ROW - 2, c0, label, book.fmt_header)
        else:
            if top or bottom or left or right:
                shade_border(sheet, r0, c0, self.h, self.w, self.border)
            # indices above the border and left of it, as Keras counts them (the border has none)
            for j in range(self.w):
                sheet.ws.write_string(FIRST_ROW - 1, c0 + j, str(j), book.fmt_axis)
            for i in range(self.h):
                sheet.ws.write_string(r0 + i, c0 - left - 1, str(i), book.fmt_axis)
            if label:
                sheet.label(FIRST_ROW - 2, c0 - left, label, book.fmt_header)
        if self.one_sheet and (top or bottom):
            shade_border(sheet, r0, c0, self.h, self.w, self.border)
        return sheet, r0, c0

    def color_all(self, block: int, chw: np.ndarray) -> None:
        """Colour block `block` of every channel (chw: the values as (channels, h, w)) with one
        colour scale for the whole layer, so its channels can be compared, symmetric around 0 when
        the values have both signs; each image map gets the scale's legend below it."""
        lo, hi = (float(np.min(chw)), float(np.max(chw))) if np.size(chw) else (0.0, 0.0)
        (top, bottom), _ = self.border
        for c in range(self.channels):
            sheet = self.sheet(c)
            r0, c0 = self.origin(c, block)
            if not self.one_sheet:
                layer_scale(sheet, r0, c0, r0 + self.h - 1, c0 + self.w - 1, lo, hi)
                scale_legend(sheet, r0 + self.h + bottom + 1, c0, lo, hi)
        if self.one_sheet:
            r0, c0 = self.origin(0, block)
            layer_scale(self.sheet(0), r0, c0, r0 + self.h - 1, c0 + self.channels - 1, lo, hi)
            self.chart(block)

    def chart(self, block: int) -> None:
        """A signal stage's block as a line chart (one line per channel, up to 16), to the right of
        the blocks: the multi-channel waveform at a glance."""
        if self.channels > 16 or self.h < 2:
            return
        book = self.ctx.book
        sheet = self.sheet(0)
        chart = book.wb.add_chart({"type": "line"})
        for c in range(self.channels):
            r0, c0 = self.origin(c, block)
            chart.add_series({"name": f"c{c}", "values": [sheet.name, r0, c0, r0 + self.h - 1, c0],
                              "line": {"width": 1.25}})
        chart.set_title({"name": self.layer_name + (f" · {text('stage.chart_block', block=block)}" if block else "")})
        chart.set_x_axis({"name": "t"})
        chart.set_size({"width": 520, "height": 240})
        sheet.ws.insert_chart(FIRST_ROW + 13 * block, FIRST_COL + 4 * (self.channels + 1), chart)


def square_cells(sheet, h, w, border):
    """An image map's cells drawn square (like pixels), with room for a number with two decimals."""
    px = style("map_cell_px")
    (top, bottom), (left, right) = border
    width = (px - 5) / 7                      # Excel's column width in characters for px pixels
    sheet.ws.set_column(FIRST_COL, FIRST_COL + 4 * (left + w + right + 1), width)
    for r in range(FIRST_ROW, FIRST_ROW + top + h + bottom):
        sheet.ws.set_row(r, px * 0.75)        # points


def _scale_options(lo, hi):
    """A colour scale with fixed ends: symmetric around 0 (blue, white, red) when the values have
    both signs, white to red for positive values, blue to white for negative ones."""
    s = style("map_scale")
    if lo < 0 < hi:
        m = max(-lo, hi)
        return {"type": "3_color_scale", "min_type": "num", "min_value": -m, "min_color": s["min_color"],
                "mid_type": "num", "mid_value": 0, "mid_color": s["mid_color"],
                "max_type": "num", "max_value": m, "max_color": s["max_color"]}, (-m, m)
    if hi > 0:
        return {"type": "2_color_scale", "min_type": "num", "min_value": 0, "min_color": s["mid_color"],
                "max_type": "num", "max_value": hi, "max_color": s["max_color"]}, (0.0, hi)
    return {"type": "2_color_scale", "min_type": "num", "min_value": min(lo, -1e-12), "min_color": s["min_color"],
            "max_type": "num", "max_value": 0, "max_color": s["mid_color"]}, (min(lo, 0.0), 0.0)


def layer_scale(sheet, r0, c0, r1, c1, lo, hi):
    """One colour scale shared by all of a layer's maps (the layer's own min and max)."""
    options, _ = _scale_options(lo, hi)
    sheet.ws.conditional_format(r0, c0, r1, c1, options)


def scale_legend(sheet, row, col, lo, hi):
    """Below a map: the layer's colour scale as three coloured cells with the values they stand for."""
    options, (low, high) = _scale_options(lo, hi)
    book = sheet.book
    cache = book.__dict__.setdefault("_legend_formats", {})
    s = style("map_scale")
    colors = ([s["min_color"], s["mid_color"], s["max_color"]] if options["type"] == "3_color_scale" else
              [options["min_color"], options["max_color"]])
    values = [low, 0.0, high] if len(colors) == 3 else [low, high]
    sheet.label(row, col - 1, text("stage.legend"), book.fmt_axis)
    for k, (color, value) in enumerate(zip(colors, values)):
        fmt = cache.get(color)
        if fmt is None:
            fmt = cache[color] = book.wb.add_format({"bg_color": color, "align": "center", "font_size": 8,
                                                    "num_format": "0.00"})
        sheet.ws.write_string(row, col + k, f"{value:.3g}", fmt)


def padding_format(book):
    """The grey fill of the blank cells that show a reader's padding (made once per workbook)."""
    fmt = getattr(book, "fmt_padding", None)
    if fmt is None:
        fmt = book.fmt_padding = book.wb.add_format({"bg_color": style("colors.padding_fill")})
    return fmt


def shade_border(sheet, r0, c0, h, w, border):
    """Shade the blank border around an (h x w) block at (r0, c0): the cells stay empty, which is
    exactly Keras's padding for every reader (SUMPRODUCT reads an empty cell as 0, the zeros of a
    convolution; MAX and AVERAGE skip it, the -infinity of max pooling and the real-cells-only
    divisor of average pooling)."""
    (top, bottom), (left, right) = border
    fmt = padding_format(sheet.book)
    for i in range(-top, h + bottom):
        for j in range(-left, w + right):
            if not (0 <= i < h and 0 <= j < w):
                sheet.ws.write_blank(r0 + i, c0 + j, None, fmt)


def check_layout(writer, x, rank=3):
    """The layer's data_format must name the axis x keeps its channels on. 1-D layers without a
    data_format (Cropping1D, UpSampling1D) work on axis 1, the steps of a channels_last signal."""
    fmt = writer.config.get("data_format") or "channels_last"
    axis = channel_axis(fmt, rank)
    if x.rank != rank or x.channel_axis != axis:
        writer.refuse(f"expects a {rank}-D {fmt} input, got shape {x.values.shape}")
    return axis


def write_copy_maps(ctx, writer, x_out_chw, source, axis, title_of, explain, rank=3):
    """The output maps (MapSheets); cell (i, j) of channel c = source(c, i, j), a reference, or None for 0."""
    channels, h, w = x_out_chw.shape
    maps = MapSheets(ctx, writer.name, channels, h, w, rank, title_of, lambda _c: explain)
    places = []
    for c in range(channels):
        sheet, r0, c0 = maps.start(c)
        for i in range(h):
            for j in range(w):
                sheet.formula(r0 + i, c0 + j, source(c, i, j) or "0", x_out_chw[c, i, j])
        places.append((sheet.name, r0, c0))
    maps.color_all(0, x_out_chw)
    return maps.tensor(writer.name, x_out_chw, rank, axis, places)
