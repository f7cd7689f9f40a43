"""The gallery sheet: every channel of every stage as a small live tile, the network at a glance.

Each tile cell is a plain reference to one cell of its stage (='02 conv1 c3'!B5), its number hidden
by the format ;;; so the tiles read as pictures; a change to the input flows into them like into
every other formula. A stage's tiles share one colour scale whose ends are live cells of their own
(the legend bar under the stage's name): MAX of the stage's tiles for a layer of one sign, and
-s..0..+s with s = the largest |value| for a layer of both signs, so a layer's channels can be
compared and zero is always white. Image maps are (h x w) tiles, a signal's channels one row each
(time running right), vectors one wrapped row. Big maps show every k-th row and column, and the
sheet stops adding tiles at style gallery.max_cells, saying on the sheet what it left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .layout import FIRST_COL, quote_sheet, rng, style, text

SHEET = "gallery"
HEAD = 3          # the first stage's header row (row 0 title, 1 explanation, 2 what was left out)
LEGEND_CELLS = 24  # the colour bar's length in cells
NUMBER_CELLS = 8   # the cells each end number spans


@dataclass
class Tile:
    label: str
    sheet: str            # the stage sheet the label links to
    cells: list           # ((row in tile, col in tile), (sheet, row, col)) of each tile cell
    values: list          # the value of each tile cell, in the same order
    h: int
    w: int


def _stride(n, limit):
    return max(1, math.ceil(n / limit))


def tiles_of(t, max_side, row_cells):
    """The tiles of one stage's tensor: one per channel of a map or signal, one for a vector."""
    if t.rank == 1:
        sheet, r0, c0 = t.places[0]
        n = len(t.values)
        width = min(n, row_cells)
        cells = [((i // width, i % width), (sheet, r0 + i, c0)) for i in range(n)]
        return [Tile(text("gallery.vector_label", n=n), sheet, cells, [float(v) for v in t.values],
                     math.ceil(n / width), width)], 1
    chw = t.chw()
    h, w = t.hw
    tiles = []
    if t.rank == 2:                         # a signal: time runs right
        k = _stride(h, row_cells)
        steps = range(0, h, k)
        for c, (sheet, r0, c0) in enumerate(t.places):
            cells = [((0, b), (sheet, r0 + i, c0)) for b, i in enumerate(steps)]
            tiles.append(Tile(f"c{c}", sheet, cells, [float(chw[c, i, 0]) for i in steps], 1, len(steps)))
        return tiles, k
    k = _stride(max(h, w), max_side)
    rows, cols = range(0, h, k), range(0, w, k)
    for c, (sheet, r0, c0) in enumerate(t.places):
        cells = [((a, b), (sheet, r0 + i, c0 + j)) for a, i in enumerate(rows) for b, j in enumerate(cols)]
        tiles.append(Tile(f"c{c}", sheet, cells, [float(chw[c, i, j]) for i in rows for j in cols],
                          len(rows), len(cols)))
    return tiles, k


def _what(t):
    if t.rank == 1:
        return text("gallery.what_vector", n=len(t.values))
    h, w = t.hw
    if t.rank == 2:
        return text("gallery.what_signal", channels=t.channels, steps=h)
    return text("gallery.what_map", channels=t.channels, h=h, w=w)


def _aggregate(fn, ranges):
    """MAX or MIN over many ranges within Excel's 255 arguments: nested in groups of 100."""
    if len(ranges) <= 100:
        return f"{fn}({','.join(ranges)})"
    return f"{fn}({','.join(_aggregate(fn, ranges[i:i + 100]) for i in range(0, len(ranges), 100))})"


def write_gallery(book, stages):
    """Fill the gallery sheet (made right after the overview, so it is the second tab)."""
    sheet = book.sheets[SHEET]
    ws = sheet.ws
    cfg = style("gallery")
    px = cfg["cell_px"]
    row_cells = cfg["row_cells"]
    add = book.wb.add_format
    fmt_hidden = add({"num_format": ";;;"})
    fmt_stage = add({"bold": True, "font_color": style("colors")["title"]})
    fmt_label = add({"font_size": 8, "font_color": style("colors")["link"], "underline": 1})
    fmt_end = add({"font_size": 8, "num_format": "0.00", "font_color": "#404040"})
    fmt_end_right = add({"font_size": 8, "num_format": "0.00", "font_color": "#404040", "align": "right"})
    fmt_note = add({"font_size": 8, "italic": True, "font_color": "#404040"})
    ws.set_default_row(px * 0.75)
    for r in range(HEAD):
        ws.set_row(r, 15)
    ws.set_column_pixels(FIRST_COL, FIRST_COL + row_cells + 8, px)
    ws.freeze_panes(2, 0)
    ws.fit_to_pages(1, 0)
    budget = cfg["max_cells"]
    left_out, passthrough = [], []
    row = HEAD
    for stage in stages:
        t = stage.tensor
        if stage.writer is not None and stage.writer.passthrough:
            passthrough.append(f"{stage.step} {t.layer}")
            continue
        tiles, k = tiles_of(t, cfg["max_side"], row_cells)
        kept = []
        for tile in tiles:
            if len(tile.cells) > budget:
                break
            budget -= len(tile.cells)
            kept.append(tile)
        if len(kept) < len(tiles):
            left_out.append(f"{stage.step} {t.layer} " + (text("gallery.all") if not kept else
                                                          f"{tiles[len(kept)].label}–{tiles[-1].label}"))
        if not kept:
            continue
        row = _write_stage(book, sheet, stage, kept, k, row, px, row_cells,
                           (fmt_hidden, fmt_stage, fmt_label, fmt_end, fmt_end_right, fmt_note))
    notes = []
    if left_out:
        notes.append(text("gallery.capped", max=f"{cfg['max_cells']:,}", what=", ".join(left_out)))
    if passthrough:
        notes.append(text("gallery.passthrough", stages=", ".join(passthrough)))
    if notes:
        ws.write(2, FIRST_COL, " ".join(notes), fmt_note)


def _write_stage(book, sheet, stage, tiles, k, row, px, row_cells, fmts):
    """A stage's header, its legend bar and its tiles, from `row`; returns the next free row."""
    fmt_hidden, fmt_stage, fmt_label, fmt_end, fmt_end_right, fmt_note = fmts
    ws = sheet.ws
    t = stage.tensor
    kind = stage.writer.kind if stage.writer else "InputLayer"
    head = text("gallery.stage", step=stage.step, layer=t.layer, kind=kind,
                shape="(" + ", ".join(str(s) for s in t.values.shape) + ")", what=_what(t))
    if k > 1:
        head += " · " + text("gallery.sampled", k=k)
    ws.set_row(row, 15)
    ws.write(row, 0, head, fmt_stage)
    legend = row + 1
    ws.set_row(legend, 11)
    row += 3
    # the tiles, in bands of one row of tiles each
    pitch = max(max(tile.w for tile in tiles) + 1, style("gallery.min_pitch"))
    per_row = max(1, row_cells // pitch)
    bands, values = [], []
    for first in range(0, len(tiles), per_row):
        band = tiles[first:first + per_row]
        bh = max(tile.h for tile in band)
        ws.set_row(row, 11)
        for n, tile in enumerate(band):
            c0 = FIRST_COL + n * pitch
            ws.write_url(row, c0, f"internal:{quote_sheet(tile.sheet)}!A1", fmt_label, tile.label,
                         tile.sheet)
            for ((a, b), (src, r, c)), v in zip(tile.cells, tile.values):
                sheet.formula(row + 1 + a, c0 + b, rng(src, r, c, r, c), v, fmt_hidden)
            values += tile.values
        right = FIRST_COL + (len(band) - 1) * pitch + max(tile.w for tile in band) - 1
        bands.append(rng(SHEET, row + 1, FIRST_COL, row + bh, right, absolute=True))
        row += bh + 2
    # the legend: both ends are live cells, the bar between them runs from one to the other
    vals = np.asarray(values)
    lo_v, hi_v = float(vals.min()), float(vals.max())
    lo_col, bar_col = FIRST_COL, FIRST_COL + NUMBER_CELLS
    hi_col = bar_col + LEGEND_CELLS
    lo_ref = rng(SHEET, legend, lo_col, legend, lo_col, absolute=True)
    hi_ref = rng(SHEET, legend, hi_col, legend, hi_col, absolute=True)
    ws.merge_range(legend, lo_col, legend, bar_col - 1, "", fmt_end)
    ws.merge_range(legend, hi_col, legend, hi_col + NUMBER_CELLS - 1, "", fmt_end_right)
    scale = style("map_scale")
    if stage.writer is None:                         # the input: black to white, as on its sheets
        inp = style("input_scale")
        lo, hi = lo_v, hi_v
        sheet.formula(legend, lo_col, _aggregate("MIN", bands), lo, fmt_end)
        sheet.formula(legend, hi_col, _aggregate("MAX", bands), hi, fmt_end_right)
        colors = (inp["min_color"], inp["max_color"])
        key = "gallery.scale_input"
    elif lo_v >= 0:                                  # one sign: white at 0
        lo, hi = 0.0, hi_v
        ws.write_number(legend, lo_col, 0.0, fmt_end)
        sheet.formula(legend, hi_col, _aggregate("MAX", bands), hi, fmt_end_right)
        colors = (scale["mid_color"], scale["max_color"])
        key = "gallery.scale_positive"
    elif hi_v <= 0:
        lo, hi = lo_v, 0.0
        sheet.formula(legend, lo_col, _aggregate("MIN", bands), lo, fmt_end)
        ws.write_number(legend, hi_col, 0.0, fmt_end_right)
        colors = (scale["min_color"], scale["mid_color"])
        key = "gallery.scale_negative"
    else:                                            # both signs: symmetric around 0
        hi = max(hi_v, -lo_v)
        lo = -hi
        sheet.formula(legend, hi_col, f"MAX({_aggregate('MAX', bands)},-{_aggregate('MIN', bands)})", hi,
                      fmt_end_right)
        sheet.formula(legend, lo_col, f"-{hi_ref}", lo, fmt_end)
        colors = None
        key = "gallery.scale_both"
    # the bar is a ramp of constants from -1 (or 0) to 1 under its own scale: only its ends are live
    ramp = np.linspace(-1.0 if colors is None else 0.0, 1.0, LEGEND_CELLS)
    sheet.numbers(legend, bar_col, ramp[None, :], fmt_hidden)
    bar = {"type": "3_color_scale", "min_type": "num", "min_value": -1, "mid_type": "num", "mid_value": 0,
           "max_type": "num", "max_value": 1, "min_color": scale["min_color"], "mid_color": scale["mid_color"],
           "max_color": scale["max_color"]} if colors is None else \
        {"type": "2_color_scale", "min_type": "num", "min_value": 0, "max_type": "num", "max_value": 1,
         "min_color": colors[0], "max_color": colors[1]}
    ws.conditional_format(legend, bar_col, legend, bar_col + LEGEND_CELLS - 1, bar)
    note = text(key) + ("; " + text("gallery.shared", n=len(tiles)) if len(tiles) > 1 else "")
    ws.write(legend, hi_col + NUMBER_CELLS + 1, note, fmt_note)
    ranges = " ".join(b.split("!")[1].replace("$", "") for b in bands)
    if colors is None:
        opts = {"type": "3_color_scale", "min_type": "formula", "min_value": f"={lo_ref.split('!')[1]}",
                "mid_type": "num", "mid_value": 0, "max_type": "formula", "max_value": f"={hi_ref.split('!')[1]}",
                "min_color": scale["min_color"], "mid_color": scale["mid_color"], "max_color": scale["max_color"]}
    else:
        opts = {"type": "2_color_scale", "min_type": "formula", "min_value": f"={lo_ref.split('!')[1]}",
                "max_type": "formula", "max_value": f"={hi_ref.split('!')[1]}",
                "min_color": colors[0], "max_color": colors[1]}
    opts["multi_range"] = ranges
    ws.conditional_format(bands[0].split("!")[1].replace("$", ""), opts)
    return row
