"""What the elementwise layers with parameters share (BatchNormalization, Normalization, Rescaling,
LayerNormalization, ReLU, PReLU...).

Every output cell reads its one input cell (a relative reference) and its parameters from the
layer's parameter sheet (absolute references), so the formula shows the math and a reader who edits a
parameter sees its effect. A parameter Keras broadcasts (one per channel, one per position, or one
for every cell) is written once, in the shape Keras stores it, and each cell reads the entry Keras's
broadcasting picks for it.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, rng, text
from .base import write_cellwise_stage


def config_number(value):
    """A config number (tf_keras stores some as 0-d arrays) as a float, or None."""
    if value is None:
        return None
    return float(np.asarray(value, dtype=np.float64))


def as_float32(value):
    """A layer option as Keras uses it: cast to the float32 of the tensor it meets. It matters at a
    threshold: 0.4 is 0.4000000059604645 in float32, so an input of float32 0.4 is not above it."""
    return None if value is None else float(np.float32(value))


def real_number(value, _config):
    try:
        v = config_number(value)
    except (TypeError, ValueError):
        return f"{value!r} is not a number"
    if v is not None and not np.isfinite(v):
        return f"{value!r} is not a finite number"
    return None


def expand_param(param, shape):
    """param as Keras broadcasts it against one sample of `shape` (no batch axis): the same rank,
    every axis 1 or full size. None when it does not broadcast that way (e.g. it spans the batch)."""
    p = np.asarray(param, dtype=np.float64)
    while p.ndim > len(shape) and p.shape[0] == 1:  # a leading batch axis of 1
        p = p[0]
    if p.ndim > len(shape):
        return None
    p = p.reshape((1,) * (len(shape) - p.ndim) + p.shape)
    if any(a not in (1, b) for a, b in zip(p.shape, shape)):
        return None
    return p


def along_channels(vector, x):
    """A per-channel vector laid along x's channel axis (a 1-D tensor: one entry per value)."""
    v = np.asarray(vector, dtype=np.float64)
    if x.rank == 1:
        return v
    shape = [1] * x.rank
    shape[x.channel_axis] = v.size
    return v.reshape(shape)


class ParamSheet:
    """A layer's parameters on their own sheet, each read by formulas with absolute references.

    arrays: [(label, array)] with every array in x's Keras layout (expand_param), so that the entry
    for output index idx is found the way Keras broadcasts: index 0 along an axis of size 1.
    Per-channel parameters become a table (one row per channel, one column per parameter);
    parameters that vary along height or width become one block per channel, like the maps.
    """

    def __init__(self, ctx, layer_name, kind, x, arrays):
        self.name = ctx.sheet_name(layer_name, " params")
        self.x = x
        self.arrays = [a for _, a in arrays]
        book = ctx.book
        if x.rank == 1:
            n = max(a.shape[0] for a in self.arrays)
            layout = text("elementwise.params_by_index") if n > 1 else text("elementwise.params_scalars")
            self.mode = "table"
        else:
            chw = [Tensor("", a, x.channel_axis, []).chw() for a in self.arrays]
            self.table = all(a.shape[1] == 1 and a.shape[2] == 1 for a in chw)
            n = max(a.shape[0] for a in chw)
            if self.table:
                self.mode = "table"
                layout = text("elementwise.params_by_channel") if n > 1 else text("elementwise.params_scalars")
            else:
                self.mode = "blocks"
                layout = text("elementwise.params_blocks")
        sheet = book.add_sheet(self.name, text("elementwise.params_title", name=layer_name, kind=kind, layout=layout))
        self.cols = []
        if self.mode == "table":
            for k, (label, a) in enumerate(arrays):
                col = FIRST_COL + k
                vals = a.reshape(-1)
                if vals.size == 1 and n > 1:
                    label = f"{label} {text('elementwise.all_channels')}"
                sheet.label(FIRST_ROW - 1, col, label, book.fmt_header)
                # tiny values such as epsilon (1e-5) would read 0.0000 in the weight format
                fmt = book.fmt_label if np.all(np.abs(vals[vals != 0]) < 1e-3) and np.any(vals) else book.fmt_weight
                sheet.numbers(FIRST_ROW, col, vals[:, None], fmt)
                self.cols.append(col)
            for r in range(n):
                if x.rank == 1:
                    sheet.ws.write_number(FIRST_ROW + r, 0, r, book.fmt_axis)
                elif n == 1 and x.channels > 1:
                    sheet.label(FIRST_ROW, 0, text("elementwise.all_channels"), book.fmt_header)
                else:
                    sheet.label(FIRST_ROW + r, 0, text("elementwise.param_row", k=r), book.fmt_header)
            sheet.ws.set_column(FIRST_COL, FIRST_COL + len(arrays) - 1, 15)
            return
        # blocks: parameter k occupies columns cols[k].., channel block c starts at row FIRST_ROW + c*(hmax+1)
        hmax = max(a.shape[1] for a in chw)
        self.stride = hmax + 1
        col = FIRST_COL
        for (label, _), a in zip(arrays, chw):
            sheet.label(FIRST_ROW - 2, col, label, book.fmt_header)
            for c in range(a.shape[0]):
                sheet.numbers(FIRST_ROW + c * self.stride, col, a[c], book.fmt_weight)
            self.cols.append(col)
            col += a.shape[2] + 1
        for c in range(n):
            sheet.label(FIRST_ROW + c * self.stride, 0, text("elementwise.param_row", k=c), book.fmt_header)

    def ref(self, k, idx):
        """Absolute reference of parameter k's entry for the output element at Keras index idx."""
        a = self.arrays[k]
        p = tuple(i if s > 1 else 0 for i, s in zip(idx, a.shape))
        if self.x.rank == 1:
            row, col = FIRST_ROW + p[0], self.cols[k]
        elif self.mode == "table":
            row, col = FIRST_ROW + p[self.x.channel_axis], self.cols[k]
        else:
            c = p[self.x.channel_axis]
            spatial = [v for n, v in enumerate(p) if n != self.x.channel_axis]
            i, j = (spatial[0], spatial[1]) if len(spatial) == 2 else (spatial[0], 0)
            row, col = FIRST_ROW + c * self.stride + i, self.cols[k] + j
        return rng(self.name, row, col, row, col, absolute=True)


def write_elementwise_stage(ctx, writer, x, values, formula_of, what, explain):
    """The output of an elementwise layer, cell = formula_of(input cell reference, Keras index)."""
    def title(channel):
        if channel is None:
            return text("elementwise.column_title", step=ctx.step, name=writer.name, kind=writer.kind, what=what)
        return text("elementwise.channel_title", step=ctx.step, name=writer.name, kind=writer.kind,
                    channel=channel, channels=x.channels, what=what)
    return write_cellwise_stage(ctx, writer, x, values, lambda index: formula_of(x.cell_at(index), index),
                                title, explain)


def single_axis(value):
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else None
    return value
