"""The formula blocks stages share: weighted sums (SUMPRODUCT, or a product for one cell, split into
partial sums past Excel's formula limit), one-formula-per-cell stages, fused activation blocks,
softmax columns and maps, weight matrices.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, rng, text
from . import functions as act
from .placement import MapSheets


def sumproduct(a, b):
    """The formula text of Σ a·b over two equally shaped references: SUMPRODUCT(a,b), or the plain
    product a*b when both are single cells (a 1×1 kernel, a window clipped to one cell, a Dense
    layer with one input). Every writer of a weighted sum goes through here: some engines (pycel)
    cannot evaluate SUMPRODUCT over single cells, and a product is what a reader expects there."""
    if _single_cell(a) and _single_cell(b):
        return f"{a}*{b}"
    return f"SUMPRODUCT({a},{b})"


def _single_cell(reference):
    # the sheet part may hold '!' but never ':' (not allowed in sheet names), the cell part no '!'
    return ":" not in reference.rpartition("!")[2]


def write_weight_matrix(ctx, layer_name, suffix, matrix, bias, title, column_label):
    """A weight sheet laid out like Keras's kernel (rows = inputs, columns = outputs): the row under
    the headers holds the bias, then row i the weights from input i. Returns the sheet name; the
    weight from input i to output j is at row FIRST_ROW + 1 + i, column FIRST_COL + j."""
    n_in, n_out = matrix.shape
    book = ctx.book
    name = ctx.sheet_name(layer_name, suffix)
    sheet = book.add_sheet(name, title)
    for j in range(n_out):
        sheet.label(FIRST_ROW - 1, FIRST_COL + j, column_label(j), book.fmt_header)
    sheet.label(FIRST_ROW, 0, text("weights.bias_label"), book.fmt_header)
    if bias is not None:
        sheet.numbers(FIRST_ROW, FIRST_COL, bias[None, :], book.fmt_weight)
    for i in range(n_in):
        sheet.ws.write_number(FIRST_ROW + 1 + i, 0, i, book.fmt_axis)
    sheet.numbers(FIRST_ROW + 1, FIRST_COL, matrix, book.fmt_weight)
    sheet.color_scale(FIRST_ROW + 1, FIRST_COL, FIRST_ROW + n_in, FIRST_COL + n_out - 1, "weight_scale")
    return name


def write_cellwise_stage(ctx, writer, like, values, formula_of, title, explain=""):
    """A stage whose output has the layout of `like` (an input Tensor) and one formula per cell:
    one column for a 1-D vector, otherwise the maps of MapSheets.

    values: the output in Keras's layout; formula_of(index) gives the formula of the element at a
    Keras index; title(channel) the sheet's title (channel is None for a one-sheet stage)."""
    book = ctx.book
    if like.rank == 1:
        name = ctx.sheet_name(writer.name)
        sheet = book.add_sheet(name, title(None), explain)
        sheet.label(FIRST_ROW - 1, FIRST_COL, writer.name, book.fmt_header)
        sheet.axis_labels(FIRST_ROW, FIRST_COL, values.shape[0], 0)
        for i in range(values.shape[0]):
            sheet.formula(FIRST_ROW + i, FIRST_COL, formula_of((i,)), values[i])
        return Tensor(writer.name, values, None, [(name, FIRST_ROW, FIRST_COL)])
    if like.rank not in (2, 3):
        writer.refuse(f"inputs of rank {like.rank} are not supported")
    h, w = like.hw
    out = Tensor(writer.name, values, like.channel_axis, []).chw()
    maps = MapSheets(ctx, writer.name, like.channels, h, w, like.rank, title, lambda _c: explain)
    places = []
    for c in range(like.channels):
        sheet, r0, c0 = maps.start(c)
        for i in range(h):
            for j in range(w):
                index = [i, j][:like.rank - 1]
                index.insert(like.channel_axis, c)
                sheet.formula(r0 + i, c0 + j, formula_of(tuple(index)), out[c, i, j])
        places.append((sheet.name, r0, c0))
    maps.color_all(0, out)
    return Tensor(writer.name, values, like.channel_axis, places, maps.border)


FORMULA_LIMIT = 8000  # Excel's limit is 8,192 characters; keep a margin for the bias term


