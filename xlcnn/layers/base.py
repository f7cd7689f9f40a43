"""What every layer writer shares: the registry by Keras class name, option checking, and the
small writers that several layer families use (an activation block, a softmax column).

A writer is constructed from the Keras layer, `check`s every option of the layer's config before
anything is written (refusing by name what it cannot reproduce exactly), then `write`s its stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import Refusal
from ..layout import FIRST_COL, FIRST_ROW, SheetNames, Tensor, rng, style, text
from . import activations as act

HANDLERS: dict[str, type] = {}

# Config keys that never change what a trained layer computes at inference.
TRAINING_ONLY = {
    "name", "trainable", "kernel_initializer", "bias_initializer", "kernel_regularizer",
    "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint", "seed",
    "depthwise_initializer", "pointwise_initializer", "beta_initializer", "gamma_initializer",
    "moving_mean_initializer", "moving_variance_initializer", "batch_input_shape", "input_shape",
    "input_dim",
}


def handles(*class_names):
    """Register a writer for the Keras layer classes it reproduces."""
    def register(cls):
        cls.handles = class_names
        for name in class_names:
            HANDLERS[name] = cls
        return cls
    return register


def dtype_name(value):
    if isinstance(value, dict):
        value = value.get("config", {}).get("name", value.get("class_name"))
    return str(value)


def pair(value):
    """Keras's int-or-tuple option as a tuple: 3 -> (3, 3); (3,) and (3, 1) stay as they are."""
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


@dataclass
class Context:
    """What a writer needs while writing: the workbook, the sheet-name registry, its step label."""
    book: object
    names: SheetNames
    step: str  # e.g. "03"
    # the data_format of the nearest later layer that has one: where a reshaped 3-D tensor must
    # keep its channels so the next layer finds one sheet per channel on the right axis
    next_data_format: str | None = None
    # the blank border ((top, bottom), (left, right)) the stage's output maps keep around them: the
    # padding of the 'same' and 'causal' layers that read them (build.required_borders)
    border: tuple = ((0, 0), (0, 0))

    def sheet_name(self, layer_name, suffix=""):
        return self.names.make(f"{self.step} ", layer_name, suffix)


class MapSheets:
    """Where a stage's channel maps go: the one placement every map-writing layer uses.

    An image map (a rank-3 tensor): one sheet per channel, '<step> <layer> c<k>', its (h x w) map
    at (FIRST_ROW, FIRST_COL); block b (the fused activation, partial sums) b maps to the right.
    A signal (a rank-2 tensor, the maps of 1-D layers): one sheet for the whole stage, time running
    down the rows and channel c in column FIRST_COL + c, so the stage reads as a multi-channel
    waveform; block b is a group of `channels` columns b groups to the right.

    title(c) and explain(c) give a sheet's texts; c is None for the one sheet of a signal stage.
    """

    def __init__(self, ctx, layer_name, channels, h, w, rank, title, explain=None, suffix="", bordered=True):
        self.ctx, self.layer_name, self.channels = ctx, layer_name, channels
        self.h, self.w, self.rank, self.suffix = h, w, rank, suffix
        self.title, self.explain = title, explain or (lambda _c: "")
        self.one_sheet = rank == 2
        # the padding its readers add, kept blank around each map (a signal: rows before and after)
        (top, bottom), (left, right) = ctx.border if bordered else ((0, 0), (0, 0))
        self.border = ((top, bottom), (0, 0) if self.one_sheet else (left, right))
        self._sheets = {}

    def sheet(self, c):
        key = None if self.one_sheet else c
        if key not in self._sheets:
            book = self.ctx.book
            if self.one_sheet:
                name = self.ctx.sheet_name(self.layer_name, self.suffix)
                sheet = book.add_sheet(name, self.title(None), self.explain(None))
            else:
                name = self.ctx.sheet_name(self.layer_name, f"{self.suffix} c{c}")
                sheet = book.add_sheet(name, self.title(c), self.explain(c), map_width=self.w)
            self._sheets[key] = sheet
            if self.one_sheet:
                for i in range(self.h):
                    sheet.ws.write_string(FIRST_ROW + i, 0, str(i), book.fmt_axis)
                sheet.ws.write_string(FIRST_ROW - 1, 0, "t", book.fmt_axis)
        return self._sheets[key]

    def origin(self, c, block=0):
        """(row, col) of the top-left cell of channel c's block `block`."""
        (top, _), (left, right) = self.border
        if self.one_sheet:
            return FIRST_ROW + top, FIRST_COL + block * (self.channels + 1) + c
        return FIRST_ROW + top, FIRST_COL + left + block * (left + self.w + right + 1)

    def tensor(self, layer, chw, rank, channel_axis, places):
        """The stage's output Tensor, which knows the blank border its maps keep."""
        return Tensor.from_chw(layer, chw, rank, channel_axis, places, self.border)

    def place(self, c, block=0):
        """(sheet name, row, col) of channel c's block, as a Tensor's places hold them."""
        return (self.sheet(c).name, *self.origin(c, block))

    def start(self, c, block=0, label=None):
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

    def color_all(self, block, chw):
        """Colour block `block` of every channel (chw: the values as (channels, h, w)): each image
        map on its own, a signal stage's group of columns as one."""
        for c in range(self.channels):
            sheet = self.sheet(c)
            r0, c0 = self.origin(c, block)
            if not self.one_sheet:
                sheet.color_scale(r0, c0, r0 + self.h - 1, c0 + self.w - 1, values=chw[c])
        if self.one_sheet:
            r0, c0 = self.origin(0, block)
            self.sheet(0).color_scale(r0, c0, r0 + self.h - 1, c0 + self.channels - 1, values=chw)


