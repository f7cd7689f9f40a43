"""What every layer writer shares: the registry by Keras class name, option checking, and the
small writers that several layer families use (an activation block, a softmax column).

A writer is constructed from the Keras layer, `check`s every option of the layer's config before
anything is written (refusing by name what it cannot reproduce exactly), then `write`s its stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import Refusal
from ..layout import FIRST_COL, FIRST_ROW, SheetNames, Tensor, rng, text
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

    def sheet_name(self, layer_name, suffix=""):
        return self.names.make(f"{self.step} ", layer_name, suffix)


class LayerWriter:
    handles: tuple = ()
    kind = ""
    # option name -> function(value, config) returning None when supported, else the reason
    options: dict = {}
    passthrough = False
    multi_input = False  # merge layers receive a list of input tensors

    def __init__(self, layer):
        self.layer = layer
        self.name = layer.name
        self.config = layer.get_config()
        self.kind = type(layer).__name__

    # -- checks ------------------------------------------------------------------------------
    def refuse(self, message):
        raise Refusal(self.layer, message)

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

    def describe(self):
        """One line for the overview's 'what it does' column."""
        return ""

    def params(self):
        return int(self.layer.count_params()) if self.layer.weights else 0

    def weights(self):
        return [np.asarray(w, dtype=np.float64) for w in self.layer.get_weights()]

    def write(self, ctx: Context, x: Tensor) -> Tensor:
        raise NotImplementedError


def ok(*_):
    return None


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
    one sheet per channel for a 3-D tensor, one column for a 1-D one.

    values: the output in Keras's layout; formula_of(index) gives the formula of the element at a
    Keras index; title(channel) the sheet's title (channel is None for a 1-D tensor)."""
    book = ctx.book
    if like.rank == 1:
        name = ctx.sheet_name(writer.name)
        sheet = book.add_sheet(name, title(None), explain)
        sheet.label(FIRST_ROW - 1, FIRST_COL, writer.name, book.fmt_header)
        sheet.axis_labels(FIRST_ROW, FIRST_COL, values.shape[0], 0)
        for i in range(values.shape[0]):
            sheet.formula(FIRST_ROW + i, FIRST_COL, formula_of((i,)), values[i])
        return Tensor(writer.name, values, None, [(name, FIRST_ROW, FIRST_COL)])
    if like.rank != 3:
        writer.refuse(f"inputs of rank {like.rank} are not supported")
    h, w = like.hw
    out = np.moveaxis(values, like.channel_axis, 0)
    places = []
    for c in range(like.channels):
        name = ctx.sheet_name(writer.name, f" c{c}")
        sheet = book.add_sheet(name, title(c), explain, map_width=w)
        sheet.axis_labels(FIRST_ROW, FIRST_COL, h, w)
        for i in range(h):
            for j in range(w):
                index = [i, j]
                index.insert(like.channel_axis, c)
                sheet.formula(FIRST_ROW + i, FIRST_COL + j, formula_of(tuple(index)), out[c, i, j])
        sheet.color_scale(FIRST_ROW, FIRST_COL, FIRST_ROW + h - 1, FIRST_COL + w - 1, values=out[c])
        places.append((name, FIRST_ROW, FIRST_COL))
    return Tensor(writer.name, values, like.channel_axis, places)


def write_elementwise_block(sheet, row0, col0, in_refs, z, name):
    """Write fn(cell) for a 2-D block whose input references are in_refs (same shape as z)."""
    formula, fn = act.ELEMENTWISE[name]
    out = fn(z)
    h, w = z.shape
    for i in range(h):
        for j in range(w):
            sheet.formula(row0 + i, col0 + j, formula(in_refs[i][j]), out[i, j])
    return out


def write_activation_blocks(ctx, fn, places, z, block_label):
    """A fused activation: beside each z map (places[o] holds z[o]), the block fn(z), labelled.
    Returns the output places and values; with 'linear' the z maps are the output."""
    if fn == "linear":
        return places, z
    out_places = []
    for o, (name, r0, c0) in enumerate(places):
        sheet = ctx.book.sheets[name]
        oh, ow = z[o].shape
        a0 = c0 + ow + 1
        sheet.label(r0 - 2, c0, block_label, ctx.book.fmt_header)
        sheet.label(r0 - 2, a0, text("stage.out_block", fn=fn), ctx.book.fmt_header)
        sheet.axis_labels(r0, a0, oh, ow)
        a = write_elementwise_block(sheet, r0, a0, block_refs(name, r0, c0, oh, ow), z[o], fn)
        sheet.color_scale(r0, a0, r0 + oh - 1, a0 + ow - 1, values=a)
        out_places.append((name, r0, a0))
    return out_places, act.ELEMENTWISE[fn][1](z)


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


def bias_along_width(layer, data_format, out_width, n_bias):
    """True when Keras adds this channels_first layer's bias along the width, not the channels.

    Keras 3's TensorFlow backend (keras.src.backend.tensorflow.numpy.add) turns
    `x + bias.reshape(1, C, 1, 1)` into tf.nn.bias_add and picks data_format NHWC whenever the
    tensor's last axis has the bias's length. For a channels_first map whose width equals its
    channel count, bias[j] is therefore added to column j of every channel. That is what the
    trained model computes in Keras, so the workbook does the same, and says so on the sheet.
    A probe of the running Keras confirms it, so a Keras that fixes this, or a layer loaded with
    tf_keras (which adds per channel), is not shifted.
    """
    if data_format != "channels_first" or n_bias < 2 or out_width != n_bias:
        return False
    return _keras_adds_bias_along_width(type(layer).__module__.split(".")[0], n_bias)


@lru_cache(maxsize=None)
def _keras_adds_bias_along_width(package, channels):
    if package != "keras":
        return False
    import keras
    bias = np.arange(channels, dtype=np.float32).reshape(1, channels, 1, 1)
    got = np.asarray(keras.ops.add(np.zeros((1, channels, 1, channels), np.float32), bias))[0, :, 0, :]
    return not np.array_equal(got, np.repeat(np.arange(channels, dtype=np.float32)[:, None], channels, axis=1))


def same_padding(n, k, s, d=1):
    """Keras 'same' padding: (before, after); the odd extra cell goes after (bottom/right)."""
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def padding_text(padding, family, pads):
    """The header text that makes Keras's (asymmetric) padding visible; family is conv or pool."""
    (top, bottom), (left, right) = pads
    if padding == "valid":
        return text("padding.valid")
    if top == bottom == left == right == 0:
        return text("padding.none_needed")
    return text(f"padding.same_{family}", top=top, bottom=bottom, left=left, right=right)


def window_geometry(n, k, s, d, padding):
    """Output length and, for each output index, the input taps (index, kernel tap) inside 0..n-1."""
    if padding == "same":
        out = -(-n // s)
        before = same_padding(n, k, s, d)[0]
        pads = same_padding(n, k, s, d)
    else:
        out = (n - (k - 1) * d - 1) // s + 1
        before = 0
        pads = (0, 0)
    taps = []
    for o in range(max(out, 0)):
        start = o * s - before
        taps.append([(start + a * d, a) for a in range(k) if 0 <= start + a * d < n])
    return out, taps, pads