def join_terms(maps, o, i, j, terms, tail, first_block, label, value_of):
    """A weighted sum's formula for cell (i, j) of channel o: '+'.join(the terms' texts) + tail.
    Past Excel's formula limit, chunks of terms go to partial-sum cells in blocks first_block,
    first_block + 1, ... of channel o's maps, and the formula sums those cells.

    terms: [(key, text)], text None for a term that adds nothing (a window wholly in the padding);
    label(first key, last key) names a block of partial sums; value_of(keys) gives a chunk's value."""
    live = [(key, t) for key, t in terms if t]
    if not live:
        return tail[1:] if tail else "0"
    formula = "+".join(t for _, t in live) + tail
    if len(formula) <= FORMULA_LIMIT:
        return formula
    chunks, current, size = [], [], 0
    for key, t in live:
        if current and size + len(t) + 1 > FORMULA_LIMIT:
            chunks.append(current)
            current, size = [], 0
        current.append((key, t))
        size += len(t) + 1
    chunks.append(current)
    sheet = maps.sheet(o)
    book = maps.ctx.book
    refs = []
    for n, chunk in enumerate(chunks):
        r0, col = maps.origin(o, first_block + n)
        if i == 0 and j == 0 and (o == 0 or not maps.one_sheet):
            sheet.label(FIRST_ROW - 2, col, label(chunk[0][0], chunk[-1][0]), book.fmt_header)
        sheet.formula(r0 + i, col + j, "+".join(t for _, t in chunk), value_of([key for key, _ in chunk]),
                      book.fmt_partial)
        refs.append(rng(sheet.name, r0 + i, col + j, r0 + i, col + j))
    return "+".join(refs) + tail


def write_elementwise_block(sheet, row0, col0, in_refs, z, name):
    """Write fn(cell) for a 2-D block whose input references are in_refs (same shape as z)."""
    formula, fn = act.ELEMENTWISE[name]
    out = fn(z)
    h, w = z.shape
    for i in range(h):
        for j in range(w):
            sheet.formula(row0 + i, col0 + j, formula(in_refs[i][j]), out[i, j])
    return out


def write_activation_blocks(maps, fn, places, z, block_label, block=1):
    """A fused activation: beside each z map (places[o] holds z[o], z as (channels, h, w)), the
    block fn(z) as block `block` of MapSheets `maps`, labelled. Returns the output places and
    values; with 'linear' the z maps are the output."""
    if fn == "linear":
        return places, z
    out_places = []
    for o, (name, r0, c0) in enumerate(places):
        oh, ow = z[o].shape
        if o == 0 or not maps.one_sheet:
            maps.sheet(o).label(FIRST_ROW - 2, c0 - maps.border[1][0], block_label, maps.ctx.book.fmt_header)
        sheet, a_r, a0 = maps.start(o, block, text("stage.out_block", fn=fn))
        write_elementwise_block(sheet, a_r, a0, block_refs(name, r0, c0, oh, ow), z[o], fn)
        out_places.append((name, a_r, a0))
    out = act.ELEMENTWISE[fn][1](z)
    maps.color_all(block, out)
    return out_places, out


def write_softmax_maps(ctx, writer, x):
    """Keras's softmax over the last axis of a 3-D tensor, one sheet per channel, each with two
    blocks: e = EXP(x - MAX(its group)), then softmax = e / SUM(the group's e). For channels_last
    the group is one pixel across every channel sheet; for channels_first it is one row of a map."""
    book = ctx.book
    x_vals = x.values
    shifted = x_vals - np.max(x_vals, axis=-1, keepdims=True)
    e = np.exp(shifted)
    out = e / np.sum(e, axis=-1, keepdims=True)
    across_sheets = x.channel_axis == 2
    if across_sheets and x.channels > 200:
        writer.refuse(f"softmax over {x.channels} channel sheets would pass Excel's 255-argument limit")
    h, w = x.hw
    names = [ctx.sheet_name(writer.name, f" c{c}") for c in range(x.channels)]
    e_col, out_col = FIRST_COL, FIRST_COL + w + 1
    e_chw, out_chw = np.moveaxis(e, x.channel_axis, 0), np.moveaxis(out, x.channel_axis, 0)

    def e_cell(c, i, j, absolute=False):
        return rng(names[c], FIRST_ROW + i, e_col + j, FIRST_ROW + i, e_col + j, absolute=absolute)

    places = []
    for c, name in enumerate(names):
        sheet = book.add_sheet(name, text("stage.softmax_maps", step=ctx.step, name=writer.name, kind=writer.kind,
                                          channel=c, channels=x.channels),
                               text("stage.softmax_across" if across_sheets else "stage.softmax_rows"),
                               map_width=2 * w + 1)
        sheet.label(FIRST_ROW - 2, e_col, text("stage.exp_header_maps"), book.fmt_header)
        sheet.label(FIRST_ROW - 2, out_col, text("stage.softmax_header"), book.fmt_header)
        sheet.axis_labels(FIRST_ROW, e_col, h, w)
        sheet.axis_labels(FIRST_ROW, out_col, h, w)
        for i in range(h):
            for j in range(w):
                if across_sheets:
                    group = ",".join(x.cell(k, i, j) for k in range(x.channels))
                    e_group = ",".join(e_cell(k, i, j) for k in range(x.channels))
                else:
                    src, r0, c0 = x.places[c]
                    group = rng(src, r0 + i, c0, r0 + i, c0 + w - 1, abs_col=True)
                    e_group = rng(name, FIRST_ROW + i, e_col, FIRST_ROW + i, e_col + w - 1, abs_col=True)
                sheet.formula(FIRST_ROW + i, e_col + j, f"EXP({x.cell(c, i, j)}-MAX({group}))", e_chw[c, i, j])
                sheet.formula(FIRST_ROW + i, out_col + j, f"{e_cell(c, i, j)}/SUM({e_group})", out_chw[c, i, j])
        sheet.color_scale(FIRST_ROW, out_col, FIRST_ROW + h - 1, out_col + w - 1, values=out_chw[c])
        places.append((name, FIRST_ROW, out_col))
    return Tensor(writer.name, out, x.channel_axis, places)