HEADER_ROWS = 5   # title, explanation, block labels, column indices, and a spare


@dataclass
class Footprint:
    """What one stage adds to the workbook, for the estimate made before anything is written."""
    sheets: int = 0
    formulas: int = 0
    constants: int = 0
    rows: int = 0               # the most rows on one of its sheets
    cols: int = 0               # the most columns on one of its sheets
    longest_formula: int = 0
    where: str = ""             # the sheet that needs those rows or columns

    def grow(self, rows, cols, where):
        if rows > self.rows or cols > self.cols:
            self.where = where
        self.rows, self.cols = max(self.rows, rows), max(self.cols, cols)


class LayerWriter:
    handles: tuple = ()
    kind = ""
    # option name -> function(value, config) returning None when supported, else the reason
    options: dict = {}
    passthrough = False
    multi_input = False  # merge layers receive a list of input tensors
    reuses_input_cells = False  # its output is its input's own cells (pass-through, channel concatenation)
    pads_input = False          # a window layer whose 'same'/'causal' padding its input shows as a blank border

    def __init__(self, spec):
        self.spec = spec              # a LayerSpec (xlcnn/spec.py): plain data, never a Keras object
        self.name = spec.name
        self.config = dict(spec.config)
        self.kind = spec.kind

    # -- checks ------------------------------------------------------------------------------
    def refuse(self, message):
        raise Refusal(self.spec, message)

    def check(self):
        """Refuse, by name, every option this writer does not reproduce exactly."""
        for key, value in self.config.items():
            if key in TRAINING_ONLY:
                continue
            if key == "dtype":
                if "float32" != dtype_name(value):
                    self.refuse(f"dtype policy {dtype_name(value)!r} is not supported; "
                                "xlcnn reproduces float32 layers only")
                continue
            checker = self.options.get(key)
            if checker is None:
                self.refuse(f"option {key}={value!r} is not supported by xlcnn "
                            f"(it would change the math, and xlcnn never ignores an option)")
            reason = checker(value, self.config)
            if reason:
                self.refuse(reason)

    # -- planning: before anything is written ------------------------------------------------
    def plan(self, input_shapes):
        """Refuse what these input shapes make impossible, and say what the stage will add to the
        workbook (limits.estimate sums these; no forward pass is needed)."""
        self.check_inputs(list(input_shapes))
        return self.footprint(list(input_shapes), tuple(self.spec.output_shape))

    def check_inputs(self, input_shapes):
        """Shape-dependent refusals (a writer overrides it); the Tensor is checked again in write()."""

    def padding_border(self, input_shapes):
        """The padding ((top, bottom), (left, right)) this layer adds around each map of its input,
        in the (h, w) frame of the maps; its input keeps that many blank cells around its maps."""
        if not self.pads_input or not input_shapes:
            return ((0, 0), (0, 0))
        shape = tuple(input_shapes[0])
        axis = channel_axis(self.config.get("data_format"), len(shape))
        spatial = [n for i, n in enumerate(shape) if i != axis]
        H, W = (spatial[0], 1) if len(spatial) == 1 else spatial
        return self.window.pads(H, W)

    def expect_rank(self, input_shapes, rank):
        """Refuse an input of another rank than `rank` (3 for image maps, 2 for signals)."""
        shape = tuple(input_shapes[0])
        if len(shape) != rank:
            fmt = self.config.get("data_format") or "channels_last"
            self.refuse(f"expects a {rank}-D {fmt} input, got shape {shape}")

    def footprint(self, input_shapes, out):
        """A deliberately generous estimate from the output shape: one sheet per channel of an image
        map, one sheet for a signal or a vector, a second block for a fused activation, a weight
        sheet of the parameters' size."""
        fp = Footprint(constants=self.params())
        if self.passthrough or not out:
            return fp
        size = int(np.prod(out))
        fused = str(self.config.get("activation", "linear")) not in ("linear", "None")
        fp.formulas = size * (2 if fused else 1)
        if len(out) == 3:
            axis = channel_axis(self.config.get("data_format"), 3)
            h, w = [n for i, n in enumerate(out) if i != axis]
            fp.sheets += out[axis]
            fp.grow(h + HEADER_ROWS, 2 * (w + 1) + 2, self.name)
        elif len(out) == 2:
            fp.sheets += 1
            fp.grow(max(out) + HEADER_ROWS, 2 * (min(out) + 1) + 2, self.name)
        else:
            fp.sheets += 1
            fp.grow(size + HEADER_ROWS, 4, self.name)
        if input_shapes and len(out) == 1 and len(input_shapes[0]) == 1:
            fp.longest_formula = 90
        if self.params():
            fp.sheets += 1
            biggest = max(self.spec.weights, key=np.size) if self.spec.weights else np.zeros(1)
            rows = biggest.shape[0] if biggest.ndim else 1
            cols = int(np.size(biggest) // max(rows, 1))
            fp.grow(rows + HEADER_ROWS + 1, cols + 1, f"{self.name} weights")
        return fp

    def describe(self):
        """One line for the overview's 'what it does' column."""
        return ""

    def params(self):
        return self.spec.params

    def weights(self):
        """The layer's weights as float64 arrays, in Keras's order (get_weights)."""
        return list(self.spec.weights)

    def write(self, ctx: Context, x: Tensor) -> Tensor:
        raise NotImplementedError


def ok(*_):
    return None


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


def channel_axis(data_format, rank):
    """Which axis of a Keras tensor (no batch axis) of this rank holds the channels."""
    return 0 if data_format == "channels_first" else rank - 1


def positive_ints(value, _config):
    """An int or a tuple of ints, each at least 1 (kernel_size, strides, dilation_rate, size)."""
    try:
        if any(v < 1 for v in pair(value)):
            return f"{value!r} must be positive"
    except (TypeError, ValueError):
        return f"{value!r} is not an int or a tuple of ints"
    return None


def positive_ints_or_none(value, config):
    return None if value is None else positive_ints(value, config)


def must_be_none(option):
    """An option that changes the math unless it is off (lora_rank, quantization_config)."""
    def checker(value, _config):
        return None if value in (None, 0) else f"option {option}={value!r} is not supported"
    return checker


def one_of(*allowed):
    def checker(value, _config):
        if value in allowed:
            return None
        return f"{value!r} is not supported (supported: {', '.join(map(repr, allowed))})"
    return checker


def activation_option(value, _config):
    return act.check(value)


# -- shared writers ------------------------------------------------------------------------------

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
        sheet.label(FIRST_ROW - 2, e_col, "exp(x - max)", book.fmt_header)
        sheet.label(FIRST_ROW - 2, out_col, "softmax", book.fmt_header)
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
    sheet.label(FIRST_ROW - 1, col, "exp(z - max z)", sheet.book.fmt_header)
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
        sheet.label(FIRST_ROW - 1, col, "exp(z - max z)")
        sheet.label(FIRST_ROW - 1, col + 1, "softmax")
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


def bias_along_width(spec, data_format, out_last, n_bias):
    """True when Keras adds this channels_first layer's bias along its last axis, not the channels.

    Keras 3's TensorFlow backend (keras.src.backend.tensorflow.numpy.add) turns
    `x + bias.reshape(1, C, 1, ...)` into tf.nn.bias_add and picks data_format NHWC whenever the
    tensor's last axis has the bias's length. For a channels_first map whose width (or, for a 1-D
    layer, whose length) equals its channel count, bias[j] is therefore added at position j of
    that axis in every channel. That is what the trained model computes in Keras, so the workbook
    does the same, and says so on the sheet. model.py probes the running Keras for it (the spec's
    fact "bias_quirk"), so a Keras that fixes this, or a layer loaded with tf_keras (which adds per
    channel), is not shifted.
    """
    if data_format != "channels_first" or n_bias < 2 or out_last != n_bias:
        return False
    return bool(spec.fact("bias_quirk", False))


def same_padding(n, k, s, d=1):
    """Keras 'same' padding: (before, after); the odd extra cell goes after (bottom/right)."""
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def padding_text(padding, family, pads, one_d=False):
    """The header text that makes Keras's (asymmetric) padding visible; family is conv or pool.
    A 1-D layer's padding is along time (the h axis of its maps)."""
    (top, bottom), (left, right) = pads
    suffix = "_1d" if one_d else ""
    if padding == "valid":
        return text(f"padding.valid{suffix}")
    if padding == "causal":
        return text("padding.causal_conv_1d", top=top)
    if top == bottom == left == right == 0:
        return text(f"padding.none_needed{suffix}")
    return text(f"padding.same_{family}{suffix}", top=top, bottom=bottom, left=left, right=right)


@dataclass
class Window:
    """A window layer's geometry (convolution or pooling) in the (h, w) frame of its maps: size,
    stride and dilation per axis, and Keras's padding mode. A 1-D layer's time axis is h, and its
    w axis is the trivial window (1, stride 1, 'valid'), so one code path serves both ranks."""
    size: tuple
    strides: tuple
    dilation: tuple
    padding: str
    one_d: bool = False

    @classmethod
    def from_config(cls, config, size_key, one_d, default_strides_to_size=False):
        size = pair(config[size_key])
        strides = config.get("strides")
        strides = size if strides is None and default_strides_to_size else pair(strides or 1)
        dilation = pair(config.get("dilation_rate", 1) or 1)
        if one_d:
            size, strides, dilation = (size[0], 1), (strides[0], 1), (dilation[0], 1)
        return cls(size, strides, dilation, config["padding"], one_d)

    def apply(self, H, W, clip=True):
        """((oh, taps_h, pads_h), (ow, taps_w, pads_w)) for an H x W input map; clip=False gives
        the full windows, reaching into the padding (see window_geometry)."""
        (kh, kw), (sh, sw), (dh, dw) = self.size, self.strides, self.dilation
        return (window_geometry(H, kh, sh, dh, self.padding, clip),
                window_geometry(W, kw, sw, dw, "valid" if self.one_d else self.padding, clip))

    def pads(self, H, W):
        """The padding ((top, bottom), (left, right)) Keras adds around an H x W input."""
        (_, _, pads_h), (_, _, pads_w) = self.apply(H, W)
        return pads_h, pads_w

    def taps_for(self, x):
        """The windows over Tensor x: full ones when x keeps a blank border as wide as the padding
        (the padding is then visible on its sheet), clipped at the edges otherwise."""
        H, W = x.hw
        pads = self.pads(H, W)
        return self.apply(H, W, clip=not x.has_border(pads))

    def text(self, what, show_dilation=True):
        """'kernel 3×3 · stride 2×2 · dilation 1×1', or 'kernel 5 · stride 1 · dilation 2' in 1-D."""
        (kh, kw), (sh, sw), (dh, dw) = self.size, self.strides, self.dilation
        if self.one_d:
            dilation = f" · dilation {dh}" if show_dilation else ""
            return text("stage.geometry_1d", what=what, kh=kh, sh=sh, dilation=dilation)
        dilation = f" · dilation {dh}×{dw}" if show_dilation else ""
        return text("stage.geometry_2d", what=what, kh=kh, kw=kw, sh=sh, sw=sw, dilation=dilation)

    def padding_text(self, family, pads):
        return padding_text(self.padding, family, pads, self.one_d)


def which_text(one_d, channel, channels, output=True):
    """'output channel 3 of 8' on a per-channel sheet; for a 1-D stage (one sheet) its layout."""
    if one_d:
        return text("stage.which_signal", channels=channels)
    return text("stage.which_channel" if output else "stage.which_channel_in", channel=channel, channels=channels)


def window_geometry(n, k, s, d, padding, clip=True):
    """Output length, for each output index the input taps (index, kernel tap), and the pads
    (before, after). With clip the taps lie inside 0..n-1; without, the full window is given, its
    taps in the padding outside 0..n-1 (where a map keeps a blank border, see MapSheets)."""
    if padding == "same":
        out = -(-n // s)
        before = same_padding(n, k, s, d)[0]
        pads = same_padding(n, k, s, d)
    elif padding == "causal":    # Keras pads (k - 1) * d zeros before the signal, none after
        before = (k - 1) * d
        out = (n - 1) // s + 1
        pads = (before, 0)
    else:
        out = (n - (k - 1) * d - 1) // s + 1
        before = 0
        pads = (0, 0)
    taps = []
    for o in range(max(out, 0)):
        start = o * s - before
        taps.append([(start + a * d, a) for a in range(k) if not clip or 0 <= start + a * d < n])
    return out, taps, pads