def write_softmax_column(sheet, col, in_first_row, z, in_col=None, in_sheet=None):
    """Two columns: exp(z - max z), then softmax = e / sum(e). Returns (values, output column).

    The max subtraction is required, not cosmetic: EXP of a large number is #NUM! in Excel.
    z lives in column in_col of in_sheet (defaults: this sheet, the column left of `col`).
    """
    n = len(z)
    in_col = col - 1 if in_col is None else in_col
    src = in_sheet or sheet.name
    r0 = FIRST_ROW
    zr = rng(src, in_first_row, in_col, in_first_row + n - 1, in_col, absolute=True)
    e = np.exp(z - np.max(z))
    for i in range(n):
        cell = rng(src, in_first_row + i, in_col, in_first_row + i, in_col)
        sheet.formula(r0 + i, col, f"EXP({cell}-MAX({zr}))", e[i])
    er = rng(sheet.name, r0, col, r0 + n - 1, col, absolute=True)
    out = e / np.sum(e)
    for i in range(n):
        sheet.formula(r0 + i, col + 1, f"{rng(sheet.name, r0 + i, col, r0 + i, col)}/SUM({er})", out[i])
    return out, col + 1


def write_log_softmax_column(sheet, col, in_first_row, z, in_col, in_sheet):
    """log_softmax of the 1-D column z (at in_sheet!in_col) into two columns of `sheet` from `col`:
    e = EXP(z - MAX(z)), then z - MAX(z) - LN(SUM(e)). Returns (values, output column).
    log_softmax needs the whole column, so it cannot be an ELEMENTWISE entry."""
    n = len(z)
    zr = rng(in_sheet, in_first_row, in_col, in_first_row + n - 1, in_col, absolute=True)
    e = np.exp(z - np.max(z))
    sheet.label(FIRST_ROW - 1, col, text("stage.exp_header"), sheet.book.fmt_header)
    sheet.label(FIRST_ROW - 1, col + 1, text("elementwise.log_softmax"), sheet.book.fmt_header)
    for i in range(n):
        cell = rng(in_sheet, in_first_row + i, in_col, in_first_row + i, in_col)
        sheet.formula(FIRST_ROW + i, col, f"EXP({cell}-MAX({zr}))", e[i])
    er = rng(sheet.name, FIRST_ROW, col, FIRST_ROW + n - 1, col, absolute=True)
    out = act.log_softmax(z)
    for i in range(n):
        cell = rng(in_sheet, in_first_row + i, in_col, in_first_row + i, in_col)
        sheet.formula(FIRST_ROW + i, col + 1, f"{cell}-MAX({zr})-LN(SUM({er}))", out[i])
    return out, col + 1


def write_1d_activation(sheet, col, in_tensor_col_first_row, z, name, in_col, in_sheet):
    """Activation of a 1-D column z (at in_sheet!in_col) into this sheet from column `col`.

    Returns (values, output column)."""
    if name == "softmax":
        sheet.label(FIRST_ROW - 1, col, text("stage.exp_header"))
        sheet.label(FIRST_ROW - 1, col + 1, text("stage.softmax_header"))
        return write_softmax_column(sheet, col, in_tensor_col_first_row, z, in_col, in_sheet)
    if name == "log_softmax":
        return write_log_softmax_column(sheet, col, in_tensor_col_first_row, z, in_col, in_sheet)
    formula, fn = act.ELEMENTWISE[name]
    out = fn(z)
    sheet.label(FIRST_ROW - 1, col, text("stage.out_block", fn=name))
    for i in range(len(z)):
        cell = rng(in_sheet, in_tensor_col_first_row + i, in_col, in_tensor_col_first_row + i, in_col)
        sheet.formula(FIRST_ROW + i, col, formula(cell), out[i])
    return out, col


def block_refs(sheet_name, row0, col0, h, w):
    return [[rng(sheet_name, row0 + i, col0 + j, row0 + i, col0 + j) for j in range(w)] for i in range(h)]
